"""The strategy comparison of ``configs/compare_nb201_digits.py`` on the NAS-Bench-201 cells
without avg_pool_3x3 (4,096 cells, 871 distinct; ``tables/nb201_4ops_c8n1_digits.npz``,
built by ``configs/table_nb201_4ops_digits.py``):

    python experiments/compare.py --config=configs/compare_nb201_4ops_digits.py \
        --workdir=/tmp/nas_compare_4ops
"""

from configs.compare_nb201_digits import get_config as full_space_config


def get_config(arg=None):
    c = full_space_config(arg)
    c.table_path = "tables/nb201_4ops_c8n1_digits.npz"
    return c
