"""Seconds per search step on the NAS-Bench-201 supernet (C=16, N=5, 32x32x3, batch 64):
DARTS first order, DARTS exact second order, GDAS (mixture and switch supernets) and one
random-single-path (SPOS) weight step (switch supernet, and composed from per-unit programs),
each from a cold start (first call = trace + compile + run) and then averaged over a few
steps.

    python experiments/benchmark.py --config=configs/benchmark_darts.py [--workdir=DIR]

Reference (gradient-search issue): AutoDL's PyTorch implementation on a 2-core CPU with 2
threads takes ~2.3 s (DARTS first order), ~0.52 s (GDAS) and ~0.22 s (random single path).

Those reference figures came from a faster CPU; to compare on this machine, run the PyTorch
reference beside it: ``python experiments/reference_pytorch.py --what=search`` (needs torch;
docs/benchmarks.md holds both).
"""

from nas_jax.search_benchmark import search_benchmark_config


def get_config(arg=None):
    del arg
    return search_benchmark_config()
