"""DartsNetwork: edge weights, parameter counts, and the supernet with one-hot weights
computes the standalone network (outputs and BN statistics); gradients; vmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nas_jax import ops
from nas_jax.evaluators import population
from nas_jax.spaces.darts import (
    DARTS_V2,
    OP_POSITIONS,
    PRIMITIVES,
    DartsSpace,
    Genotype,
    decision_index,
)
from nas_jax.supernet.darts import (
    ALPHA_SHAPE,
    EDGES,
    DartsNetwork,
    edge_index,
    edge_weights,
    extract_standalone,
)
from tests.supernet.random_state import fill_random

SPACE = DartsSpace(channels=4, num_cells=3, input_shape=(8, 8, 3), num_classes=5)
V2 = SPACE.from_string(DARTS_V2)
# Every op in both cells, strided and not; a `none`; node 3 of the normal cell reads input 4
# through sep_conv_5x5 twice (one shared module, counted twice); reduce node 3 is all `none`.
MIXED = SPACE.from_genotype(Genotype(
    normal=[("sep_conv_3x3", 0), ("dil_conv_5x5", 1), ("skip_connect", 0), ("avg_pool_3x3", 2),
            ("max_pool_3x3", 3), ("none", 1), ("sep_conv_5x5", 4), ("sep_conv_5x5", 4)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("skip_connect", 0), ("sep_conv_5x5", 1), ("dil_conv_3x3", 2), ("avg_pool_3x3", 1),
            ("max_pool_3x3", 0), ("dil_conv_5x5", 3), ("none", 4), ("none", 1)],
    reduce_concat=[2, 3, 4, 5]))
RNG = np.random.default_rng(11)  # numpy inputs: each eager JAX op would compile a program
RANDOM = RNG.integers(0, SPACE.num_choices).astype(np.int32)
ALL_NONE = np.zeros(32, np.int32)  # input 0, op `none` everywhere
ARCHS = {"v2": V2, "mixed": MIXED, "random": RANDOM, "all_none": ALL_NONE}
X = RNG.normal(size=(4, 8, 8, 3)).astype(np.float32)
# Numerics, not speed, are tested here: skipping XLA's backend optimisations halves compiles.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.cache
def abstract(arch=None, space=SPACE, affine=True, pool_bn=False, depthwise_impl="xla",
             edge_execution="unrolled"):
    """(graphdef, abstract state) of a network; ``arch`` a tuple or None.

    Network-level tests use XLA's grouped convolution for the depthwise convs: it compiles
    about 2x faster here than the CPU default (``slices``), whose numbers are pinned to it by
    ``test_depthwise_slices_equal_xla_grouped_conv``.
    """
    model = nnx.eval_shape(lambda: DartsNetwork(space, arch, affine=affine, pool_bn=pool_bn,
                                                depthwise_impl=depthwise_impl,
                                                edge_execution=edge_execution,
                                                rngs=ops.ParamKeys(0)))
    return nnx.split(model)


def random_state(arch=None, seed=0, **flags):
    """Random weights, BN affine and running statistics, filled with numpy (no init compile)."""
    graphdef, state = abstract(None if arch is None else tuple(int(a) for a in arch), **flags)
    return graphdef, fill_random(state, seed)


def soft_decision_weights(rng):
    """``float32[32, 8]``: a softmax over each decision's valid choices."""
    logits = np.where(np.asarray(SPACE.choice_mask()), rng.normal(size=(32, 8)), -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)).astype(np.float32)


def param_count(state):
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(state, nnx.Param)))


def flat_paths(state):
    return {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(state)}


# ------------------------------------------------------------------- edge weights
def test_edge_layout():
    assert ALPHA_SHAPE == (2, 14, 8) and len(EDGES) == 14
    assert [edge_index(n, s) for n, s in EDGES] == list(range(14))
    assert (edge_index(0, 0), edge_index(0, 1), edge_index(1, 0), edge_index(2, 0),
            edge_index(3, 0), edge_index(3, 4)) == (0, 1, 2, 5, 9, 13)
    with pytest.raises(ValueError, match="node 1 takes inputs 0..2"):
        edge_index(1, 3)
    with pytest.raises(ValueError, match="node 4 out of range"):
        edge_index(4, 0)


def test_edge_weights_of_darts_v2_is_its_indicator():
    sep3, skip, dil3, maxp = 4, 3, 6, 1
    expected = np.zeros(ALPHA_SHAPE, np.float32)
    for e, o in [(0, sep3), (1, sep3), (2, sep3), (3, sep3), (6, sep3), (5, skip), (9, skip),
                 (11, dil3)]:
        expected[0, e, o] = 1.0
    for e, o in [(0, maxp), (1, maxp), (4, skip), (3, maxp), (5, maxp), (7, skip), (11, skip),
                 (10, maxp)]:
        expected[1, e, o] = 1.0
    got = jax.jit(edge_weights, static_argnums=0)(SPACE, SPACE.one_hot(jnp.asarray(V2)))
    np.testing.assert_array_equal(got, expected)
    # A node whose two slots pick the same (input, op) weighs that op 2.
    dup = edge_weights(SPACE, SPACE.one_hot(jnp.asarray(MIXED)))
    assert dup[0, edge_index(3, 4), PRIMITIVES.index("sep_conv_5x5")] == 2.0
    assert dup.sum() == 16.0  # one unit per slot (2 cells x 4 nodes x 2), `none` included


def test_soft_edge_weights_put_mass_two_on_each_node():
    w = soft_decision_weights(np.random.default_rng(2))
    padded = np.where(np.asarray(SPACE.choice_mask()), w, 7.0)  # past a node's inputs: unused
    ew = jax.jit(jax.vmap(functools.partial(edge_weights, SPACE)))(np.stack([w, padded]))
    np.testing.assert_array_equal(ew[0], ew[1])
    for node in range(4):
        first = edge_index(node, 0)
        np.testing.assert_allclose(ew[0, :, first : first + node + 2].sum(axis=(1, 2)), 2.0,
                                   rtol=1e-6)
    with pytest.raises(ValueError, match=r"expected \(32, 8\)"):
        edge_weights(SPACE, jnp.zeros((32, 5)))


# ------------------------------------------------------------------- DARTS ops
DEPTHWISE_CASES = [(3, 2, 1), (5, 1, 2)]  # (kernel, stride, dilation)


@functools.partial(jax.jit, compiler_options=FAST_COMPILE)
def depthwise_both_ways(x, kernels, cotangent_key):
    """Per case and impl: the output and the gradients of a random projection of it."""
    results = []
    for (kernel, stride, dilation), k in zip(DEPTHWISE_CASES, kernels):
        pad = dilation * (kernel - 1) // 2
        per_impl = []
        for impl in ("xla", "slices"):
            def f(x, k, impl=impl, stride=stride, dilation=dilation, pad=pad):
                return ops.depthwise_conv2d(x, k, stride=stride, dilation=dilation, pad=pad,
                                            impl=impl)
            out = f(x, k)
            r = jax.random.normal(cotangent_key, out.shape)  # traced: compiled in
            grads = jax.grad(lambda x, k, f=f, r=r: jnp.sum(f(x, k) * r), argnums=(0, 1))(x, k)
            per_impl.append((out, *grads))
        results.append(per_impl)
    return results


def test_depthwise_slices_equal_xla_grouped_conv():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 7, 3)).astype(np.float32)  # odd size: strided -> ceil(7 / 2)
    kernels = [rng.normal(size=(k, k, 1, 3)).astype(np.float32) for k, _, _ in DEPTHWISE_CASES]
    for (_, stride, _), (ref, got) in zip(DEPTHWISE_CASES,
                                          depthwise_both_ways(x, kernels, jax.random.key(9))):
        size = 7 if stride == 1 else 4
        assert got[0].shape == ref[0].shape == (2, size, size, 3)
        for a, b in zip(got, ref):  # output, d/dx, d/dkernel
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="depthwise impl='fft'"):
        ops.depthwise_conv2d(x, kernels[0], impl="fft")


def test_max_pool_pads_with_minus_infinity():
    x = -1.0 - jnp.arange(16.0).reshape(1, 4, 4, 1)  # all negative: zero padding would win
    out = ops.max_pool_3x3(x)
    np.testing.assert_array_equal(out[0, :, :, 0], [[-1, -1, -2, -3], [-1, -1, -2, -3],
                                                    [-5, -5, -6, -7], [-9, -9, -10, -11]])
    assert ops.max_pool_3x3(jnp.zeros((1, 7, 7, 2)), stride=2).shape == (1, 4, 4, 2)


def test_factorized_reduce_halves_with_a_shifted_second_half():
    graphdef, state = nnx.split(nnx.eval_shape(lambda: ops.FactorizedReduce(3, 4,
                                                                            rngs=ops.ParamKeys(0))))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), state)
    # Eval-mode BN with var 1: (x - mean) / sqrt(1 + eps) * scale + bias.
    state["bn"]["var"][...] = jnp.asarray(np.ones(4, np.float32))

    @jax.jit
    def apply(x):
        return nnx.merge(graphdef, state)(x, train=False)

    x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    bn = {k: np.asarray(v[...]) for k, v in state["bn"].items()}
    out = (np.asarray(apply(x)) - bn["bias"]) / bn["scale"] * np.sqrt(1 + ops.BN_EPS)
    relu = np.maximum(x, 0.0)
    halves = [relu[:, ::2, ::2] @ np.asarray(state["conv_a"]["kernel"][...])[0, 0],
              relu[:, 1::2, 1::2] @ np.asarray(state["conv_b"]["kernel"][...])[0, 0]]
    np.testing.assert_allclose(out, np.concatenate(halves, -1) - bn["mean"], rtol=1e-4,
                               atol=1e-5)
    assert apply(np.ones((2, 7, 7, 3), np.float32)).shape == (2, 4, 4, 4)  # ceil(7 / 2)
    with pytest.raises(ValueError, match="even c_out"):
        ops.FactorizedReduce(3, 5, rngs=ops.ParamKeys(0))


# -------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("space", [SPACE, DartsSpace(channels=4, num_cells=5,
                                                     input_shape=(8, 8, 3), num_classes=5)])
@pytest.mark.parametrize("name", ["v2", "random", "all_none"])
def test_standalone_parameter_count_is_num_params(space, name):
    arch = tuple(int(a) for a in ARCHS[name])
    assert param_count(abstract(arch, space)[1]) == space.num_params(arch)


def test_shared_duplicate_op_and_supernet_counts():
    # MIXED's normal node 3 holds its sep_conv_5x5 once; DARTS' model.py (num_params) twice.
    # The normal cell is only cell 0 (C=4, no stride): sep_conv_5x5 = 2 * (4*25 + 16 + 8).
    arch = tuple(int(a) for a in MIXED)
    assert param_count(abstract(arch)[1]) == SPACE.num_params(arch) - 2 * (4 * 25 + 16 + 8)
    # The supernet holds one copy of every op on every edge of every cell: the cost of each
    # (edge, op) is num_params of that single op minus the op-free network.
    base = SPACE.num_params(ALL_NONE)
    total = base
    for cell in range(2):
        for node, src in EDGES:
            for op in range(1, 8):
                single = ALL_NONE.copy()
                single[decision_index(cell, node, 0, 0)] = src
                single[decision_index(cell, node, 0, 1)] = op
                total += SPACE.num_params(single) - base
    assert param_count(abstract()[1]) == total


def test_search_form_drops_only_cell_bn_affine():
    one_cell = DartsSpace(channels=4, num_cells=1, input_shape=(8, 8, 3), num_classes=5)
    full = flat_paths(nnx.state(abstract(space=one_cell)[1], nnx.Param))
    search = abstract(space=one_cell, affine=False, pool_bn=True)[1]
    free = flat_paths(nnx.state(search, nnx.Param))
    dropped = full - free
    assert free < full and all(p.startswith("cells/") for p in dropped)
    assert all(p.endswith(("/bn/scale", "/bn/bias")) for p in dropped)
    stats = flat_paths(nnx.state(search, nnx.BatchStat))
    assert "cells/0/e0_max_pool_3x3/mean" in stats and "cells/0/e0_avg_pool_3x3/var" in stats


# ------------------------------------------------------ supernet == standalone
# One reduction cell only (num_cells=1): a fraction of the compile time of SPACE's supernet.
ONE_CELL = DartsSpace(channels=4, num_cells=1, input_shape=(8, 8, 3), num_classes=5)
SEARCH_FORM = {"affine": False, "pool_bn": True}  # DARTS' search-time supernet


def _forward(graphdef, state, w_edge, x, train):
    model = nnx.merge(graphdef, state, copy=True)
    return model(x, edge_weights=w_edge, train=train), nnx.state(model, nnx.BatchStat)


def standalone(super_state, arch, x, train, space=SPACE, **flags):
    """Logits and BN statistics of the standalone network with the supernet's weights."""
    graphdef, state = random_state(arch, seed=1, space=space, **flags)
    state = extract_standalone(super_state, state)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(state, x):
        model = nnx.merge(graphdef, state, copy=True)
        return model(x, train=train), nnx.state(model, nnx.BatchStat)

    return *run(state, x), state


def one_hot_edges(arch):
    return edge_weights(SPACE, SPACE.one_hot(jnp.asarray(arch)))


def assert_same_stats(stats, ref_stats):
    flat = dict(nnx.to_flat_state(stats))
    ref = list(nnx.to_flat_state(ref_stats))
    assert ref
    for path, value in ref:
        np.testing.assert_allclose(flat[path][...], value[...], rtol=1e-5, atol=1e-6)


def expected_modules(arch, cell):
    """Parameterised op modules of cell type ``cell`` (0 normal, 1 reduce)."""
    names = set()
    for node in range(4):
        for slot in range(2):
            src = int(arch[decision_index(cell, node, slot, 0)])
            op = PRIMITIVES[int(arch[decision_index(cell, node, slot, 1)])]
            if "conv" in op or (op == "skip_connect" and cell == 1 and src < 2):
                names.add(f"e{edge_index(node, src)}_{op}")
    return names


@pytest.fixture(scope="module")
def vmapped_train_call():
    """The 3-cell supernet in train mode, vmapped over per-decision weights: the one-hot
    architectures, a soft mixture, and the same mixture with extra weight on `none`."""
    graphdef, state = random_state()
    return (state, *_vmapped_train_call(graphdef, state))


def _vmapped_train_call(graphdef, state):
    """Logits and BN statistics of the network ``graphdef`` in train mode from ``state``,
    vmapped over the one-hot architectures, a soft mixture and that mixture with extra
    weight on `none`."""

    def call(w):
        model = nnx.merge(graphdef, state, copy=True)
        return model(X, w, train=True), nnx.state(model, nnx.BatchStat)

    soft = soft_decision_weights(np.random.default_rng(4))
    more_none = soft.copy()
    more_none[np.asarray(OP_POSITIONS), 0] += 5.0
    w = jnp.stack([SPACE.one_hot(jnp.asarray(a)) for a in ARCHS.values()] + [soft, more_none])
    return jax.jit(jax.vmap(call), compiler_options=FAST_COMPILE)(w)


@pytest.mark.parametrize("index", range(len(ARCHS)))
def test_one_hot_supernet_under_vmap_equals_standalone_in_train_mode(vmapped_train_call, index):
    state, logits, stats = vmapped_train_call
    assert logits.shape == (len(ARCHS) + 2, 4, 5)
    arch = list(ARCHS.values())[index]
    ref_logits, ref_stats, sa_state = standalone(state, arch, X, True)
    np.testing.assert_allclose(logits[index], ref_logits, rtol=1e-5, atol=1e-5)
    assert_same_stats(jax.tree.map(lambda a: a[index], stats), ref_stats)
    before = dict(nnx.to_flat_state(state))  # extracting copied: the supernet's are untouched
    assert any(not np.allclose(before[p][...], v[...]) for p, v in nnx.to_flat_state(ref_stats))
    # The standalone holds exactly the chosen parameterised ops (cells 1, 2 are reduce cells).
    paths = flat_paths(sa_state)
    for i, cell in enumerate((0, 1, 1)):
        ops_here = {p.split("/")[2] for p in paths if p.startswith(f"cells/{i}/e")}
        assert ops_here == expected_modules(arch, cell)


def test_none_contributes_nothing(vmapped_train_call):
    state, logits, _ = vmapped_train_call
    # `none` everywhere: every cell outputs zeros, so the logits are the classifier bias.
    bias = np.broadcast_to(state["classifier"]["bias"][...], (4, 5))
    np.testing.assert_allclose(logits[list(ARCHS).index("all_none")], bias, atol=1e-6)
    # Weight moved onto `none` in a soft mixture changes nothing.
    np.testing.assert_array_equal(logits[-2], logits[-1])
    assert not np.allclose(logits[-2], bias, atol=1e-3)


def test_one_hot_supernet_equals_standalone_in_eval_mode():
    graphdef, state = random_state(space=ONE_CELL)

    def call(w):
        model = nnx.merge(graphdef, state, copy=True)
        return model(X, w, train=False), nnx.state(model, nnx.BatchStat)

    names = ["v2", "random", "all_none"]
    w = jnp.stack([SPACE.one_hot(jnp.asarray(ARCHS[n])) for n in names])
    logits, stats = jax.jit(jax.vmap(call), compiler_options=FAST_COMPILE)(w)
    for i, name in enumerate(names):
        ref_logits, ref_stats, _ = standalone(state, ARCHS[name], X, False, space=ONE_CELL)
        np.testing.assert_allclose(logits[i], ref_logits, rtol=1e-5, atol=1e-5)
        assert_same_stats(jax.tree.map(lambda a, i=i: a[i], stats), ref_stats)
        assert_same_stats(nnx.state(state, nnx.BatchStat), ref_stats)  # eval: nothing moves


@pytest.fixture(scope="module")
def search_form_f64():
    """The one-cell search-form supernet in float64 and its jitted train-mode forward."""
    graphdef, state = random_state(space=ONE_CELL, **SEARCH_FORM)
    with jax.enable_x64(True):
        state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state)
    forward = jax.jit(functools.partial(_forward, graphdef, train=True),
                      compiler_options=FAST_COMPILE)
    return graphdef, state, forward


def test_search_form_supernet_equals_standalone(search_form_f64):
    _, state, forward = search_form_f64
    sa_graphdef, sa_state = random_state(MIXED, seed=1, space=ONE_CELL, **SEARCH_FORM)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run_standalone(sa_state, x):  # jitted: eager float64 ops would each compile
        model = nnx.merge(sa_graphdef, sa_state, copy=True)
        return model(x, train=True), nnx.state(model, nnx.BatchStat)

    with jax.enable_x64(True):
        x = np.asarray(X, np.float64)
        logits, stats = forward(state, np.asarray(one_hot_edges(MIXED), np.float64), x)
        ref_logits, ref_stats = run_standalone(extract_standalone(state, sa_state), x)
    assert logits.dtype == np.float64
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-10, atol=1e-10)
    assert_same_stats(stats, ref_stats)
    assert "cells/0/e1_max_pool_3x3/mean" in flat_paths(nnx.state(state, nnx.BatchStat))
    with pytest.raises(ValueError, match="same space, affine and pool_bn"):
        extract_standalone(random_state(space=ONE_CELL)[1],
                           random_state(MIXED, space=ONE_CELL, **SEARCH_FORM)[1])


def test_gradient_wrt_edge_weights_matches_finite_differences(search_form_f64):
    graphdef, state, forward = search_form_f64
    rng = np.random.default_rng(3)  # numpy inputs: no eager float64 programs to compile
    r = rng.normal(size=(4, 5))
    alpha = rng.normal(size=ALPHA_SHAPE)
    w = np.exp(alpha) / np.exp(alpha).sum(-1, keepdims=True)  # softmax(alpha), as in DARTS
    with jax.enable_x64(True):  # float64, so finite differences are accurate
        x = jnp.asarray(X, jnp.float64)

        def loss(w):  # train mode: the DARTS setting, BN batch statistics
            return float(np.sum(np.asarray(forward(state, w, x)[0]) * r))

        def traced_loss(w):
            return jnp.sum(_forward(graphdef, state, w, x, True)[0] * r)

        grad = np.asarray(jax.jit(jax.grad(traced_loss), compiler_options=FAST_COMPILE)(w))
        assert grad.dtype == np.float64
        np.testing.assert_array_equal(grad[0], 0.0)  # no normal cell in a one-cell network
        np.testing.assert_array_equal(grad[:, :, 0], 0.0)  # `none` is never computed
        assert np.abs(grad[1, :, 1:]).min() > 0
        eps = 1e-5
        # Strided ops on cell inputs (sep, max pool, FactorizedReduce skip, avg pool, dil) and
        # stride-1 ops on intermediate nodes (skip, dil, sep).
        for e, o in [(0, 4), (1, 1), (3, 3), (9, 2), (10, 7), (4, 3), (13, 6), (7, 5)]:
            d = np.zeros(ALPHA_SHAPE)
            d[1, e, o] = eps
            fd = (loss(w + d) - loss(w - d)) / (2 * eps)
            np.testing.assert_allclose(fd, grad[1, e, o], rtol=1e-5,
                                       atol=1e-7 * np.abs(grad).max())
        v = rng.normal(size=ALPHA_SHAPE)
        v /= np.linalg.norm(v)  # a unit step: a long one may cross a ReLU / max kink
        fd_v = (loss(w + eps * v) - loss(w - eps * v)) / (2 * eps)
        np.testing.assert_allclose(fd_v, np.sum(grad * v), rtol=1e-5)


def test_scanned_edges_equal_unrolled_edges(vmapped_train_call):
    """``edge_execution="scan"`` runs the same network: the same state layout, and from the
    same state the same train-mode logits and BN statistics as the unrolled cell (a normal
    cell, a reduction cell, and one after a reduction), for one-hot and soft weights."""
    state, logits, stats = vmapped_train_call
    graphdef, scanned_state = abstract(edge_execution="scan")
    assert jax.tree.structure(scanned_state) == jax.tree.structure(state)
    s_logits, s_stats = _vmapped_train_call(graphdef, state)
    np.testing.assert_allclose(s_logits, logits, rtol=1e-5, atol=1e-5)
    assert_same_stats(s_stats, stats)
    with pytest.raises(ValueError, match="edge_execution='scan' is for the supernet"):
        DartsNetwork(SPACE, V2, edge_execution="scan", rngs=ops.ParamKeys(0))
    with pytest.raises(ValueError, match="edge_execution='vmap'; allowed: unrolled, scan"):
        DartsNetwork(SPACE, None, edge_execution="vmap", rngs=ops.ParamKeys(0))


def test_scanned_edges_gradients_match_finite_differences(search_form_f64):
    """The scanned search-form cell in float64: eval-mode logits equal the unrolled cell's,
    and its gradients with respect to the edge weights and to the weights match central
    differences of the unrolled cell's loss (train mode, batch statistics)."""
    _, state, forward = search_form_f64
    scanned, _ = abstract(space=ONE_CELL, **SEARCH_FORM, edge_execution="scan")
    rng = np.random.default_rng(6)
    r = rng.normal(size=(4, 5))
    alpha = rng.normal(size=ALPHA_SHAPE)
    w = np.exp(alpha) / np.exp(alpha).sum(-1, keepdims=True)
    with jax.enable_x64(True):
        x = np.asarray(X, np.float64)

        def loss(params, w):
            model = nnx.merge(scanned, params, nnx.state(state, nnx.BatchStat), copy=True)
            return jnp.sum(model(x, edge_weights=w, train=True) * r)

        def eval_logits(w):
            return nnx.merge(scanned, state, copy=True)(x, edge_weights=w, train=False)

        params = nnx.state(state, nnx.Param)
        g_params, g_w = jax.jit(jax.grad(loss, (0, 1)), compiler_options=FAST_COMPILE)(params, w)
        unrolled_eval = jax.jit(functools.partial(_forward, search_form_f64[0], train=False),
                                compiler_options=FAST_COMPILE)
        np.testing.assert_allclose(
            jax.jit(eval_logits, compiler_options=FAST_COMPILE)(w),
            unrolled_eval(state, w, x)[0], rtol=1e-10, atol=1e-10)

        def ref_loss(state, w):  # the unrolled cell, compiled by the fixture
            return float(np.sum(np.asarray(forward(state, w, x)[0]) * r))

        eps = 1e-5
        for e, o in [(0, 4), (1, 1), (9, 2), (13, 6)]:
            d = np.zeros(ALPHA_SHAPE)
            d[1, e, o] = eps
            fd = (ref_loss(state, w + d) - ref_loss(state, w - d)) / (2 * eps)
            np.testing.assert_allclose(g_w[1, e, o], fd, rtol=1e-5,
                                       atol=1e-7 * np.abs(g_w).max())
        v = jax.tree.map(lambda a: rng.normal(size=a.shape), params)
        norm = np.sqrt(sum(np.sum(a ** 2) for a in jax.tree.leaves(v)))
        v = jax.tree.map(lambda a: a / norm, v)

        def shifted(sign):
            moved = jax.tree.map(lambda a, b: a + sign * eps * b, params, v)
            return nnx.merge_state(state, moved)

        fd_v = (ref_loss(shifted(1), w) - ref_loss(shifted(-1), w)) / (2 * eps)
        directional = sum(np.sum(np.asarray(a) * b) for a, b in
                          zip(jax.tree.leaves(g_params), jax.tree.leaves(v)))
        np.testing.assert_allclose(directional, fd_v, rtol=1e-5)


# ------------------------------------------------------------- errors, registry
def test_call_errors():
    sup = nnx.merge(*random_state())
    assert sup.is_supernet
    w = SPACE.one_hot(jnp.asarray(V2))
    with pytest.raises(ValueError, match="exactly one of weights"):
        sup(X)
    with pytest.raises(ValueError, match="exactly one of weights"):
        sup(X, w, edge_weights=one_hot_edges(V2))
    with pytest.raises(ValueError, match=r"expected \(2, 14, 8\)"):
        sup(X, edge_weights=jnp.zeros((14, 8)))
    with pytest.raises(ValueError, match=r"expected \(32, 8\)"):
        sup(X, w[:16])
    sa = nnx.merge(*random_state(V2))
    assert not sa.is_supernet
    with pytest.raises(ValueError, match="without weights"):
        sa(X, w)
    with pytest.raises(ValueError, match="decision 1 has value 8"):
        DartsNetwork(SPACE, np.r_[0, 8, np.zeros(30, int)], rngs=ops.ParamKeys(0))
    with pytest.raises(ValueError, match="needs a DartsSpace"):
        DartsNetwork(object(), rngs=ops.ParamKeys(0))


def test_registered_for_population_training():
    assert population.NETWORKS["darts"] == (DartsSpace, DartsNetwork)
    assert population.has_network(SPACE)
    arch = tuple(int(a) for a in V2)
    params, stats, _ = jax.eval_shape(
        functools.partial(population.init_candidate, SPACE, arch), jax.random.key(0))
    assert sum(v.size for v in jax.tree.leaves(params)) == SPACE.num_params(arch)
    assert population.network_graphdef(SPACE, arch) == abstract(arch, depthwise_impl="auto")[0]


def test_depthwise_impl_reaches_every_depthwise_conv():
    auto = "slices" if jax.default_backend() == "cpu" else "xla"
    for impl, expected in (("auto", auto), ("xla", "xla"), ("slices", "slices")):
        model = nnx.eval_shape(lambda impl=impl: DartsNetwork(
            ONE_CELL, MIXED, depthwise_impl=impl, rngs=ops.ParamKeys(0)))
        found = [m.impl for _, m in nnx.iter_graph(model) if isinstance(m, ops.DepthwiseConv)]
        assert len(found) == 4  # MIXED's reduce cell: a sep conv (2) and two dil convs (1)
        assert set(found) == {expected}
    with pytest.raises(ValueError, match="depthwise_impl='fft'"):
        DartsNetwork(ONE_CELL, V2, depthwise_impl="fft", rngs=ops.ParamKeys(0))


def test_conv_impl_is_checked_and_keeps_the_layout():
    """``conv_impl`` changes how the full convolutions compute, not the state layout (the
    numbers: tests/supernet/test_composed_darts.py, whose composed units use ``mixed``)."""
    _, state = abstract()
    mixed = nnx.eval_shape(lambda: DartsNetwork(SPACE, None, depthwise_impl="xla",
                                                conv_impl="mixed", rngs=ops.ParamKeys(0)))
    assert jax.tree.structure(nnx.state(mixed)) == jax.tree.structure(state)
    assert mixed.cells[0].preprocess1.conv.impl == "mixed"
    with pytest.raises(ValueError, match="conv_impl='fft'; allowed: xla, matmul"):
        DartsNetwork(SPACE, None, conv_impl="fft", rngs=ops.ParamKeys(0))
