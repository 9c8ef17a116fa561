"""Population training, every execution strategy side by side (engine issue's workloads).

small: NB201 C=8, N=1, 16x16x3, batch 64, 16 random cells x 50 steps.
large: NB201 C=16, N=5, 32x32x3, batch 64, 16 random cells x 10 steps.

    python experiments/benchmark.py --config=configs/benchmark_population.py

The mixture executions, which compute every op of every edge, are listed on accelerators
only: the vmapped mixture (``vmap``; on XLA:CPU as grouped convolutions, it did not finish the
small workload in 10 minutes on 2 idle cores) and the mixture host loop (``loop``: about a
minute of the small workload on 2 cores, 7 of the large one). The large workload lists
``switch`` and ``composed`` only (``compiled`` takes minutes there), so the whole run takes
~8 minutes on 2 cores. Force a list with e.g.
``--config.workloads.small.executions="('loop','switch','composed','compiled')"``.

The goals are ratios to PyTorch; to measure its figures on this machine, run the PyTorch
reference beside it: ``python experiments/reference_pytorch.py --what=population`` (needs torch;
docs/benchmarks.md holds both).
"""

from nas_jax.benchmark import benchmark_config


def get_config(arg=None):
    del arg
    return benchmark_config()
