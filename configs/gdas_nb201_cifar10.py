"""GDAS on NAS-Bench-201, CIFAR-10: the benchmark paper's search setting.

Dong & Yang, "Searching for A Robust Neural Architecture in Four GPU Hours", CVPR 2019, as
run by NAS-Bench-201 (Dong & Yang, ICLR 2020): supernet C=16, N=5; the CIFAR-10 train set
split in halves; 240 epochs at batch 64 (configs/nas-benchmark/algos/GDAS.config); SGD lr
0.025 cosine to 0.001, Nesterov momentum 0.9, L2 5e-4, clip 5; architecture Adam 3e-4,
betas (0.5, 0.999), L2 1e-3; Gumbel-softmax temperature annealed linearly 10 -> 0.1.
Difference: each step updates the architecture before the weights (DARTS' order; the
GDAS code updates the weights first).

CIFAR-10 must be prepared first (nothing downloads): ``tfds build cifar10
--file_format=array_record`` (see README), then

    python experiments/search.py --config=configs/gdas_nb201_cifar10.py --workdir=/tmp/gdas

Each step computes every op of every edge (``strategy.execution=mixture``: each op's weight
gets its exact straight-through gradient). ``--config.strategy.execution=switch`` (jitted)
or ``composed`` (the fastest on CPU) compute only each edge's sampled op, as GDAS' code does
for its forward pass; the other ops' logits then get gradients only through the softmax.
"""

from configs.darts_v1_nb201_cifar10 import get_config as darts_v1_config


def get_config(arg=None):
    """DARTS-V1's settings (configs/darts_v1_nb201_cifar10.py) with this method's changes."""
    del arg
    c = darts_v1_config()
    c.strategy.name = "gdas"
    c.strategy.tau_max = 10.0
    c.strategy.tau_min = 0.1
    c.train.epochs = 240
    c.diagnostics.eigen_every = 20
    return c
