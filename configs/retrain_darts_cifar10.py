"""DARTS' CIFAR-10 evaluation (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture
Search", ICLR 2019, Sec. 3.3 / A.2; the repository's cnn/train.py): the DARTS-V2 cell in a
20-cell network of 36 initial channels, trained from scratch on all 50,000 training images
for 600 epochs, batch 96, SGD momentum 0.9 (no Nesterov), learning rate 0.025 cosine-annealed
to 0, weight decay 3e-4, gradient norm clipped at 5, random crop (padding 4) and flip, cutout
16, drop-path 0.2 (ramped linearly over the epochs) and an auxiliary head weighted 0.4. The
paper reports 2.76 +- 0.09% test error and 3.3M parameters (without the auxiliary head).
Differences: the learning rate and the drop-path ramp follow DARTS per epoch but the cosine
here is evaluated per step; a partial last batch of an epoch is skipped.

CIFAR-10 must be prepared first (nothing downloads): ``tfds build cifar10
--file_format=array_record``. Days on one GPU; then:

    python experiments/retrain.py --config=configs/retrain_darts_cifar10.py --workdir=/tmp/rt_darts
"""

from nas_jax.retrain import retrain_config
from nas_jax.spaces.darts import DARTS_V2


def get_config(arg=None):
    del arg
    c = retrain_config()
    c.seed = 0
    c.arch = DARTS_V2
    c.dataset.name = "cifar10"
    c.dataset.valid_fraction = 0.1  # a split is formed, then trained on too
    c.dataset.train_on_valid = True  # DARTS trains on all 50k and reports test
    c.space.name = "darts"
    c.space.channels = 36
    c.space.num_cells = 20
    c.space.stem_multiplier = 3
    c.train.steps = 0
    c.train.epochs = 600
    c.train.batch_size = 96
    c.train.learning_rate = 0.025
    c.train.momentum = 0.9
    c.train.nesterov = False
    c.train.weight_decay = 3e-4
    c.train.grad_clip = 5.0
    c.train.eval_batch_size = 500
    c.train.crop_padding = 4
    c.train.flip = True
    c.train.cutout = 16
    c.train.drop_path_prob = 0.2
    c.train.auxiliary_weight = 0.4
    c.log_every_steps = 500
    c.eval_every_steps = 5200  # ~10 epochs
    c.checkpoint.every_steps = 2600  # ~5 epochs
    return c
