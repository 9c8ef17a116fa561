"""Meta-test protocol (Wong et al., "Transfer Learning with Neural AutoML", NeurIPS 2018) on
MNIST-1D variants that differ in translation, over 2-layer 1-D CNNs
(``configs/meta_controller_mnist1d_cnn.py``): on the 10 held-out tasks (tables trained per
task, reused from meta-training), the meta-trained controller zero-shot (sampled and ranked)
and fine-tuned, the same controller from scratch, regularized evolution and random search,
64 seeds x 60 evaluations each; data-embedding, learned-embedding and unconditioned
controllers side by side. First the three meta-training runs (the first builds the tables):

    python experiments/meta_train.py --config=configs/meta_controller_mnist1d_cnn.py:data \
        --workdir=/tmp/meta_mnist1d_cnn_data
    python experiments/meta_train.py --config=configs/meta_controller_mnist1d_cnn.py:learned \
        --workdir=/tmp/meta_mnist1d_cnn_learned
    python experiments/meta_train.py --config=configs/meta_controller_mnist1d_cnn.py:none \
        --workdir=/tmp/meta_mnist1d_cnn_none

then

    python experiments/meta_test.py --config=configs/meta_test_mnist1d_cnn.py \
        --workdir=/tmp/meta_test_mnist1d_cnn

Other meta_train workdirs: ``--config.controllers.data=PATH`` (and ``.learned``, ``.none``).
"""

import ml_collections

from nas_jax.meta.meta_test import meta_test_config


def get_config(arg=None):
    del arg
    c = meta_test_config()
    c.controllers = ml_collections.ConfigDict(dict(
        data="/tmp/meta_mnist1d_cnn_data", learned="/tmp/meta_mnist1d_cnn_learned",
        none="/tmp/meta_mnist1d_cnn_none"))
    c.num_seeds = 64
    c.budget = 60
    c.tolerance = 0.01
    return c
