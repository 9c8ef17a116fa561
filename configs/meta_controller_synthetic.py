"""Meta-trained, task-conditioned REINFORCE controller (Wong et al., "Transfer Learning with
Neural AutoML", NeurIPS 2018) on the synthetic table family: each task's best architecture is
a known function of its feature vector, and the controller, conditioned on a DeepSets encoding
of the task's features, must propose the best architecture of unseen tasks zero-shot.
About a minute on 2 CPU cores:

    python experiments/meta_train.py --config=configs/meta_controller_synthetic.py \
        --workdir=/tmp/meta_synthetic

``:learned`` or ``:none`` as the config argument switches the task embedding
(``--config=configs/meta_controller_synthetic.py:none`` is the unconditioned baseline).
"""

from nas_jax.meta.meta_train import meta_train_config


def get_config(arg=None):
    c = meta_train_config()
    c.steps = 300
    c.log_every = 25
    c.checkpoint_every = 100
    c.family.num_train = 16
    c.family.num_test = 8
    c.controller.mode = arg or "data"
    return c
