"""DARTS-V2 (exact second order) on NAS-Bench-201, CIFAR-10: the benchmark paper's setting.

Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture
Search", ICLR 2020 (DARTS: Liu et al., ICLR 2019). Supernet C=16, N=5; the CIFAR-10 train
set split in halves; 50 epochs at batch 64; SGD lr 0.025 cosine to 0.001, Nesterov momentum
0.9, L2 5e-4, clip 5 (configs/nas-benchmark/algos/DARTS.config); architecture Adam 3e-4,
betas (0.5, 0.999), L2 1e-3. The paper reports that DARTS collapses here to an all-skip
cell; the logged parameter-free count and Hessian eigenvalue show it happening. The
hypergradient through the unrolled weight step is exact (autodiff Hessian-vector products),
where the paper approximated it by finite differences.

CIFAR-10 must be prepared first (nothing downloads): ``tfds build cifar10
--file_format=array_record`` (see README), then

    python experiments/search.py --config=configs/darts_v2_nb201_cifar10.py --workdir=/tmp/darts_v2
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
    c.strategy.name = "darts"
    c.strategy.order = 2
    c.strategy.learning_rate = 0.025
    c.strategy.min_learning_rate = 0.001
    c.strategy.momentum = 0.9
    c.strategy.nesterov = True
    c.strategy.weight_decay = 5e-4
    c.strategy.grad_clip = 5.0
    c.strategy.arch_learning_rate = 3e-4
    c.strategy.arch_weight_decay = 1e-3
    c.train.epochs = 50
    c.train.batch_size = 64
    c.diagnostics.eigen_every = 5
    c.diagnostics.eigen_iters = 20
    return c
