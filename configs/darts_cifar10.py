"""DARTS' own search on CIFAR-10 in the DARTS space (Liu, Simonyan & Yang, "DARTS:
Differentiable Architecture Search", ICLR 2019, Sec. 3.2 / A.1; cnn/train_search.py).

An 8-cell supernet of 16 initial channels (stem x3), all 8 ops on 14 edges of the normal and
reduction cells, affine-free batch norm; the CIFAR-10 train set split in halves; 50 epochs
at batch 64; SGD lr 0.025 cosine to 0.001, momentum 0.9, L2 3e-4, clip 5; architecture Adam
3e-4, betas (0.5, 0.999), L2 1e-3; second order (the paper's main DARTS result; pass
``--config.strategy.order=1`` for the first-order variant). The hypergradient is exact
(autodiff), where the paper used finite differences. The derived genotype (top-2 edges per
node, ``none`` excluded) is printed in genotypes.py's format. Not implemented: the
auxiliary head and data augmentation of the search (DARTS uses random crop and flip).

CIFAR-10 must be prepared first (nothing downloads): ``tfds build cifar10
--file_format=array_record`` (see README), then

    python experiments/search.py --config=configs/darts_cifar10.py --workdir=/tmp/darts_cifar10
"""

from nas_jax.gradient_search import gradient_search_config


def get_config(arg=None):
    del arg
    c = gradient_search_config()
    c.seed = 0
    c.dataset.name = "cifar10"
    c.space.name = "darts"
    c.space.channels = 16
    c.space.num_cells = 8
    c.space.stem_multiplier = 3
    c.strategy.name = "darts"
    c.strategy.order = 2
    c.strategy.learning_rate = 0.025
    c.strategy.min_learning_rate = 0.001
    c.strategy.momentum = 0.9
    c.strategy.weight_decay = 3e-4
    c.strategy.grad_clip = 5.0
    c.strategy.arch_learning_rate = 3e-4
    c.strategy.arch_beta1 = 0.5
    c.strategy.arch_beta2 = 0.999
    c.strategy.arch_weight_decay = 1e-3
    c.train.epochs = 50
    c.train.batch_size = 64
    c.diagnostics.eigen_every = 5
    c.diagnostics.eigen_iters = 20
    return c
