"""Retrain a NAS-Bench-201 cell (Dong & Yang, ICLR 2020) from scratch on `digits`, offline.

The default cell has 3x3 convolutions on five edges and a skip on one; give another with
``--config.arch='|...|'`` or retrain a search's result with ``--config.arch_from=<its
workdir>``. C=8, N=1, cosine SGD with Nesterov momentum; about a minute on 2 CPU cores:

    python experiments/retrain.py --config=configs/retrain_nb201_digits.py --workdir=/tmp/rt_nb201
"""

from nas_jax.retrain import retrain_config


def get_config(arg=None):
    del arg
    c = retrain_config()
    c.seed = 0
    c.arch = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
              "|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    c.dataset.name = "digits"
    c.space.name = "nb201"
    c.space.channels = 8
    c.space.cells_per_stage = 1
    c.train.steps = 600  # ~33 epochs of the 1,150 training digits at batch 64
    c.train.batch_size = 64
    c.train.learning_rate = 0.1
    c.train.weight_decay = 5e-4
    c.train.crop_padding = 1
    c.log_every_steps = 50
    c.eval_every_steps = 200
    c.checkpoint.every_steps = 200
    return c
