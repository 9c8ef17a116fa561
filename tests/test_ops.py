"""Convolution implementations and the recomputing switch: same values and gradients as
XLA's convolution and ``lax.switch``, inside and outside switch branches; max pooling's
custom derivative against reduce_window's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nas_jax import ops

CASES = [  # kernel, stride, dilation, pad
    (3, 1, 1, 1), (1, 1, 1, 0), (5, 1, 1, 2), (3, 2, 1, 1), (3, 1, 2, 2), (3, 1, 1, 0),
    (5, 2, 2, 4),
]


@pytest.mark.parametrize("impl", ["matmul", "taps", "chunked", "mixed"])
@pytest.mark.parametrize("k, stride, dilation, pad", CASES)
def test_conv_impls_match_xla_values_and_gradients(impl, k, stride, dilation, pad):
    kx, kw, kg = jax.random.split(jax.random.key(k * 100 + stride * 10 + dilation + pad), 3)
    x = jax.random.normal(kx, (2, 9, 9, 3))
    w = jax.random.normal(kw, (k, k, 3, 4))

    def conv(impl):
        return lambda x, w: ops.conv2d(x, w, stride=stride, dilation=dilation, pad=pad,
                                       impl=impl)

    ref, y = conv("xla")(x, w), conv(impl)(x, w)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    g = jax.random.normal(kg, ref.shape)
    want = jax.vjp(conv("xla"), x, w)[1](g)
    got = jax.jit(lambda x, w, g: jax.vjp(conv(impl), x, w)[1](g))(x, w, g)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_chunked_kernel_gradient_sums_over_batch_chunks(monkeypatch):
    monkeypatch.setattr(ops, "CHUNK_ELEMENTS", 200)
    x = jax.random.normal(jax.random.key(0), (6, 9, 9, 3))  # 243 elements per image
    assert ops.batch_chunks(x.shape) == 6  # 1458 // 200 = 7 -> the largest divisor <= 7
    assert ops.batch_chunks((6, 5, 5, 3)) == 2  # 450 // 200 = 2
    assert ops.batch_chunks((1, 9, 9, 3)) == 1
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    g = jax.random.normal(jax.random.key(2), (6, 9, 9, 4))
    for stride, pad in ((1, 1), (2, 1)):
        g_s = g[:, ::stride, ::stride]

        def conv(impl, stride=stride, pad=pad):
            return lambda x, w: ops.conv2d(x, w, stride=stride, pad=pad, impl=impl)

        want = jax.vjp(conv("xla"), x, w)[1](g_s)
        got = jax.jit(lambda x, w, g: jax.vjp(conv("chunked"), x, w)[1](g))(x, w, g_s)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_taps_gradient_against_finite_differences():
    """The hand-written backward of ``taps`` in float64, against central differences."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 6, 6, 2), jnp.float64)
        w = jax.random.normal(jax.random.key(1), (3, 3, 2, 3), jnp.float64)
        r = jax.random.normal(jax.random.key(2), (2, 6, 6, 3), jnp.float64)

        def loss(x, w):
            return jnp.sum(jnp.tanh(ops.conv2d(x, w, pad=1, impl="taps")) * r)

        gx, gw = jax.grad(loss, argnums=(0, 1))(x, w)
        eps = 1e-6
        for idx in [(0, 0, 0, 0), (1, 2, 3, 1), (0, 5, 5, 1)]:
            d = jnp.zeros_like(x).at[idx].set(eps)
            fd = (loss(x + d, w) - loss(x - d, w)) / (2 * eps)
            np.testing.assert_allclose(gx[idx], fd, rtol=1e-6, atol=1e-9)
        for idx in [(0, 0, 0, 0), (1, 1, 1, 2), (2, 0, 1, 1)]:
            d = jnp.zeros_like(w).at[idx].set(eps)
            fd = (loss(x, w + d) - loss(x, w - d)) / (2 * eps)
            np.testing.assert_allclose(gw[idx], fd, rtol=1e-6, atol=1e-9)


def test_unknown_conv_impl_is_named():
    with pytest.raises(ValueError, match="conv impl='fft'; allowed: xla, matmul, taps"):
        ops.conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), impl="fft")


def _branches():
    """Branches of different costs and structures: a pytree of parameters in, an output and
    an auxiliary (non-differentiated) pytree out, like a switched NB201 edge."""

    def conv(p, h):
        y = ops.conv2d(jax.nn.relu(h), p["w3"], pad=1, impl="taps")
        return y * p["scale"], {"w3": p["w3"], "scale": p["scale"] + jnp.mean(y)}

    return [lambda p, h: (jnp.zeros_like(h), p),
            lambda p, h: (h, p),
            conv,
            lambda p, h: (ops.avg_pool_3x3(h) * p["scale"][0], p)]


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_remat_switch_equals_lax_switch(index):
    p = {"w3": jax.random.normal(jax.random.key(0), (3, 3, 2, 2)),
         "scale": jnp.array([1.5, -0.5])}
    h = jax.random.normal(jax.random.key(1), (2, 5, 5, 2))
    r = jax.random.normal(jax.random.key(2), (2, 5, 5, 2))

    def loss(switch, p, h, i):
        y, aux = switch(i, _branches(), p, h)
        y2, _ = switch(i, _branches(), p, y)  # two in a row: cotangents pass through
        return jnp.sum(jnp.tanh(y2) * r), aux

    i = jnp.int32(index)
    want = jax.grad(lambda p, h: loss(jax.lax.switch, p, h, i), (0, 1), has_aux=True)(p, h)
    got = jax.jit(jax.grad(lambda p, h, i: loss(ops.remat_switch, p, h, i), (0, 1),
                           has_aux=True))(p, h, i)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)  # float32, jit vs eager
    assert jax.tree.structure(got) == jax.tree.structure(want)


def _reduce_window_max(x, stride):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [5, 6])
def test_avg_pool_equals_the_loop_definition_and_its_gradient_the_3x3_window(stride, size):
    """count_include_pad=False by its definition (a loop over windows, float64), and the
    separable sums' gradient equals the one 3x3 reduce_window's; odd sizes and stride 2."""
    x = jax.random.normal(jax.random.key(size), (2, size, size, 3))
    xs = np.asarray(x, np.float64)
    out = (size - 1) // stride + 1
    want = np.zeros((2, out, out, 3))
    for i in range(out):
        for j in range(out):
            r, c = i * stride, j * stride
            window = xs[:, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2]
            want[:, i, j] = window.mean(axis=(1, 2))
    np.testing.assert_allclose(ops.avg_pool_3x3(x, stride), want, rtol=1e-5, atol=1e-6)

    def window_3x3(x):
        pad, window = ((0, 0), (1, 1), (1, 1), (0, 0)), (1, 3, 3, 1)
        strides = (1, stride, stride, 1)
        total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
        count = jax.lax.reduce_window(jnp.ones_like(x), 0.0, jax.lax.add, window, strides, pad)
        return total / count

    w = jax.random.normal(jax.random.key(1), want.shape)
    grad = jax.grad(lambda x: jnp.sum(w * ops.avg_pool_3x3(x, stride)))(x)
    np.testing.assert_allclose(grad, jax.grad(lambda x: jnp.sum(w * window_3x3(x)))(x),
                               rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(grad).min()) > 0  # every input reaches some window


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [6, 7])
def test_max_pool_gradients_equal_reduce_window_without_ties(stride, size):
    """The custom JVP's gradient and Hessian-vector product equal XLA's reduce_window
    derivatives where every window has one maximum (random inputs); odd sizes too."""
    x = jax.random.normal(jax.random.key(size), (2, size, size, 3))
    w = jax.random.normal(jax.random.key(1), ops.max_pool_3x3(x, stride).shape)
    ours = lambda x: jnp.sum(w * ops.max_pool_3x3(x, stride) ** 2)  # noqa: E731
    ref = lambda x: jnp.sum(w * _reduce_window_max(x, stride) ** 2)  # noqa: E731
    np.testing.assert_array_equal(ops.max_pool_3x3(x, stride), _reduce_window_max(x, stride))
    np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(ref)(x), rtol=1e-6, atol=1e-6)
    v = jax.random.normal(jax.random.key(2), x.shape)
    hvp = jax.jvp(jax.grad(ours), (x,), (v,))[1]
    np.testing.assert_allclose(hvp, jax.jvp(jax.grad(ref), (x,), (v,))[1], rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(hvp).max()) > 0


def test_max_pool_gradient_after_a_fused_batch_norm_is_the_same_jitted():
    """Jitted, XLA may compute the pool's input (here a batch norm) in more than one fusion,
    with different rounding; the gradient must not depend on a tap equalling a maximum
    computed elsewhere. (It did: at the suite's backend optimisation level 0 the jitted
    gradient was off by ~3 from the eager one, every window routed to its last tap.)"""
    x = jax.random.normal(jax.random.key(0), (6, 8, 8, 4))
    w = jax.random.normal(jax.random.key(1), (6, 8, 8, 4))
    graphdef, state = nnx.split(ops.BatchNorm(4))

    def loss(x, state):
        h = nnx.merge(graphdef, state, copy=True)(x, True)
        return jnp.sum(w * ops.max_pool_3x3(h, 1)) + jnp.sum(h * h)

    np.testing.assert_allclose(jax.jit(jax.grad(loss))(x, state), jax.grad(loss)(x, state),
                               rtol=1e-5, atol=1e-5)


def test_max_pool_routes_a_tie_to_the_first_tap():
    """On a constant input every window ties: each output's gradient goes to one element,
    the first (row-major) tap of its window, as torch's MaxPool2d routes it."""
    g = jax.grad(lambda x: jnp.sum(ops.max_pool_3x3(x, 1)))(jnp.zeros((1, 4, 4, 1)))[0, :, :, 0]
    # output (i, j)'s window starts at (i - 1, j - 1); its first in-bounds tap takes it
    want = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            want[max(i - 1, 0), max(j - 1, 0)] += 1
    np.testing.assert_array_equal(np.asarray(g), want)
    assert float(g.sum()) == 16.0


@pytest.mark.parametrize("seed", [0, "key", "raw"])
def test_param_keys_hand_out_the_keys_of_nnx_rngs(seed):
    """The same keys as ``nnx.Rngs(seed).params()`` (an int, a typed key or a raw key), so
    a network built with either gets the same weights, also when the build is traced."""
    if seed == "key":
        seed = jax.random.key(3)
    elif seed == "raw":
        seed = jax.random.PRNGKey(3)
    rngs, keys = nnx.Rngs(seed), ops.ParamKeys(seed)
    for _ in range(3):
        np.testing.assert_array_equal(jax.random.key_data(rngs.params()),
                                      jax.random.key_data(keys.params()))

    def weights(make_keys):  # three kernels drawn one after another
        return lambda: nnx.state(ops.ResidualReduction(3, 4, rngs=make_keys()), nnx.Param)

    for run in (lambda f: f(), lambda f: jax.jit(f)()):  # eager and traced builds
        want = run(weights(lambda: nnx.Rngs(seed)))
        got = run(weights(lambda: ops.ParamKeys(seed)))
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
