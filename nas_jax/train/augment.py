"""Image augmentations drawn on device, per example, inside jitted training steps (the
DARTS / CIFAR evaluation recipe: padded random crop, horizontal flip, cutout)."""

import jax
import jax.numpy as jnp


def cutout(key: jax.Array, x: jax.Array, size: int) -> jax.Array:
    """Zero a ``size x size`` square per example (DeVries & Taylor 2017, as in DARTS): its
    centre is uniform over the image and the square is clipped at the borders. ``x`` is
    ``[B, H, W, C]`` and normalised, so zero is the mean."""
    b, h, w = x.shape[:3]
    ky, kx = jax.random.split(key)
    top = jax.random.randint(ky, (b, 1), 0, h) - size // 2
    left = jax.random.randint(kx, (b, 1), 0, w) - size // 2
    rows, cols = jnp.arange(h)[None], jnp.arange(w)[None]
    in_rows = (rows >= top) & (rows < top + size)
    in_cols = (cols >= left) & (cols < left + size)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[..., None].astype(x.dtype)


def random_crop(key: jax.Array, x: jax.Array, padding: int, fill: jax.Array) -> jax.Array:
    """Pad by ``padding`` with ``fill`` (per channel: the normalised value of a raw 0, as
    torchvision pads before normalising) and crop back to ``H x W`` at a random offset."""
    b, h, w, c = x.shape
    canvas = jnp.broadcast_to(fill.astype(x.dtype), (b, h + 2 * padding, w + 2 * padding, c))
    canvas = jax.lax.dynamic_update_slice(canvas, x, (0, padding, padding, 0))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
    return jax.vmap(crop)(canvas, offsets)


def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
    """Mirror each example left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1], x)
