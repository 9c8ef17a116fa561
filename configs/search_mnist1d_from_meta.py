"""A REINFORCE search on MNIST-1D (the built-in, generated offline) that starts from the
data-embedding controller meta-trained on the MNIST-1D/MLP task family
(``configs/meta_controller_mnist1d.py``; Wong et al., NeurIPS 2018: transfer, then keep
training by RL on the new task). The space is that family's: 1-2 layer MLPs, units
16/64/128, activations relu/tanh/swish; each candidate is trained with the family's table
recipe (200 Adam steps, batch 64, lr 0.003) and scored on the valid split. The dataset is a
new task for the controller: the built-in MNIST-1D's generator settings are not among the
family's 26 tasks. ``:scratch`` runs the same search from a freshly initialised controller
of the same size and settings instead (``strategy.init_from=""``).

First meta-train the controller (builds the family's tables the first time, ~10 minutes):

    python experiments/meta_train.py --config=configs/meta_controller_mnist1d.py:data \
        --workdir=/tmp/meta_mnist1d_data

then

    python experiments/search.py --config=configs/search_mnist1d_from_meta.py \
        --workdir=/tmp/nas_mnist1d_from_meta
    python experiments/search.py --config=configs/search_mnist1d_from_meta.py:scratch \
        --workdir=/tmp/nas_mnist1d_scratch
"""

from nas_jax.config import search_config


def get_config(arg=None):
    if arg not in (None, "", "scratch"):
        raise ValueError(f"configs/search_mnist1d_from_meta.py:{arg}: allowed: (none), scratch")
    c = search_config()
    c.seed = 0
    c.dataset.name = "mnist1d"
    c.space.name = "mlp"
    c.space.max_layers = 2
    c.space.units = (16, 64, 128)
    c.space.activations = ("relu", "tanh", "swish")
    c.strategy.name = "reinforce"
    c.strategy.init_from = "" if arg == "scratch" else "/tmp/meta_mnist1d_data"
    # The meta-trained controller's policy settings (configs/meta_controller_mnist1d.py), so
    # that :scratch differs from it only in the start.
    c.strategy.hidden_size, c.strategy.temperature = 16, 1.0
    c.strategy.tanh_constant, c.strategy.entropy_weight = 2.5, 0.05
    c.strategy.batch_size = 2
    c.strategy.learning_rate = 0.005
    c.strategy.population_size, c.strategy.sample_size = 2, 1
    c.budget.num_evaluations = 16
    c.evaluator.steps = 200
    c.evaluator.batch_size = 64
    c.evaluator.optimizer = "adam"
    c.evaluator.learning_rate = 0.003
    c.evaluator.weight_decay = 0.0
    c.retrain.steps = 1000
    c.retrain.optimizer = "adam"
    c.retrain.learning_rate = 0.003
    c.retrain.weight_decay = 0.0
    return c
