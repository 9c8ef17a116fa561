"""The NAS-Bench-201 table on `digits` for the space without ``avg_pool_3x3``: every edge
chooses none / skip_connect / nor_conv_1x1 / nor_conv_3x3 (4,096 cells, 871 functionally
distinct), C=8, N=1, 3 seeds, the recipe of ``configs/table_nb201_digits.py``:

    python experiments/build_table.py --config=configs/table_nb201_4ops_digits.py \
        --out=tables/nb201_4ops_c8n1_digits.npz

The repository ships it (``tables/``) beside the full space's table
(``configs/table_nb201_digits.py``, 4,930 cells, ~1.5 hours); this one builds in ~15 minutes
on 2 CPU cores. Its cells are cells of the full space (the same functions), trained with the
same recipe and number of seeds. The strategy comparison on it
(``configs/compare_nb201_4ops_digits.py``) searches the table's space; gradient-based runs
scored on it set the same ``space.ops`` (``configs/collapse_nb201_4ops_digits.py``).
"""

from configs.table_nb201_digits import get_config as full_table_config

OPS_4 = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3")


def get_config(arg=None):
    c = full_table_config(arg)
    c.space.ops = OPS_4
    return c
