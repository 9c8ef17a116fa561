"""DARTS (first order) on NAS-Bench-201 cells, offline: scikit-learn's 8x8 digits, C=4, N=1.

Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019, in the
NAS-Bench-201 space (Dong & Yang, ICLR 2020). The training digits are split in halves
(weights / architecture); two epochs, the collapse diagnostics after each. One to three
minutes on 2 CPU cores (68 s of CPU measured), most of it compiling.

    python experiments/search.py --config=configs/darts_nb201_digits.py --workdir=/tmp/darts_digits
"""

from nas_jax.gradient_search import gradient_search_config


def get_config(arg=None):
    del arg
    c = gradient_search_config()
    c.seed = 0
    c.dataset.name = "digits"
    c.space.name = "nb201"
    c.space.channels = 4
    c.space.cells_per_stage = 1
    c.strategy.name = "darts"
    c.strategy.order = 1
    c.train.epochs = 2
    c.train.batch_size = 64
    c.diagnostics.eigen_every = 1
    c.diagnostics.eigen_iters = 5
    c.runtime.fast_compile = True  # compiling dominates a run this small
    return c
