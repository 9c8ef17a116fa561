"""Meta-test protocol (Wong et al., "Transfer Learning with Neural AutoML", NeurIPS 2018) on
the synthetic table family: on 10 held-out tasks, the meta-trained controller zero-shot
(sampled and ranked) and fine-tuned, the same controller from scratch, regularized evolution
and random search, 64 seeds x 60 evaluations each; data-embedding, learned-embedding and
unconditioned controllers side by side. First the three meta-training runs (10 held-out
tasks each):

    python experiments/meta_train.py --config=configs/meta_controller_synthetic.py:data \
        --config.family.num_test=10 --workdir=/tmp/meta_synthetic_data
    python experiments/meta_train.py --config=configs/meta_controller_synthetic.py:learned \
        --config.family.num_test=10 --workdir=/tmp/meta_synthetic_learned
    python experiments/meta_train.py --config=configs/meta_controller_synthetic.py:none \
        --config.family.num_test=10 --workdir=/tmp/meta_synthetic_none

then

    python experiments/meta_test.py --config=configs/meta_test_synthetic.py \
        --workdir=/tmp/meta_test_synthetic

Other meta_train workdirs: ``--config.controllers.data=PATH`` (and ``.learned``, ``.none``).
"""

import ml_collections

from nas_jax.meta.meta_test import meta_test_config


def get_config(arg=None):
    del arg
    c = meta_test_config()
    c.controllers = ml_collections.ConfigDict(dict(
        data="/tmp/meta_synthetic_data", learned="/tmp/meta_synthetic_learned",
        none="/tmp/meta_synthetic_none"))
    c.num_seeds = 64
    c.budget = 60
    c.tolerance = 0.01
    return c
