"""Random search, regularized evolution, REINFORCE and the GA on the project's NB201/digits
table: 100 seeds x 100 evaluated architectures per strategy, each strategy's seeds in one
jitted, vmapped program; reports mean +- std final test accuracy and regret, and searches per
second against the same strategies run one seed at a time in a Python loop.

    python experiments/compare.py --config=configs/compare_nb201_digits.py \
        --workdir=/tmp/nas_compare

The strategies search the table's space. The table that ships (``tables/``) is the complete
one for NAS-Bench-201 cells without avg_pool_3x3 (4,096 cells, 871 distinct; C=8, N=1,
3 seeds; ``configs/table_nb201_4ops_digits.py``). The full 5-op table
(``configs/table_nb201_digits.py``, ~4 hours on 2 CPU cores) is used with
``--config.table_path=tables/nb201_c8n1_digits.npz`` once built.
"""

from nas_jax.compare import compare_config


def get_config(arg=None):
    del arg
    c = compare_config()
    c.seed = 0
    c.table_path = "tables/nb201_4ops_c8n1_digits.npz"
    c.num_seeds = 100
    c.num_evaluations = 100
    c.loop_seeds = 3
    return c
