"""Random network states for the DARTS network tests, filled with numpy (no init compile)."""

import jax
import jax.numpy as jnp
import numpy as np


def fill_random(state, seed: int):
    """``state`` (an abstract or real nnx state) with random weights, BN affine parameters and
    running statistics: convolution / dense kernels fan-in scaled, scales and variances
    positive around 1, the rest small."""
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = next(k.key for k in reversed(path) if isinstance(k, jax.tree_util.DictKey))
        noise = rng.normal(size=x.shape).astype(np.float32)
        if len(x.shape) > 1:  # conv HWIO (depthwise: I=1) or dense: fan-in scaling
            return jnp.asarray(noise * np.sqrt(2.0 / np.prod(x.shape[:-1])))
        if name in ("scale", "var"):
            return jnp.asarray(np.abs(1.0 + 0.3 * noise))
        return jnp.asarray(0.3 * noise)

    return jax.tree_util.tree_map_with_path(fill, state)
