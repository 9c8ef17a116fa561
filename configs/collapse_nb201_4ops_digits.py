"""DARTS (first order) on the NAS-Bench-201 cells without avg_pool_3x3, on `digits`, with and
without a collapse remedy, every epoch's derived cell scored in the project's table
(``tables/nb201_4ops_c8n1_digits.npz``, built by ``configs/table_nb201_4ops_digits.py``):

    python experiments/collapse.py --config=configs/collapse_nb201_4ops_digits.py \
        --workdir=/tmp/nas_collapse

The supernet is the table's network (C=8, N=1); the training digits are split in halves
(weights / architecture) as in DARTS; DARTS' optimiser settings (SGD 0.025 cosine to 0.001,
momentum 0.9, weight decay 3e-4, architecture Adam 3e-4 with betas (0.5, 0.999) and weight
decay 1e-3, grad clip 5), batch 64. Variants: plain DARTS, beta-DARTS (regulariser weight
ramped from 0 to ``beta_weight``) and RobustDARTS' early stopping on the Hessian eigenvalue.
"""

from nas_jax.collapse_study import collapse_config

OPS_4 = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3")


def get_config(arg=None):
    del arg
    c = collapse_config()
    c.seeds = 5
    c.beta_weight = 50.0
    s = c.search
    s.dataset.name = "digits"
    s.space.name = "nb201"
    s.space.channels = 8
    s.space.cells_per_stage = 1
    s.space.ops = OPS_4
    s.strategy.name = "darts"
    s.strategy.order = 1
    s.train.epochs = 50
    s.train.batch_size = 64
    s.diagnostics.eigen_every = 1
    s.diagnostics.eigen_iters = 10
    s.table_path = "tables/nb201_4ops_c8n1_digits.npz"
    s.runtime.fast_compile = False
    return c
