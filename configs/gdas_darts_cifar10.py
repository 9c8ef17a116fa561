"""GDAS in the DARTS (NASNet-like) space on CIFAR-10.

Dong & Yang, "Searching for A Robust Neural Architecture in Four GPU Hours", CVPR 2019, with
the settings of the authors' search script for this space (AutoDL-Projects,
scripts-search/NASNet-space-search-by-GDAS.sh and configs/search-opts/GDAS-NASNet-CIFAR.config):
the CIFAR-10 train set split in halves; 250 epochs at batch 256; SGD lr 0.025 cosine to
0.001, Nesterov momentum 0.9, L2 5e-4, clip 5; architecture Adam 3e-4, betas (0.5, 0.999),
L2 1e-3; Gumbel-softmax temperature annealed linearly 10 -> 0.1. The supernet is DARTS'
search network (16 initial channels, 8 cells, stem x3, affine-free batch norm); the
script's own network config was not checked against it. Difference: each step updates the
architecture before the weights (DARTS' order; the GDAS code updates the weights first).

Each step runs only each edge's sampled op (``strategy.execution=composed``, as GDAS' code
computes its forward pass; the other ops' logits get gradients only through the softmax).
``--config.strategy.execution=mixture`` computes every op of every edge in one jitted step
instead (each op's weight then gets its exact straight-through gradient; several times the
work).

CIFAR-10 must be prepared first (nothing downloads): ``tfds build cifar10
--file_format=array_record`` (see README), then

    python experiments/search.py --config=configs/gdas_darts_cifar10.py --workdir=/tmp/gdas_darts
"""

from configs.darts_cifar10 import get_config as darts_config


def get_config(arg=None):
    """DARTS' search settings (configs/darts_cifar10.py) with this method's changes."""
    del arg
    c = darts_config()
    c.strategy.name = "gdas"
    c.strategy.order = 1
    c.strategy.execution = "composed"
    c.strategy.nesterov = True
    c.strategy.weight_decay = 5e-4
    c.strategy.tau_max = 10.0
    c.strategy.tau_min = 0.1
    c.train.epochs = 250
    c.train.batch_size = 256
    c.diagnostics.eigen_every = 25
    return c
