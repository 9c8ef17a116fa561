"""Networks for the layer-wise spaces (``MacroCNNSpace``, ``MLPSpace``): a supernet that takes
the architecture as ``weights = space.one_hot(arch)`` (``float[D, max_choices]``), and a
standalone network that computes only one architecture's chosen layer shapes.

Both share one module-tree layout; the supernet holds every layer at its largest shape and
a standalone network's parameters are crops of it (``extract_standalone``): channel axes
keep a prefix, kernel axes the centred window. Shape-changing choices are masks, exact for
one-hot weights (a weighted mixture of the masks for soft ones):

- filters / units: outputs beyond the chosen count are multiplied by 0, so the next layer
  and the classifier only see the active channels.
- kernel size: the largest kernel times a centred box. Every convolution pads
  ``((k-1)//2, k//2)`` (the 'SAME' output size ``ceil(n/s)``), so a size-k kernel is the
  centred crop of the size-K one and a stride-s output is the stride-1 output at multiples
  of s.
- stride ("compaction"): the supernet keeps the input's full size N per axis. Each layer
  computes the stride-1 result; then, per axis, one N x N 0/1 matrix (mixed over the stride
  choices) moves every s-th position to the front and zeroes the rest, and a per-axis mask
  of valid positions, compacted alike, zeroes everything past the standalone's size
  ``ceil(n/s)``, so the next convolution reads it as padding. The first positions then hold
  the standalone's feature map, at the cost of one stride-1 convolution at size N per layer
  (no per-cumulative-stride dilated branches, as an "a trous" construction would need).
- activation and skip: weighted sums; the identity shortcut's weight is
  ``P(stride 1) * P(filters == input channels)``, the projection's is the rest.
- pooling: the mean over valid positions (the mask's sum counts them).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nas_jax import ops
from nas_jax.spaces.macro import ACTIVATIONS, CNN_GENES, MLP_GENES, MacroCNNSpace, MLPSpace


class ConvWeights(nnx.Module):
    """A kernel of ``shape`` (He-normal over all axes but the last) and a zero bias."""

    def __init__(self, shape: tuple[int, ...], *, rngs: ops.Keys):
        std = math.sqrt(2.0 / math.prod(shape[:-1]))
        self.kernel = nnx.Param(ops.draw(
            rngs, "macro_he_normal", tuple(shape),
            lambda key: std * jax.random.normal(key, tuple(shape), jnp.float32)))
        self.bias = nnx.Param(jnp.zeros((shape[-1],), jnp.float32))


class MacroLayer(nnx.Module):
    """One layer's parameters: ``conv`` and, where a projection shortcut may be used, ``proj``."""

    def __init__(self, ndim: int, c_in: int, c_out: int, kernel: int, proj: bool, *,
                 rngs: ops.Keys):
        self.conv = ConvWeights((kernel,) * ndim + (c_in, c_out), rngs=rngs)
        self.proj = ConvWeights((c_in, c_out), rngs=rngs) if proj else None


def conv(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """Convolution padded ``((k-1)//2, k//2)`` per axis: output size ``ceil(n / stride)``."""
    ndim = kernel.ndim - 2
    k = kernel.shape[0]
    spec = "HW"[-ndim:]
    return jax.lax.conv_general_dilated(
        x, kernel, (stride,) * ndim, (((k - 1) // 2, k // 2),) * ndim,
        dimension_numbers=(f"N{spec}C", f"{spec}IO", f"N{spec}C"))


def compaction(n: int, strides: tuple[int, ...]) -> np.ndarray:
    """``float[len(strides), n, n]``: row ``i`` of matrix ``j`` picks position
    ``i * strides[j]`` (rows past the end are zero): stride-s subsampling moved to the front."""
    out = np.zeros((len(strides), n, n), np.float32)
    for j, s in enumerate(strides):
        rows = np.arange(-(-n // s))
        out[j, rows, rows * s] = 1.0
    return out


def _mix_activations(z: jax.Array, names: tuple[str, ...], w: jax.Array) -> jax.Array:
    return sum(w[j] * ACTIVATIONS[name](z) for j, name in enumerate(names))


def _prefix_mask(sizes: tuple[int, ...], w: jax.Array, width: int) -> jax.Array:
    """``sum_j w[j] * [c < sizes[j]]`` over ``c < width``: 0/1 for a one-hot ``w``."""
    masks = jnp.arange(width)[None, :] < jnp.asarray(sizes)[:, None]
    return w @ masks.astype(w.dtype)


def _check_weights(space, weights) -> jax.Array:
    shape = (space.num_decisions, space.max_choices)
    if weights is None or tuple(weights.shape) != shape:
        got = None if weights is None else tuple(weights.shape)
        raise ValueError(f"the {type(space).__name__} supernet needs weights float{list(shape)} "
                         f"(e.g. space.one_hot(arch)), got {got}")
    return weights


class MacroCNNNetwork(nnx.Module):
    """The ``MacroCNNSpace`` network (see its class doc): convolutions, global average
    pooling over valid positions, a linear classifier.

    Args:
      space: the space (layers, choices, ``ndim``, ``input_shape``, ``num_classes``).
      arch: None for the supernet (largest shapes, masked by the ``weights`` given at call
        time); an ``int[5 * num_layers]`` architecture for a standalone network.
    """

    def __init__(self, space: MacroCNNSpace, arch=None, *, rngs: ops.Keys):
        self.space = space
        self.is_supernet = arch is None
        c_in = space.input_shape[-1]
        f_max, k_max = max(space.filters), max(space.kernel_sizes)
        layers = []
        if self.is_supernet:
            self.arch = None
            for _ in range(space.num_layers):
                layers.append(MacroLayer(space.ndim, c_in, f_max, k_max, True, rngs=rngs))
                c_in = f_max
        else:
            self.arch = tuple(space.layers(arch))
            for f, k, s, _, skip in self.arch:
                proj = skip and (s != 1 or c_in != f)
                layers.append(MacroLayer(space.ndim, c_in, f, k, proj, rngs=rngs))
                c_in = f
        self.layers = nnx.List(layers)
        self.classifier = ops.Dense(c_in, space.num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, weights: jax.Array | None = None, *,
                 train: bool = False) -> jax.Array:
        """Logits ``float[B, classes]`` for ``x`` ``float[B, *input_shape]``; ``train`` is
        accepted for the common network signature (no layer depends on it)."""
        del train
        if self.is_supernet:
            return self._supernet(x, _check_weights(self.space, weights))
        axes = tuple(range(1, 1 + self.space.ndim))
        for layer, (_, _, s, act, skip) in zip(self.layers, self.arch):
            h = ACTIVATIONS[act](conv(x, layer.conv.kernel[...], s) + layer.conv.bias[...])
            if skip:
                short = x[(slice(None),) + (slice(None, None, s),) * len(axes)]
                if layer.proj is not None:
                    short = short @ layer.proj.kernel[...] + layer.proj.bias[...]
                h = h + short
            x = h
        return self.classifier(jnp.mean(x, axis=axes))

    def _supernet(self, x: jax.Array, weights: jax.Array) -> jax.Array:
        space = self.space
        axes = tuple(range(1, 1 + space.ndim))
        f_max, k_max = max(space.filters), max(space.kernel_sizes)
        nf, nk, ns, na = (len(space.filters), len(space.kernel_sizes), len(space.strides),
                          len(space.activations))
        # Centred boxes of each kernel size inside the largest (same offsets as the crops).
        boxes = np.zeros((nk,) + (k_max,) * space.ndim, np.float32)
        for j, k in enumerate(space.kernel_sizes):
            lo = (k_max - 1) // 2 - (k - 1) // 2
            boxes[(j,) + (slice(lo, lo + k),) * space.ndim] = 1.0
        sizes = space.input_shape[:-1]
        picks = [jnp.asarray(compaction(n, space.strides)) for n in sizes]
        valid = [jnp.ones((n,), x.dtype) for n in sizes]  # per axis: 1 where a position exists
        w_prev = None  # filter weights of the previous layer
        for i, layer in enumerate(self.layers):
            wf, wk, ws, wa, wskip = (weights[len(CNN_GENES) * i + g, :n]
                                     for g, n in enumerate((nf, nk, ns, na, 2)))
            kernel = layer.conv.kernel[...] * jnp.tensordot(wk, boxes, 1)[..., None, None]
            z = conv(x, kernel) + layer.conv.bias[...]
            h = _mix_activations(z, space.activations, wa)
            # Shortcut: identity when stride 1 and channels match, else the projection.
            short = x @ layer.proj.kernel[...] + layer.proj.bias[...]
            if x.shape[-1] <= f_max:
                if w_prev is None:
                    p_same = wf @ (jnp.asarray(space.filters) == x.shape[-1]).astype(wf.dtype)
                else:
                    p_same = wf @ w_prev
                p_id = ws[space.strides.index(1)] * p_same if 1 in space.strides else 0.0
                ident = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, f_max - x.shape[-1])])
                short = p_id * ident + (1.0 - p_id) * short
            h = h + wskip[1] * short
            h = h * _prefix_mask(space.filters, wf, f_max)
            # Stride: per axis, one matrix compacts the stride-1 map and zeroes invalid positions.
            for a, axis in enumerate(axes):
                pick = jnp.tensordot(ws, picks[a], 1)
                valid[a] = pick @ valid[a]
                pick = valid[a][:, None] * pick
                h = jnp.moveaxis(jnp.tensordot(pick, h, axes=(1, axis)), 0, axis)
            x = h
            w_prev = wf
        count = math.prod(jnp.sum(v) for v in valid)
        return self.classifier(jnp.sum(x, axis=axes) / count)


class MLPNetwork(nnx.Module):
    """The ``MLPSpace`` network: flatten, ``depth`` dense layers with activations, a linear
    classifier. In the supernet every layer has the most units (extra units masked to 0)
    and a layer beyond the chosen depth is the identity, weighted by ``P(depth > i)``.

    Args:
      space: the space (``max_layers``, units, activations, input shape, classes).
      arch: None for the supernet; an architecture for a standalone network (only its
        active layers exist).
    """

    def __init__(self, space: MLPSpace, arch=None, *, rngs: ops.Keys):
        self.space = space
        self.is_supernet = arch is None
        width = math.prod(space.input_shape)
        if self.is_supernet:
            self.arch = None
            sizes = [max(space.units)] * space.max_layers
        else:
            self.arch = tuple(space.layers(arch))
            sizes = [u for u, _ in self.arch]
        layers = []
        for units in sizes:
            layers.append(ops.Dense(width, units, rngs=rngs))
            width = units
        self.layers = nnx.List(layers)
        self.classifier = ops.Dense(width, space.num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, weights: jax.Array | None = None, *,
                 train: bool = False) -> jax.Array:
        """Logits ``float[B, classes]``; ``train`` is accepted for the common signature."""
        del train
        h = x.reshape(x.shape[0], -1)
        if not self.is_supernet:
            for layer, (_, act) in zip(self.layers, self.arch):
                h = ACTIVATIONS[act](layer(h))
            return self.classifier(h)
        space = self.space
        weights = _check_weights(space, weights)
        u_max, nu, na = max(space.units), len(space.units), len(space.activations)
        depth = weights[0, : space.max_layers]
        for i, layer in enumerate(self.layers):
            wu = weights[1 + len(MLP_GENES) * i, :nu]
            wa = weights[2 + len(MLP_GENES) * i, :na]
            out = _mix_activations(layer(h), space.activations, wa)
            out = out * _prefix_mask(space.units, wu, u_max)
            if i == 0:
                h = out
            else:
                p_active = jnp.sum(depth[i:])
                h = p_active * out + (1.0 - p_active) * h
        return self.classifier(h)


def _keys(path) -> tuple:
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def _crop(big: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Leading axes but the last two (kernel window): centred; the others: a prefix."""
    spatial = len(shape) - 2
    starts = [((b - 1) // 2 - (s - 1) // 2) if a < spatial else 0
              for a, (b, s) in enumerate(zip(big.shape, shape))]
    return jax.lax.slice(big, starts, [st + s for st, s in zip(starts, shape)])


def extract_standalone(supernet_params: nnx.State, standalone_params: nnx.State) -> nnx.State:
    """The standalone network's parameters cropped from the supernet's (same paths)."""
    flat = {_keys(p): v for p, v in jax.tree_util.tree_flatten_with_path(supernet_params)[0]}
    return jax.tree_util.tree_map_with_path(
        lambda p, v: _crop(flat[_keys(p)], v.shape), standalone_params)


def match_standalone_init(space, params: nnx.State, weights: jax.Array) -> nnx.State:
    """Rescale a fresh supernet init so that, for one-hot ``weights``, the active crop of each
    kernel has the standalone network's init scale (He / LeCun over the chosen fan-in, not
    the largest): each kernel is multiplied by ``sqrt(fan_in_max / fan_in_chosen)``, with
    chosen fan-ins averaged under ``weights`` (jittable). Use before training a candidate
    from scratch in the supernet."""
    weights = _check_weights(space, weights)
    fans = {}  # path prefix -> (largest fan-in, chosen fan-in)
    if isinstance(space, MacroCNNSpace):
        g, nf, nk = len(CNN_GENES), len(space.filters), len(space.kernel_sizes)
        c_max = c_in = space.input_shape[-1]
        for i in range(space.num_layers):
            sizes = jnp.asarray(space.kernel_sizes, jnp.float32) ** space.ndim
            window = weights[g * i + 1, :nk] @ sizes
            fans[("layers", i, "conv")] = (max(space.kernel_sizes) ** space.ndim * c_max,
                                           window * c_in)
            fans[("layers", i, "proj")] = (c_max, c_in)
            c_max = max(space.filters)
            c_in = weights[g * i, :nf] @ jnp.asarray(space.filters, jnp.float32)
        fans[("classifier",)] = (c_max, c_in)
    elif isinstance(space, MLPSpace):
        g, nu = len(MLP_GENES), len(space.units)
        units = [weights[1 + g * i, :nu] @ jnp.asarray(space.units, jnp.float32)
                 for i in range(space.max_layers)]
        for i in range(1, space.max_layers):
            fans[("layers", i)] = (max(space.units), units[i - 1])
        last = weights[0, : space.max_layers] @ jnp.stack(units)  # the last active layer's
        fans[("classifier",)] = (max(space.units), last)
    else:
        raise ValueError(f"match_standalone_init: no rule for {type(space).__name__}")

    def rescale(path, v):
        keys = _keys(path)
        if keys[-1] != "kernel" or keys[:-1] not in fans:
            return v
        big, chosen = fans[keys[:-1]]
        return v * jnp.sqrt(big / chosen).astype(v.dtype)

    return jax.tree_util.tree_map_with_path(rescale, params)
