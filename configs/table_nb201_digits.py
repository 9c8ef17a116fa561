"""A NAS-Bench-201-style table on `digits`: every canonical NB201 cell (4,930 classes), C=8,
N=1, trained 3 times (seeds) with the population evaluator's recipe, scored on valid and test.

    python experiments/build_table.py --config=configs/table_nb201_digits.py \
        --out=tables/nb201_c8n1_digits.npz

Resumable (rerun the same command), shardable (``--shard=i/n`` in n processes, then
``--merge``); ``--limit=N`` trains only the first N cells for a quick check. The recipe is a
short one; tune it before the full build.
"""

from nas_jax.evaluators.table_build import table_build_config


def get_config(arg=None):
    del arg
    c = table_build_config()
    c.seed = 0
    c.num_seeds = 3
    c.chunk_size = 16
    c.dataset.name = "digits"
    c.dataset.valid_fraction = 0.2
    c.space.name = "nb201"
    c.space.channels = 8
    c.space.cells_per_stage = 1
    c.evaluator.name = "population"
    c.evaluator.steps = 100  # ~5.5 epochs of the 1,150 training digits at batch 64
    c.evaluator.batch_size = 64
    c.evaluator.learning_rate = 0.1
    return c
