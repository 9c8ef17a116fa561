"""The standard few-shot baseline network (Conv-4 of MAML / Reptile / MetaNAS' ``maml`` model).

Four blocks of ``conv3x3 -> BN -> ReLU -> maxpool 2x2`` with ``channels`` filters, then a
linear classifier over the flattened feature map. BN statistics live in ``nnx.BatchStat``
(called with ``train=True`` they use batch statistics, as few-shot meta-learning does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nas_jax import ops

NUM_BLOCKS = 4


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, in ceil mode (an odd edge row/column is pooled alone), so
    tiny inputs (e.g. 8x8 -> 4, 2, 1, 1) never shrink to zero."""
    pad = ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), pad)


def pooled_size(size: int) -> int:
    """Spatial size after the four ceil-mode poolings."""
    for _ in range(NUM_BLOCKS):
        size = (size + 1) // 2
    return size


class Conv4(nnx.Module):
    """Conv-4: ``4 x [conv3x3 (channels) -> BN -> ReLU -> maxpool 2x2]`` -> linear.

    Args:
      input_shape: per-example ``(H, W, C)``.
      channels: filters of every conv layer (MAML: 32 on miniImageNet, 64 on Omniglot).
      num_classes: classifier outputs (the N of N-way tasks).
    """

    def __init__(self, input_shape: tuple[int, int, int], channels: int, num_classes: int, *,
                 rngs: ops.Keys):
        if len(input_shape) != 3:
            raise ValueError(f"Conv4 input_shape must be (H, W, C), got {input_shape}")
        if channels < 1 or num_classes < 1:
            raise ValueError(f"Conv4 needs channels >= 1 and num_classes >= 1, got {channels} "
                             f"and {num_classes}")
        h, w, c_in = input_shape
        convs, bns = [], []
        for i in range(NUM_BLOCKS):
            convs.append(ops.Conv(c_in if i == 0 else channels, channels, 3, rngs=rngs))
            bns.append(ops.BatchNorm(channels))
        self.convs = nnx.List(convs)
        self.bns = nnx.List(bns)
        features = channels * pooled_size(h) * pooled_size(w)
        self.classifier = ops.Dense(features, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """Logits ``float[B, classes]`` for images ``float[B, H, W, C]``."""
        for conv, bn in zip(self.convs, self.bns, strict=True):
            x = max_pool_2x2(jax.nn.relu(bn(conv(x), train)))
        return self.classifier(x.reshape(x.shape[0], -1))
