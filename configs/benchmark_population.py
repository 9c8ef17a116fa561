"""Population training, every execution strategy side by side (engine issue's workloads).

small: NB201 C=8, N=1, 16x16x3, batch 64, 16 random cells x 50 steps.
large: NB201 C=16, N=5, 32x32x3, batch 64, 16 random cells x 10 steps.

    python experiments/benchmark.py --config=configs/benchmark_population.py

The vmapped mixture (``vmap``) is listed on accelerators only: on XLA:CPU it computes every
op of every edge as grouped convolutions and did not finish the small workload in 10 minutes
on 2 idle cores. The large workload lists ``switch`` and ``composed`` only (``loop`` and
``compiled`` take minutes each there), so the whole run fits in ~10 minutes on 2 cores.
Force a list with e.g. ``--config.workloads.large.executions="('loop','composed')"``.

The goals are ratios to PyTorch; to measure its figures on this machine, run the PyTorch
reference beside it: ``python experiments/reference_pytorch.py --what=population`` (needs torch;
docs/benchmarks.md holds both).
"""

from nas_jax.benchmark import benchmark_config


def get_config(arg=None):
    del arg
    return benchmark_config()
