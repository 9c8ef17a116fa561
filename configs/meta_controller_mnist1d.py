"""Meta-trained, task-conditioned REINFORCE controller (Wong et al., "Transfer Learning with
Neural AutoML", NeurIPS 2018) on MNIST-1D variants: 16 meta-train and 10 meta-test tasks,
each MNIST-1D generated with its own translation, noise, scale and shear
(``tasks.MNIST1D_RANGES``), and a 2-layer MLP space (90 canonical architectures). Every
task's table is built by training every architecture twice on that task (the first run
builds them, ~10 minutes on 2 CPU cores; later runs reuse ``family.table_dir``):

    python experiments/meta_train.py --config=configs/meta_controller_mnist1d.py \
        --workdir=/tmp/meta_mnist1d_data

``:learned`` or ``:none`` as the config argument switches the task embedding
(``--config=configs/meta_controller_mnist1d.py:none`` is the unconditioned baseline);
``configs/meta_test_mnist1d.py`` holds the meta-test commands.
"""

from nas_jax.meta.meta_train import meta_train_config


def get_config(arg=None):
    c = meta_train_config()
    c.steps = 300
    c.log_every = 25
    c.checkpoint_every = 100
    c.family.name = "mnist1d"
    c.family.num_train = 16
    c.family.num_test = 10
    c.family.num_samples = 2000
    c.family.valid_fraction = 0.5
    c.family.max_layers = 2
    c.family.units = (16, 64, 128)
    c.family.activations = ("relu", "tanh", "swish")
    # Shared by the data / learned / none runs, so the tables are built once.
    c.family.table_dir = "/tmp/meta_mnist1d_tables"
    c.family.table.num_seeds = 2
    c.family.table.steps = 200
    c.controller.mode = arg or "data"
    return c
