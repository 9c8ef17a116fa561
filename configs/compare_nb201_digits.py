"""Random search, regularized evolution, REINFORCE and the GA on the NB201/digits table:
100 seeds x 150 evaluated architectures per strategy, each strategy's seeds in one jitted,
vmapped program; reports mean +- std final test accuracy and regret, and searches per second
against the same strategies run one seed at a time in a Python loop.

    python experiments/compare.py --config=configs/compare_nb201_digits.py \
        --workdir=/tmp/nas_compare

The table comes from ``configs/table_nb201_digits.py`` (see its build command); another
table: ``--config.table_path=PATH``.
"""

from nas_jax.compare import compare_config


def get_config(arg=None):
    del arg
    c = compare_config()
    c.seed = 0
    c.table_path = "tables/nb201_c8n1_digits.npz"
    c.num_seeds = 100
    c.num_evaluations = 150
    c.loop_seeds = 3
    return c
