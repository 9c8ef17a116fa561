"""Random search, regularized evolution, REINFORCE and the GA on the project's NB201/digits
table: 100 seeds x 100 evaluated architectures per strategy, each strategy's seeds in one
jitted, vmapped program; reports mean +- std final test accuracy and regret, and searches per
second against the same strategies run one seed at a time in a Python loop.

    python experiments/compare.py --config=configs/compare_nb201_digits.py \
        --workdir=/tmp/nas_compare

The strategies search the table's space: the full NAS-Bench-201 space (15,625 cells, 4,930
functionally distinct; C=8, N=1, 3 seeds, 30 steps), the table that ships in ``tables/``
(built by ``configs/table_nb201_digits.py``). ``configs/compare_nb201_4ops_digits.py`` runs
the same comparison on the space without avg_pool_3x3.
"""

from nas_jax.compare import compare_config


def get_config(arg=None):
    del arg
    c = compare_config()
    c.seed = 0
    c.table_path = "tables/nb201_c8n1_digits.npz"
    c.num_seeds = 100
    c.num_evaluations = 100
    c.loop_seeds = 3
    return c
