"""Experiments for the figures of "Multirate Training of Neural Networks".

Here are the entry points, one per figure's runs (``python -m experiments.<name>``), and the drivers
that run them (``ablations``, ``sweep``, ``protocol``). Below them: ``core/`` (the runner and its
infrastructure), ``datasets/`` (data sets, generated data, pretraining) and ``reporting/`` (the
report, the README tables, the committed reference, the claims); the cost measurements are in the
top-level ``benchmarks/``. tests/test_layers.py checks the rules between the layers.
"""

from experiments.core.determinism import pin_cpu_kernels

# Before torch is imported by any experiment module: the same CPU kernels on every x86-64 machine.
pin_cpu_kernels()
