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
"""

from nas_jax.gradient_search import gradient_search_config


def get_config(arg=None):
    del arg
    c = gradient_search_config()
    c.seed = 0
    c.dataset.name = "cifar10"
    c.space.name = "nb201"
    c.space.channels = 16
    c.space.cells_per_stage = 5
    c.strategy.name = "gdas"
    c.strategy.order = 1
    c.strategy.learning_rate = 0.025
    c.strategy.min_learning_rate = 0.001
    c.strategy.momentum = 0.9
    c.strategy.nesterov = True
    c.strategy.weight_decay = 5e-4
    c.strategy.grad_clip = 5.0
    c.strategy.arch_learning_rate = 3e-4
    c.strategy.arch_weight_decay = 1e-3
    c.strategy.tau_max = 10.0
    c.strategy.tau_min = 0.1
    c.train.epochs = 240
    c.train.batch_size = 64
    c.diagnostics.eigen_every = 20
    c.diagnostics.eigen_iters = 20
    return c
