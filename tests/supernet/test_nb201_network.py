"""NB201Network: the supernet with one-hot weights computes the standalone network."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nas_jax import ops
from nas_jax.spaces.nb201 import CONV_KERNEL, OPS, NB201Space
from nas_jax.supernet.nb201 import NB201Network, extract_standalone, one_hot_weights

SPACE = NB201Space(channels=2, cells_per_stage=1, input_shape=(8, 8, 1), num_classes=3)
ARCHS = [(0,) * 6, (1,) * 6, (3,) * 6, (4,) * 6, (3, 0, 2, 4, 1, 3), (2, 1, 0, 0, 4, 3)]
X = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
# Numerics, not speed, are tested here: skipping XLA's backend optimisations halves compiles.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def random_state(arch=None, seed=0):
    """A network's state with random weights, BN affine and running statistics.

    Filled with numpy: the module's own initialisers would compile a random program per
    parameter shape, which costs more than everything else in this file.
    """
    graphdef, state = nnx.split(nnx.eval_shape(lambda: NB201Network(SPACE, arch,
                                                                    rngs=ops.ParamKeys(0))))
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = next(k.key for k in reversed(path) if isinstance(k, jax.tree_util.DictKey))
        noise = rng.normal(size=x.shape).astype(np.float32)
        if len(x.shape) > 1:  # conv HWIO or dense (in, out): fan-in scaling
            return jnp.asarray(noise * np.sqrt(2.0 / np.prod(x.shape[:-1])))
        if name in ("scale", "var"):
            return jnp.asarray(np.abs(1.0 + 0.3 * noise))
        return jnp.asarray(0.3 * noise)

    return graphdef, jax.tree_util.tree_map_with_path(fill, state)


@pytest.fixture(scope="module")
def supernet():
    graphdef, state = random_state()

    def forward(state, weights, x, train):
        m = nnx.merge(graphdef, state, copy=True)
        return m(x, weights, train=train), nnx.state(m, nnx.BatchStat)

    return state, jax.jit(forward, static_argnums=3, compiler_options=FAST_COMPILE), forward


def standalone(super_state, arch, x, train):
    graphdef, state = random_state(arch, seed=1)
    state = extract_standalone(super_state, state)
    paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(state)}
    before = {p: np.array(v[...]) for p, v in nnx.to_flat_state(nnx.state(state, nnx.BatchStat))}
    model = nnx.merge(graphdef, state)
    logits = model(x, train=train)
    return logits, nnx.state(model, nnx.BatchStat), paths, before


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_one_hot_supernet_equals_standalone(supernet, arch, train):
    state, forward, _ = supernet
    logits, stats = forward(state, one_hot_weights(SPACE, arch), X, train)
    ref_logits, ref_stats, paths, before = standalone(state, arch, X, train)
    assert logits.shape == (4, 3)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    flat_stats = dict(nnx.to_flat_state(stats))
    ref_flat = list(nnx.to_flat_state(ref_stats))
    assert ref_flat
    for path, value in ref_flat:
        np.testing.assert_allclose(flat_stats[path][...], value[...], rtol=1e-5, atol=1e-6)
    # The standalone state holds exactly the chosen operations (plus stem, reductions, head).
    cell_ops = {p.split("/")[2] for p in paths if p.startswith("layers/0/")}
    expected = {f"e{e}_{OPS[a]}" for e, a in enumerate(arch) if OPS[a] in CONV_KERNEL}
    assert cell_ops == expected
    moved = [not np.allclose(before[p], v[...]) for p, v in ref_flat]
    assert any(moved) == train  # eval mode leaves the running statistics alone


def test_all_none_cells_give_a_constant_output(supernet):
    state, forward, _ = supernet
    logits, _ = forward(state, one_hot_weights(SPACE, (0,) * 6), X, False)
    np.testing.assert_allclose(logits, jnp.broadcast_to(logits[0], logits.shape), atol=1e-6)
    other, _ = forward(state, one_hot_weights(SPACE, (3,) * 6), X, False)
    assert not np.allclose(other, jnp.broadcast_to(other[0], other.shape), atol=1e-3)


def test_zero_weight_removes_an_operation(supernet):
    state, forward, _ = supernet
    w = one_hot_weights(SPACE, (0, 0, 0, 3, 0, 0))
    c, _ = forward(state, w.at[3, 3].set(0.0), X, False)
    none, _ = forward(state, one_hot_weights(SPACE, (0,) * 6), X, False)
    np.testing.assert_allclose(c, none, atol=1e-5)


def test_supernet_needs_weights():
    model = nnx.eval_shape(lambda: NB201Network(SPACE, rngs=ops.ParamKeys(0)))
    assert model.is_supernet
    with pytest.raises(ValueError, match="weights"):
        model(X)
    sa = nnx.eval_shape(lambda: NB201Network(SPACE, (1,) * 6, rngs=ops.ParamKeys(0)))
    assert not sa.is_supernet
    with pytest.raises(ValueError, match="decision 0"):
        NB201Network(SPACE, (5,) * 6, rngs=ops.ParamKeys(0))


def test_gradient_wrt_mixture_weights_matches_finite_differences(supernet):
    state, forward, raw_forward = supernet
    # float64, so finite differences are accurate; the random draws pinned to one PRNG mode
    # (the runtime flag may have been set by an earlier test in this process).
    with jax.enable_x64(True), jax.threefry_partitionable(True):
        state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state)
        x = jnp.asarray(X, jnp.float64)
        r = jax.random.normal(jax.random.key(3), (4, 3), jnp.float64)

        def loss(w, forward=forward):  # train mode: the DARTS setting, BN batch statistics
            return jnp.sum(forward(state, w, x, True)[0] * r)

        alphas = jax.random.normal(jax.random.key(4), (6, 5), jnp.float64)
        w = jax.nn.softmax(alphas, axis=-1)
        grad_fn = jax.grad(functools.partial(loss, forward=raw_forward))
        grad = np.asarray(jax.jit(grad_fn, compiler_options=FAST_COMPILE)(w))
        assert grad.dtype == np.float64
        # 'none' contributes nothing, so its weight has exactly zero gradient.
        np.testing.assert_array_equal(grad[:, 0], 0.0)
        assert np.abs(grad[:, 1:]).min() > 0
        eps = 1e-7  # small: a ReLU kink within eps of a pre-activation would break the check
        fd = np.zeros_like(grad)
        for e in range(6):
            for o in range(1, 5):
                d = jnp.zeros((6, 5), jnp.float64).at[e, o].set(eps)
                fd[e, o] = (float(loss(w + d)) - float(loss(w - d))) / (2 * eps)
        scale = np.abs(grad).max()
        np.testing.assert_allclose(fd, grad, rtol=1e-4, atol=1e-5 * scale)
        # A random direction, as a second, aggregate check.
        v = jax.random.normal(jax.random.key(5), (6, 5), jnp.float64)
        fd_v = (float(loss(w + eps * v)) - float(loss(w - eps * v))) / (2 * eps)
        np.testing.assert_allclose(fd_v, float(jnp.sum(grad * v)), rtol=1e-4)



@pytest.mark.skipif(not os.environ.get("NAS_JAX_SLOW_TESTS"),
                    reason="two gradient compiles (~55 s); set NAS_JAX_SLOW_TESTS=1 "
                    "(tests/evaluators/test_executors.py checks switch == mixture training)")
@pytest.mark.parametrize("conv_impl", ["taps", "matmul"])
def test_switch_select_equals_mixture_for_one_hot_weights(supernet, conv_impl):
    """``select="switch"`` (only the chosen op under a recomputing switch) gives the
    mixture's logits, batch statistics and parameter gradients for one-hot weights."""
    state, _, mixture = supernet
    graphdef = nnx.split(nnx.eval_shape(lambda: NB201Network(
        SPACE, select="switch", conv_impl=conv_impl, rngs=ops.ParamKeys(0))))[0]
    r = jax.random.normal(jax.random.key(5), (4, 3))

    def switched(state, weights, x, train):
        m = nnx.merge(graphdef, state, copy=True)
        return m(x, weights, train=train), nnx.state(m, nnx.BatchStat)

    def loss(params, rest, w, fwd):
        logits, stats = fwd(nnx.merge_state(params, rest), w, X, True)
        return jnp.sum(logits * r), stats

    params, rest = nnx.split_state(state, nnx.Param, ...)
    for arch in [(3, 0, 2, 4, 1, 3), (2, 1, 0, 0, 4, 3)]:
        w = one_hot_weights(SPACE, arch)
        out = [jax.jit(jax.grad(loss, has_aux=True), static_argnums=3,
                       compiler_options=FAST_COMPILE)(params, rest, w, fwd)
               for fwd in (switched, mixture)]
        (g_switch, s_switch), (g_mix, s_mix) = out
        for a, b in zip(jax.tree.leaves(g_switch), jax.tree.leaves(g_mix)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        # Running statistics: the chosen ops' (and stem/reduction/head) agree; the mixture
        # also updates the unchosen ops' statistics (computed with weight 0), the switch
        # leaves them as they were.
        before = dict(nnx.to_flat_state(nnx.state(state, nnx.BatchStat)))
        chosen = {f"e{e}_{OPS[a]}" for e, a in enumerate(arch)}
        mixed = dict(nnx.to_flat_state(s_mix))
        for path, value in nnx.to_flat_state(s_switch):
            cell_op = path[0] == "layers" and str(path[2])[:1] == "e"
            if not cell_op or str(path[2]) in chosen:
                np.testing.assert_allclose(value[...], mixed[path][...], rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_array_equal(value[...], before[path][...])
        logits = jax.jit(switched, static_argnums=3, compiler_options=FAST_COMPILE)(
            state, w, X, False)[0]
        np.testing.assert_allclose(logits, mixture(state, w, X, False)[0], rtol=1e-5,
                                   atol=1e-5)


def test_op_subset_supernet_is_the_full_supernet_on_its_columns(supernet):
    """The supernet of ``ops=(...)`` holds the full supernet's modules for those ops (same
    paths), and mixing its columns gives the full supernet's output for weights that are
    zero on the other ops."""
    state, forward, _ = supernet
    sub_space = NB201Space(channels=2, cells_per_stage=1, input_shape=(8, 8, 1),
                           num_classes=3, ops=("none", "skip_connect", "nor_conv_3x3"))
    graphdef, sub_state = nnx.split(nnx.eval_shape(lambda: NB201Network(sub_space, None,
                                                                        rngs=ops.ParamKeys(0))))
    sub_state = extract_standalone(state, sub_state)
    cell_ops = {str(p[2]) for p, _ in nnx.to_flat_state(sub_state) if p[:2] == ("layers", 0)}
    assert cell_ops == {f"e{e}_nor_conv_3x3" for e in range(6)}
    w = jax.nn.softmax(jax.random.normal(jax.random.key(3), (6, 3)), -1)
    full_w = jnp.zeros((6, 5)).at[:, jnp.array([0, 1, 3])].set(w)
    sub_logits = nnx.merge(graphdef, sub_state)(X, w, train=False)
    full_logits, _ = forward(state, full_w, X, False)
    np.testing.assert_allclose(sub_logits, full_logits, rtol=1e-5, atol=1e-5)
