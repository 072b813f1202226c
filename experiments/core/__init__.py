"""The runner and its infrastructure: configs, the training loop, the optimizer a config asks
for, checkpoints, result files and run logs, tracking, preemption, device options,
determinism, errors, the registry of experiments and Slurm job arrays. It imports
nothing else of experiments/ (tests/test_layers.py).
"""
