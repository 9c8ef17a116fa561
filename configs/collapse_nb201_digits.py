"""DARTS (first order) on the full NAS-Bench-201 space (the 5 ops, avg_pool_3x3 included), on
`digits`, with and without a collapse remedy, every epoch's derived cell scored in the
project's table (``tables/nb201_c8n1_digits.npz``, built by ``configs/table_nb201_digits.py``):

    python experiments/collapse.py --config=configs/collapse_nb201_digits.py \
        --workdir=/tmp/nas_collapse_5ops

The settings of ``configs/collapse_nb201_4ops_digits.py`` (DARTS' optimisers, batch 64, 5
seeds x 50 epochs, variants darts / beta_darts / darts_es) on the space where NAS-Bench-201's
paper measured DARTS' collapse to skip connections.
"""

from configs.collapse_nb201_4ops_digits import get_config as four_ops_config
from nas_jax.spaces import nb201


def get_config(arg=None):
    c = four_ops_config(arg)
    c.search.space.ops = tuple(nb201.OPS)
    c.search.table_path = "tables/nb201_c8n1_digits.npz"
    return c
