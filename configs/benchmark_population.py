"""Population training, every execution strategy side by side (engine issue's workloads).

small: NB201 C=8, N=1, 16x16x3, batch 64, 16 random cells x 50 steps.
large: NB201 C=16, N=5, 32x32x3, batch 64, 16 random cells x 10 steps.

    python experiments/benchmark.py --config=configs/benchmark_population.py

Strategies that cannot finish the large workload in minutes on a 2-core CPU are left out
of its list (the vmapped mixture computes every op of every edge as grouped convolutions
there); on an accelerator add it back, e.g.
``--config.workloads.large.executions=vmap,loop,switch,compiled``.
"""

from nas_jax.benchmark import benchmark_config


def get_config(arg=None):
    del arg
    return benchmark_config()
