"""A layer-wise 1-D CNN searched by regularized evolution (Real et al., AAAI 2019) on MNIST-1D
(Greydanus, 2020; generated offline), then the best network and two hand-designed baselines
retrained from scratch with one recipe and compared on the test split.

Space: 4 conv layers, each with filters (8, 16, 32, 64), kernel size (3, 5, 7), stride
(1, 2), activation (relu, gelu, tanh, swish) and an optional skip: 4 x 3 x 2 x 4 x 2 = 192
choices per layer, 192^4 ~ 1.4e9 architectures. Every candidate is trained for 300 steps in
the macro supernet (exact masking; weights rescaled to the candidate's own fan-in) and scored
on the valid split.

Baselines, trained with the same retrain recipe: an MLP of two hidden layers (MNIST-1D's
reference MLP has two hidden layers of 100 units; the nearest widths in the MLP space are 128)
and a fixed CNN like MNIST-1D's reference CNN (stride-2 convolutions of 32 filters, kernel 5).

    python experiments/search.py --config=configs/macro_cnn_mnist1d.py --workdir=/tmp/nas_mnist1d
"""

from nas_jax.config import search_config


def get_config(arg=None):
    del arg
    c = search_config()
    c.seed = 0
    c.dataset.name = "mnist1d"
    c.space.name = "macro_cnn"
    c.space.num_layers = 4
    c.space.filters = (8, 16, 32, 64)
    c.space.kernel_sizes = (3, 5, 7)
    c.space.strides = (1, 2)
    c.space.units = (32, 64, 128, 256)  # the MLP baseline's space
    c.strategy.name = "regularized_evolution"
    c.strategy.population_size = 16
    c.strategy.sample_size = 4
    c.strategy.batch_size = 8
    c.budget.num_evaluations = 64
    c.evaluator.steps = 300  # ~5 epochs of the 3,600 training signals at batch 64
    c.evaluator.learning_rate = 0.05
    c.retrain.steps = 3000  # ~53 epochs
    c.retrain.learning_rate = 0.05
    c.baselines = (
        "mlp:mlp(128,relu|128,relu)",
        "macro_cnn:conv(32,k5,s2,relu)|conv(32,k5,s2,relu)|conv(32,k5,s2,relu)|"
        "conv(32,k3,s1,relu)",
    )
    return c
