"""Cost of one MetaNAS meta-step (the DARTS supernet of the offline glyph config before its
Reptile-protocol default: 3 cells x 4 channels on 28x28x1, 5-way 1-shot, meta-batch 2, 3
inner steps) per way of running the supernet's edges (unrolled or as scans) and its
depthwise convolutions (slices or XLA's grouped convolution): trace, compile, first call and
seconds per meta-step, side by side.

    python experiments/benchmark.py --config=configs/benchmark_metanas.py [--workdir=DIR]

The two unrolled variants compile for minutes each on 2 CPU cores (see docs/results.md);
``--config.variants="(('scan', 'slices'),)"`` times only the runner's default.
"""

from nas_jax.meta.metanas_benchmark import metanas_benchmark_config


def get_config(arg=None):
    del arg
    return metanas_benchmark_config()
