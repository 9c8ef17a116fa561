"""Candidate operations (Flax NNX modules) shared by the supernets and standalone networks.

Layouts are NHWC. Every module takes ``(x, train)``; batch-norm statistics live in
``nnx.BatchStat`` variables so a split ``(graphdef, state)`` carries them explicitly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

BN_MOMENTUM = 0.9
BN_EPS = 1e-5


class ParamKeys:
    """The keys a network's constructor draws its initial weights from (``rngs.params()``):
    the i-th call returns ``jax.random.fold_in(key, i)``, the keys ``nnx.Rngs(key)`` hands
    out, so a network built with either gets the same weights; the count is a Python int.

    Build with it where the build is traced (``jax.jit``, ``nnx.eval_shape``):
    ``nnx.Rngs`` keeps its count in an array it updates in place (``count[...] += 1``), and
    under tracing each update reads the traced value's ``sharding``, whose (discarded)
    error message walks every equation traced so far, so a build's tracing time grew with
    the square of its size (as batch norm's statistics did; see ``BatchNorm``).
    """

    def __init__(self, key: jax.Array | int):
        if isinstance(key, int):
            key = jax.random.key(key)
        elif isinstance(key, jax.Array) and key.dtype == jnp.uint32:  # a raw key
            key = jax.random.wrap_key_data(key)
        self.key = key
        self.count = 0

    def params(self) -> jax.Array:
        key = jax.random.fold_in(self.key, self.count)
        self.count += 1
        return key


Keys = nnx.Rngs | ParamKeys  # what the modules' ``rngs`` argument accepts


def draw(rngs: Keys, kind: str, shape: tuple[int, ...], fn) -> jax.Array:
    """A parameter's initial value ``fn(key)`` from the next of ``rngs``' keys. Constructors
    draw every random parameter through this, with ``kind`` naming what ``fn`` computes for
    a given ``shape`` (two draws of one kind and shape compute the same function of their
    keys), so that ``DeferredKeys`` can batch the draws of one kind and shape
    (``supernet.grouped_init``)."""
    if isinstance(rngs, DeferredKeys):
        return rngs.defer(kind, tuple(shape), fn)
    return fn(rngs.params())


def he_normal(rngs: Keys, shape: tuple[int, ...]) -> jax.Array:
    """He-normal (fan-in over all axes but the last) convolution kernel."""
    init = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")
    return draw(rngs, "he_normal", shape, lambda key: init(key, shape, jnp.float32))


@dataclasses.dataclass(frozen=True)
class Deferred:
    """A parameter left undrawn by ``DeferredKeys``: the ``index``-th key's ``fn`` of
    ``kind`` and ``shape``."""

    index: int
    kind: str
    shape: tuple[int, ...]
    fn: object = dataclasses.field(compare=False, repr=False)


class DirectKeyError(TypeError):
    """A deferred build's constructor asked for a key instead of drawing through ``draw``."""


class DeferredKeys(ParamKeys):
    """``ParamKeys`` for a build that records its random draws instead of computing them:
    every ``draw`` returns a ``Deferred`` holding the key index it would have used. A
    constructor that asks for a key directly (``params()``, e.g. flax's own layers) would
    escape the record, so that raises ``DirectKeyError``."""

    def __init__(self):
        super().__init__(0)

    def params(self) -> jax.Array:
        raise DirectKeyError("a deferred build draws parameters through ops.draw; a "
                             "constructor called rngs.params() directly")

    def defer(self, kind: str, shape: tuple[int, ...], fn) -> Deferred:
        deferred = Deferred(self.count, kind, shape, fn)
        self.count += 1
        return deferred


class BatchNorm(nnx.Module):
    """Batch norm over N, H, W whose mode is chosen per call (``train``), not per module.

    Batch moments are computed in one pass (``var = E[x^2] - E[x]^2``, clamped at 0): two
    means that XLA fuses into one pass over the input. Two-pass moments
    (``E[(x - E[x])^2]``) made a whole NB201 training step 2.6x slower on XLA:CPU (AMD EPYC)
    than the one-pass moments written as a matmul with a ``1/M`` row vector over
    ``[x, x^2]``; measured side by side on an Intel Xeon (2 cores, AVX-512), the one-pass
    means beat that matmul: 0.54 vs 2.15 ms for a 64x32x32x16 input alone, a DARTS
    first-order step 2.82 vs 3.00 s, a GDAS (switch) step 0.91 vs 1.08 s, and none of the
    NB201 steps measured (mixture, switch, standalone, composed) slower.
    """

    def __init__(self, channels: int, *, affine: bool = True):
        self.affine = affine
        if affine:
            self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
            self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.maximum(jnp.mean(x * x, axis=axes) - mean * mean, 0.0)
            m = BN_MOMENTUM
            # ``set_value`` rather than ``var[...] = ``: the item assignment reads the tracer's
            # sharding, which in JAX 0.10 walks the whole jaxpr so far (quadratic tracing;
            # a 3-cell DARTS supernet traced in 43 s vs 3.4 s).
            self.mean.set_value(m * self.mean[...] + (1 - m) * jax.lax.stop_gradient(mean))
            self.var.set_value(m * self.var[...] + (1 - m) * jax.lax.stop_gradient(var))
        else:
            mean, var = self.mean[...], self.var[...]
        inv = jax.lax.rsqrt(var + BN_EPS)
        if self.affine:
            inv = inv * self.scale[...]
            return x * inv + (self.bias[...] - mean * inv)
        return (x - mean) * inv


CONV_IMPLS = ("xla", "matmul", "taps", "chunked", "mixed")


def _xla_conv(x, kernel, stride: int, dilation: int, pad: int):
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=((pad, pad), (pad, pad)),
        rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _tap_views(x: jax.Array, kh: int, kw: int, h_out: int, w_out: int, stride: int,
               dilation: int, pad: int) -> list[jax.Array]:
    """The ``kh*kw`` shifted (and strided) views of ``x`` that a convolution's taps read."""
    if pad:
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return [jax.lax.slice(x, (0, i * dilation, j * dilation, 0),
                          (x.shape[0], i * dilation + (h_out - 1) * stride + 1,
                           j * dilation + (w_out - 1) * stride + 1, x.shape[3]),
                          (1, stride, stride, 1))
            for i in range(kh) for j in range(kw)]


def _xla_conv_with_vjp(bwd: Callable) -> Callable:
    """XLA's convolution with its own backward ``bwd(stride, dilation, pad, (x, kernel), g)
    -> (dx, dkernel)``; the forward keeps its inputs as residuals."""
    conv = jax.custom_vjp(_xla_conv, nondiff_argnums=(2, 3, 4))
    conv.defvjp(lambda x, kernel, stride, dilation, pad: (
        _xla_conv(x, kernel, stride, dilation, pad), (x, kernel)), bwd)
    return conv


def _conv_taps_bwd(stride, dilation, pad, res, g):
    x, kernel = res
    kh, kw, c_in, c_out = kernel.shape
    if stride == 1 and 2 * pad == dilation * (kh - 1) == dilation * (kw - 1):
        # 'same' padding: the input gradient is the forward convolution of g with the
        # flipped, transposed kernel (XLA's own input-gradient form is slow in a branch).
        flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
        dx = _xla_conv(g, flipped, 1, dilation, pad)
    else:
        dx = jax.vjp(lambda x: _xla_conv(x, kernel, stride, dilation, pad), x)[1](g)[0]
    views = _tap_views(x, kh, kw, g.shape[1], g.shape[2], stride, dilation, pad)
    g_flat = g.reshape(-1, c_out)
    dk = jnp.stack([v.reshape(-1, c_in).T @ g_flat for v in views])
    return dx, dk.reshape(kh, kw, c_in, c_out)


_conv_taps = _xla_conv_with_vjp(_conv_taps_bwd)


CHUNK_ELEMENTS = 1 << 17  # input elements per kernel-gradient chunk (see ``conv2d``)


def batch_chunks(x_shape) -> int:
    """How many batch chunks ``chunked`` splits a kernel gradient into: the largest divisor
    of the batch that keeps each chunk's input at or above ``CHUNK_ELEMENTS`` elements."""
    b = x_shape[0]
    per_image = max(int(np.prod(x_shape[1:])), 1)
    target = max(b * per_image // CHUNK_ELEMENTS, 1)
    return max(n for n in range(1, min(target, b) + 1) if b % n == 0)


def _conv_chunked_bwd(stride, dilation, pad, res, g):
    x, kernel = res
    dx = jax.vjp(lambda x: _xla_conv(x, kernel, stride, dilation, pad), x)[1](g)[0]
    n = batch_chunks(x.shape)
    xs = x.reshape((n, x.shape[0] // n) + x.shape[1:])
    gs = g.reshape((n, g.shape[0] // n) + g.shape[1:])
    dk = None
    for i in range(n):  # unrolled: a loop over chunks (fori_loop) ran ~30x slower
        part = jax.vjp(lambda k, x=xs[i]: _xla_conv(x, k, stride, dilation, pad),
                       kernel)[1](gs[i])[0]
        dk = part if dk is None else dk + part
    return dx, dk


_conv_chunked = _xla_conv_with_vjp(_conv_chunked_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, dilation: int = 1,
           pad: int = 0, impl: str = "xla") -> jax.Array:
    """NHWC x HWIO convolution with symmetric zero padding ``pad``; the same numbers (up to
    rounding) and gradients whatever ``impl`` computes them:

    - ``xla``: XLA's convolution and its gradients.
    - ``matmul``: the k*k shifted views (im2col by slicing) contracted with the kernel in one
      matmul, so the gradients are matmuls too.
    - ``taps``: XLA's convolution forward and input gradient; the kernel gradient as one
      ``[C_in, C_out]`` contraction per tap (shifted view x output gradient). For
      convolutions inside ``lax.switch`` / ``lax.cond`` branches on XLA:CPU: there, XLA's
      kernel-gradient convolution ran ~280x slower than outside a branch (4.3 s vs 15.6 ms
      for six 64x32x32x16 3x3 kernels) and its input-gradient form ~25x, while forward
      convolutions (the input gradient is computed as one, with the flipped kernel) kept
      their speed and the per-tap contractions lost less (128 vs 17 ms;
      docs/benchmarks.md).
    - ``chunked``: XLA's convolution and input gradient; the kernel gradient as the sum of
      XLA's kernel gradients over batch chunks of at least ``CHUNK_ELEMENTS`` input
      elements (``batch_chunks``). Outside branches on XLA:CPU that ran 3.3x faster for a
      64x32x32x16 3x3 kernel (11.9 -> 3.6 ms with 8 chunks), 2x at 64x16x16x32, the same at
      64x8x8x64; inside a ``lax.switch`` branch it is as slow as XLA's (use ``taps`` there).
      In the NB201 DARTS mixture step's weight pass it took the step from 2.75-2.98 to
      2.51-2.70 s (2026-12-01, side by side; an earlier probe had seen no change).
    - ``mixed``: ``taps`` for 1x1 kernels (the kernel gradient is then one matmul: 1.0 ms
      against XLA's 4.8 ms at 64x32x32x16), ``chunked`` for larger ones. For networks run
      as separate top-level programs (``supernet.composed``).
    """
    if impl == "mixed":
        impl = "taps" if kernel.shape[:2] == (1, 1) else "chunked"
    if impl == "chunked":
        return _conv_chunked(x, kernel, stride, dilation, pad)
    if impl == "xla":
        return _xla_conv(x, kernel, stride, dilation, pad)
    if impl == "taps":
        return _conv_taps(x, kernel, stride, dilation, pad)
    if impl != "matmul":
        raise ValueError(f"conv impl={impl!r}; allowed: {', '.join(CONV_IMPLS)}")
    kh, kw, c_in, c_out = kernel.shape
    h_out = (x.shape[1] + 2 * pad - dilation * (kh - 1) - 1) // stride + 1
    w_out = (x.shape[2] + 2 * pad - dilation * (kw - 1) - 1) // stride + 1
    views = _tap_views(x, kh, kw, h_out, w_out, stride, dilation, pad)
    patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
    return patches @ kernel.reshape(kh * kw * c_in, c_out)


class Conv(nnx.Module):
    """A bias-free 2-D convolution with 'SAME'-style symmetric padding (He-normal init).

    ``impl`` chooses how it is computed (see ``conv2d``); the weights are the same either way.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, *, stride: int = 1, dilation: int = 1,
                 impl: str = "xla", rngs: Keys):
        self.kernel = nnx.Param(he_normal(rngs, (kernel, kernel, c_in, c_out)))
        self.stride = stride
        self.dilation = dilation
        self.pad = dilation * (kernel - 1) // 2
        self.impl = impl

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d(x, self.kernel[...], stride=self.stride, dilation=self.dilation,
                      pad=self.pad, impl=self.impl)


class ReLUConvBN(nnx.Module):
    """ReLU -> Conv -> BN, the NAS-Bench-201 / DARTS convolution block."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, stride: int = 1,
                 affine: bool = True, impl: str = "xla", rngs: Keys):
        self.conv = Conv(c_in, c_out, kernel, stride=stride, impl=impl, rngs=rngs)
        self.bn = BatchNorm(c_out, affine=affine)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.bn(self.conv(jax.nn.relu(x)), train)


def _window_3x3(x: jax.Array, init: float, op, stride: int) -> jax.Array:
    """``op`` over each 3x3 window (padding 1 with ``init``, ``stride``), as two 3-wide
    windows: down the rows, then along them.

    The same values as one 3x3 ``reduce_window`` (for a sum, up to the order of the nine
    additions), and a sum's gradient is the two windows' transposes, again 3-wide. On
    XLA:CPU the 3x3 window is the slow form: a 64x32x32x16 sum took 5.25 ms one way against
    0.63 ms separable, and in the NB201 DARTS first-order step (90 pools, each run forward
    and backward in both passes) the 3x3 windows were 22% of the step's time
    (docs/benchmarks.md, "Latest run (2026-12-01): separable pools, ...").
    """
    rows = jax.lax.reduce_window(x, init, op, (1, 3, 1, 1), (1, stride, 1, 1),
                                 ((0, 0), (1, 1), (0, 0), (0, 0)))
    return jax.lax.reduce_window(rows, init, op, (1, 1, 3, 1), (1, 1, stride, 1),
                                 ((0, 0), (0, 0), (1, 1), (0, 0)))


def avg_pool_3x3(x: jax.Array, stride: int = 1) -> jax.Array:
    """3x3 average pooling, padding 1, not counting padded cells (count_include_pad=False).

    The window sums are separable (``_window_3x3``); the counts are a constant of the
    shape, folded at compile time."""
    ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
    return (_window_3x3(x, 0.0, jax.lax.add, stride)
            / _window_3x3(ones, 0.0, jax.lax.add, stride))


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 (the residual shortcut of a reduction block)."""
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return total / 4.0


class ResidualReduction(nnx.Module):
    """NAS-Bench-201's ResNet basic block between stages: stride 2, channels c_in -> c_out."""

    def __init__(self, c_in: int, c_out: int, *, impl: str = "xla", rngs: Keys):
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride=2, impl=impl, rngs=rngs)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, impl=impl, rngs=rngs)
        self.shortcut = Conv(c_in, c_out, 1, impl=impl, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        residual = self.shortcut(avg_pool_2x2(x))
        return residual + self.conv_b(self.conv_a(x, train), train)


class Dense(nnx.Module):
    """A fully connected layer (LeCun-uniform-like init, zero bias)."""

    def __init__(self, d_in: int, d_out: int, *, rngs: Keys):
        def fn(key):
            bound = 1.0 / jnp.sqrt(d_in)
            return jax.random.uniform(key, (d_in, d_out), jnp.float32, -bound, bound)

        self.kernel = nnx.Param(draw(rngs, "dense_uniform", (d_in, d_out), fn))
        self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel[...] + self.bias[...]


# --------------------------------------------------------------- DARTS operations
def _pool_views(x: jax.Array, stride: int, pad_value: float) -> list[jax.Array]:
    """The 9 (strided) shifted views of ``x`` padded by 1 with ``pad_value`` that a 3x3
    pooling window reads, in row-major tap order."""
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=pad_value)
    h_out, w_out = (x.shape[1] - 1) // stride + 1, (x.shape[2] - 1) // stride + 1
    return [jax.lax.slice(xp, (0, i, j, 0),
                          (xp.shape[0], i + (h_out - 1) * stride + 1,
                           j + (w_out - 1) * stride + 1, xp.shape[3]), (1, stride, stride, 1))
            for i in range(3) for j in range(3)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def max_pool_3x3(x: jax.Array, stride: int = 1) -> jax.Array:
    """3x3 max pooling, padding 1 with -inf (a padded cell never wins), as torch's MaxPool2d.

    The forward is XLA's ``reduce_window``; the derivative is a custom JVP: each output's
    tangent is the tangent of the first tap (row-major) holding the window's maximum, as
    torch routes the gradient (one element per window, also on ties). Its transpose (the
    gradient) is nine shifted masked adds that XLA fuses, where ``reduce_window``'s own
    gradient (select-and-scatter) ran 3-11x slower on XLA:CPU (64x32x32x16, stride 1:
    forward + gradient 13.2 against 36.1 ms; the running-maximum form below took it from
    5.4 to 2.5 ms in a later side-by-side probe). Forward-over-reverse (Hessian-vector
    products) works, as it would not through a custom VJP.

    The forward takes the maximum down the rows, then along them (two 3-wide windows: the
    same values as one 3x3 window, faster on XLA:CPU: ``_window_3x3``).
    """
    return _window_3x3(x, -jnp.inf, jax.lax.max, stride)


@max_pool_3x3.defjvp
def _max_pool_3x3_jvp(stride, primals, tangents):
    (x,), (t,) = primals, tangents
    # A running maximum and the first tap holding it (a later tap wins only if greater), in
    # one chain: comparing the taps for equality with a separately computed maximum broke
    # when XLA recomputed ``x``'s producer in two fusions with different rounding (at
    # backend optimisation level 0, a fused BN before the pool: no tap equalled the max,
    # and the gradient went to the wrong tap).
    # The primal stays the windowed maximum's (it propagates NaN, as the running maximum's
    # comparisons would not).
    views = _pool_views(x, stride, -jnp.inf)
    best, first = views[0], jnp.zeros(views[0].shape, jnp.int8)
    for k in range(1, len(views)):
        greater = views[k] > best
        best = jnp.where(greater, views[k], best)
        first = jnp.where(greater, jnp.int8(k), first)
    out = max_pool_3x3(x, stride)
    t_out = None
    for k, tv in enumerate(_pool_views(t, stride, 0.0)):
        term = jnp.where(first == k, tv, jnp.zeros_like(tv))
        t_out = term if t_out is None else t_out + term
    return out, t_out


DEPTHWISE_IMPLS = ("auto", "slices", "xla")


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, dilation: int = 1,
                     pad: int = 0, impl: str = "slices") -> jax.Array:
    """NHWC depthwise convolution with an ``[k, k, 1, C]`` kernel, symmetric zero padding.

    ``impl="xla"`` is XLA's grouped convolution (``feature_group_count=C``). ``impl="slices"``
    sums the k*k strided, dilated shifted views times their per-channel taps, which XLA fuses
    into one loop: the same numbers. Measured on XLA:CPU (2 shared cores), where grouped
    convolutions are slow: on 64x32x32x16, 14-50x faster forward and 4-7x faster forward +
    backward (3x3 and 5x5 dilated); a DARTS supernet forward (5 cells, C=8, 16x16, batch 32)
    23x faster (0.27 s vs 6.2 s). It compiles slower (about 1.5x for the tiny supernet).
    """
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            x, kernel, window_strides=(stride, stride), padding=((pad, pad), (pad, pad)),
            rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=x.shape[-1])
    if impl != "slices":
        raise ValueError(f"depthwise impl={impl!r}; allowed: xla, slices")
    k = kernel.shape[0]
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
    h_out = (xp.shape[1] - dilation * (k - 1) - 1) // stride + 1
    w_out = (xp.shape[2] - dilation * (k - 1) - 1) // stride + 1
    out = None
    for i in range(k):
        for j in range(k):
            view = jax.lax.slice(xp, (0, i * dilation, j * dilation, 0),
                                 (xp.shape[0], i * dilation + (h_out - 1) * stride + 1,
                                  j * dilation + (w_out - 1) * stride + 1, xp.shape[3]),
                                 (1, stride, stride, 1))
            term = view * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


class DepthwiseConv(nnx.Module):
    """A bias-free depthwise (one filter per channel) convolution, symmetric padding
    ``dilation * (kernel - 1) // 2`` (He-normal init over the ``kernel**2`` fan-in).

    ``impl``: see ``depthwise_conv2d``; ``auto`` is ``slices`` on CPU and ``xla`` elsewhere
    (accelerators are not measured yet), fixed when the module is built.
    """

    def __init__(self, channels: int, kernel: int, *, stride: int = 1, dilation: int = 1,
                 impl: str = "auto", rngs: Keys):
        if impl not in DEPTHWISE_IMPLS:
            raise ValueError(f"depthwise impl={impl!r}; allowed: {', '.join(DEPTHWISE_IMPLS)}")
        self.kernel = nnx.Param(he_normal(rngs, (kernel, kernel, 1, channels)))
        self.stride = stride
        self.dilation = dilation
        self.pad = dilation * (kernel - 1) // 2
        if impl == "auto":
            impl = "slices" if jax.default_backend() == "cpu" else "xla"
        self.impl = impl

    def __call__(self, x: jax.Array) -> jax.Array:
        return depthwise_conv2d(x, self.kernel[...], stride=self.stride, dilation=self.dilation,
                                pad=self.pad, impl=self.impl)


class DilConv(nnx.Module):
    """DARTS' ``DilConv``: ReLU -> depthwise kxk (dilated, strided) -> pointwise 1x1 -> BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, stride: int = 1, dilation: int = 2,
                 affine: bool = True, depthwise_impl: str = "auto", conv_impl: str = "xla",
                 rngs: Keys):
        self.depthwise = DepthwiseConv(c_in, kernel, stride=stride, dilation=dilation,
                                       impl=depthwise_impl, rngs=rngs)
        self.pointwise = Conv(c_in, c_out, 1, impl=conv_impl, rngs=rngs)
        self.bn = BatchNorm(c_out, affine=affine)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.bn(self.pointwise(self.depthwise(jax.nn.relu(x))), train)


class SepConv(nnx.Module):
    """DARTS' ``SepConv``: two ReLU-depthwise-pointwise-BN blocks; only the first is strided
    and only the last changes the width (c_in -> c_in -> c_out)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, stride: int = 1,
                 affine: bool = True, depthwise_impl: str = "auto", conv_impl: str = "xla",
                 rngs: Keys):
        self.block_a = DilConv(c_in, c_in, kernel, stride=stride, dilation=1, affine=affine,
                               depthwise_impl=depthwise_impl, conv_impl=conv_impl, rngs=rngs)
        self.block_b = DilConv(c_in, c_out, kernel, dilation=1, affine=affine,
                               depthwise_impl=depthwise_impl, conv_impl=conv_impl, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.block_b(self.block_a(x, train), train)


class FacConv(nnx.Module):
    """A factorized convolution (MetaNAS' ``conv_1x5_5x1``): ReLU -> conv 1xk (strided in both
    dimensions) -> conv kx1 -> BN, both convolutions full (not depthwise), bias-free, with
    'SAME'-style padding along their long side."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, stride: int = 1,
                 affine: bool = True, rngs: Keys):
        self.row = nnx.Param(he_normal(rngs, (1, kernel, c_in, c_out)))
        self.col = nnx.Param(he_normal(rngs, (kernel, 1, c_out, c_out)))
        self.bn = BatchNorm(c_out, affine=affine)
        self.stride = stride
        self.pad = (kernel - 1) // 2

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        dims = ("NHWC", "HWIO", "NHWC")
        p = self.pad
        x = jax.lax.conv_general_dilated(jax.nn.relu(x), self.row[...], (self.stride,) * 2,
                                         ((0, 0), (p, p)), dimension_numbers=dims)
        x = jax.lax.conv_general_dilated(x, self.col[...], (1, 1), ((p, p), (0, 0)),
                                         dimension_numbers=dims)
        return self.bn(x, train)


class FactorizedReduce(nnx.Module):
    """DARTS' ``FactorizedReduce``: ReLU, two 1x1 stride-2 convs (c_out/2 each) on the input
    and on it shifted by one pixel, concatenated, then BN. Halves the resolution.

    An odd-sized input is padded by a zero row/column after the shift, so both halves have
    ``ceil(size / 2)`` pixels (DARTS' PyTorch code fails there); even sizes are unaffected.
    """

    def __init__(self, c_in: int, c_out: int, *, affine: bool = True, impl: str = "xla",
                 rngs: Keys):
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even c_out (two halves), got {c_out}")
        self.conv_a = Conv(c_in, c_out // 2, 1, stride=2, impl=impl, rngs=rngs)
        self.conv_b = Conv(c_in, c_out // 2, 1, stride=2, impl=impl, rngs=rngs)
        self.bn = BatchNorm(c_out, affine=affine)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = jax.nn.relu(x)
        shifted = jnp.pad(x[:, 1:, 1:], ((0, 0), (0, 1), (0, 1), (0, 0)))
        return self.bn(jnp.concatenate([self.conv_a(x), self.conv_b(shifted)], axis=-1), train)


def remat_switch(index: jax.Array, branches: Sequence[Callable], *operands):
    """``lax.switch(index, branches, *operands)`` whose gradient recomputes the taken branch.

    Differentiating a plain ``lax.switch`` makes every branch return the residuals of all
    branches (zeros for the others') for the backward switch to pick from, so each call
    writes and keeps every branch's intermediates, whichever runs. On XLA:CPU that cost
    ~20 ms per switched NB201 edge at 64x32x32x16 even when the chosen op is a skip
    connection (six such edges, forward + backward: 105 ms plain vs 10 ms here). Here the
    forward keeps only the operands, and the backward switches to the taken branch's VJP,
    which runs its forward again: one extra forward of the chosen op. Reverse-mode only
    (``jax.jvp`` through it is not defined); gradients equal ``lax.switch``'s.
    """
    branches = tuple(branches)

    @jax.custom_vjp
    def switched(index, *operands):
        return jax.lax.switch(index, branches, *operands)

    def fwd(index, *operands):
        return jax.lax.switch(index, branches, *operands), (index, operands)

    def bwd(res, g):
        index, operands = res
        backs = [lambda g, *ops, b=b: jax.vjp(b, *ops)[1](g) for b in branches]
        return (None, *jax.lax.switch(index, backs, g, *operands))

    switched.defvjp(fwd, bwd)
    return switched(index, *operands)
