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

from configs.darts_v1_nb201_cifar10 import get_config as darts_v1_config


def get_config(arg=None):
    """DARTS-V1's settings (configs/darts_v1_nb201_cifar10.py) with this method's changes."""
    del arg
    c = darts_v1_config()
    c.strategy.order = 2
    return c
