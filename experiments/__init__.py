"""Experiment runners for the figures of "Multirate Training of Neural Networks".

``config`` turns a TOML file of defaults plus command-line overrides into a typed
``RunConfig``; ``runner`` trains a ``Task`` under that config with checkpoint/resume;
``runlog`` writes every evaluation to a tidy CSV (and to W&B when available).
"""

from experiments.determinism import pin_cpu_kernels

# Before torch is imported by any experiment module: the same CPU kernels on every x86-64 machine.
pin_cpu_kernels()
