"""The embedded default: NAS-Bench-201 cells searched by regularized evolution on `digits`.

Offline (scikit-learn's 8x8 digits through a TFDS builder), a few minutes on 2 CPU cores:
each candidate (C=8, N=1) is trained for a few epochs and scored on a held-out valid split,
then the best cell is retrained from scratch and its test accuracy reported.

    python experiments/search.py --config=configs/default.py --workdir=/tmp/nas_default
"""

from nas_jax.config import search_config


def get_config(arg=None):
    del arg
    c = search_config()
    c.seed = 0
    c.dataset.name = "digits"
    c.space.name = "nb201"
    c.space.channels = 8
    c.space.cells_per_stage = 1
    c.strategy.name = "regularized_evolution"
    c.strategy.population_size = 16
    c.strategy.sample_size = 4
    c.strategy.batch_size = 8
    c.budget.num_evaluations = 48
    c.evaluator.steps = 100  # ~5.5 epochs of the 1,150 training digits at batch 64
    c.evaluator.learning_rate = 0.1
    c.retrain.steps = 600
    return c
