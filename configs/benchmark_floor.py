"""A floor under the NB201 search steps' time: every unit of the search network (C=16, N=5,
32x32x3, batch 64) timed alone, forward and backward, and summed as DARTS first order, GDAS
and random single-path steps use them (``nas_jax/floor_benchmark.py`` says what is left
out).

    python experiments/benchmark.py --config=configs/benchmark_floor.py [--workdir=DIR]

The same units in PyTorch, on the same machine: ``python experiments/reference_pytorch.py
--what=floor``.
"""

from nas_jax.floor_benchmark import floor_benchmark_config


def get_config(arg=None):
    del arg
    return floor_benchmark_config()
