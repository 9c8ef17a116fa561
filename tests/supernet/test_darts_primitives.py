"""DARTS spaces with their own op set (``DartsSpace.primitives``): MetaNAS' few-shot ops (no
``none``, conv_3x3, conv_1x5_5x1) and a RobustDARTS-style two-op space. Encoding, strings,
costs against the built network, supernet == standalone, scan == unrolled, derivation,
pruning and the config fields that choose them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nas_jax import ops
from nas_jax.meta import metanas
from nas_jax.spaces.darts import (
    FEWSHOT_PRIMITIVES,
    OPS,
    PRIMITIVES,
    DartsSpace,
    Genotype,
    decision_index,
    num_choices_for,
)
from nas_jax.strategies.derive import derive, num_parameter_free
from nas_jax.strategies.gradient import alpha_shape
from nas_jax.supernet.darts import DartsNetwork, edge_index, edge_weights, extract_standalone
from nas_jax.utils.plots import cell_arrows
from tests.supernet.random_state import fill_random

FAST_COMPILE = {"xla_backend_optimization_level": 0}
FEW = DartsSpace(channels=4, num_cells=3, input_shape=(8, 8, 1), num_classes=5,
                 primitives=FEWSHOT_PRIMITIVES)
S2 = DartsSpace(channels=4, num_cells=3, input_shape=(8, 8, 1), num_classes=5,
                primitives=("skip_connect", "sep_conv_3x3"))
# Every few-shot op in both cells, strided (reduce, inputs 0/1) and not; normal node 3 reads
# node 2 through conv_1x5_5x1 twice (one module in the network, two in num_params).
FEW_GENOTYPE = Genotype(
    normal=[("conv_3x3", 0), ("conv_1x5_5x1", 1), ("skip_connect", 0), ("avg_pool_3x3", 2),
            ("max_pool_3x3", 3), ("sep_conv_3x3", 1), ("conv_1x5_5x1", 4),
            ("conv_1x5_5x1", 4)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("conv_1x5_5x1", 0), ("conv_3x3", 1), ("dil_conv_3x3", 2), ("skip_connect", 1),
            ("max_pool_3x3", 0), ("conv_3x3", 3), ("avg_pool_3x3", 4), ("sep_conv_3x3", 1)],
    reduce_concat=[2, 3, 4, 5])
RNG = np.random.default_rng(3)
X = RNG.normal(size=(4, 8, 8, 1)).astype(np.float32)


def test_encoding_follows_the_op_set():
    assert FEW.op_names == FEWSHOT_PRIMITIVES and len(FEWSHOT_PRIMITIVES) == 7
    assert FEW.num_choices == num_choices_for(7) and FEW.max_choices == 7
    assert FEW.num_choices[:4] == (2, 7, 2, 7)
    assert FEW.alpha_shape == alpha_shape(FEW) == (2, 14, 7)
    assert S2.max_choices == 5 and S2.num_choices[:2] == (2, 2) and S2.alpha_shape == (2, 14, 2)
    assert DartsSpace().alpha_shape == (2, 14, 8) and DartsSpace().primitives == PRIMITIVES
    assert set(FEWSHOT_PRIMITIVES) <= set(OPS) and "none" not in FEWSHOT_PRIMITIVES
    assert FEW != DartsSpace(channels=4, num_cells=3, input_shape=(8, 8, 1), num_classes=5)
    assert hash(FEW) == hash(DartsSpace(channels=4, num_cells=3, input_shape=(8, 8, 1),
                                        num_classes=5, primitives=list(FEWSHOT_PRIMITIVES)))
    arch = FEW.from_genotype(FEW_GENOTYPE)
    assert FEW.to_genotype(arch) == FEW_GENOTYPE
    assert np.array_equal(FEW.from_string(FEW.to_string(arch)), arch)
    assert arch[decision_index(0, 0, 0, 1)] == FEWSHOT_PRIMITIVES.index("conv_3x3")
    archs = jax.vmap(FEW.sample)(jax.random.split(jax.random.key(0), 64))
    assert bool(jnp.all(jax.vmap(FEW.is_valid)(archs)))
    assert int(jnp.max(archs[:, 1::2])) == 6  # op indices reach the 7th op, never beyond


def test_op_set_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"unknown op\(s\) 'sep_conv_9x9'; ops are none, "):
        DartsSpace(primitives=("skip_connect", "sep_conv_9x9"))
    with pytest.raises(ValueError, match="repeats an op"):
        DartsSpace(primitives=("skip_connect", "skip_connect"))
    with pytest.raises(ValueError, match="at least one op other than 'none'"):
        DartsSpace(primitives=("none",))
    with pytest.raises(ValueError, match="num_choices is derived"):
        DartsSpace(primitives=FEWSHOT_PRIMITIVES, num_choices=num_choices_for(8))
    with pytest.raises(ValueError, match="unknown op 'none'; this space's ops are max_pool"):
        FEW.from_genotype(FEW_GENOTYPE._replace(
            normal=[("none", 0)] + FEW_GENOTYPE.normal[1:]))


def test_fac_conv_is_a_separable_5x5_convolution():
    """Stride 1: ReLU, 1x5 then 5x1 equals one 5x5 convolution whose kernel is the product of
    the two (zero padding composes); stride 2 halves with ceil like every strided op."""
    block = ops.FacConv(3, 4, 5, affine=False, rngs=ops.ParamKeys(0))
    x = RNG.normal(size=(2, 7, 6, 3)).astype(np.float32)
    row, col = np.asarray(block.row[...]), np.asarray(block.col[...])
    kernel = np.einsum("jab,ibc->ijac", row[0], col[:, 0])  # [5, 5, 3, 4]
    ref = jax.lax.conv_general_dilated(np.maximum(x, 0), kernel, (1, 1), ((2, 2), (2, 2)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    mean, var = ref.mean((0, 1, 2)), ref.var((0, 1, 2))
    np.testing.assert_allclose(block(x, True), (ref - mean) / np.sqrt(var + ops.BN_EPS),
                               rtol=1e-4, atol=1e-4)
    strided = ops.FacConv(3, 3, 5, stride=2, rngs=ops.ParamKeys(0))
    assert strided(x, True).shape == (2, 4, 3, 3)


@functools.cache
def _abstract(space, arch=None, edge_execution="unrolled"):
    model = nnx.eval_shape(lambda: DartsNetwork(space, arch, depthwise_impl="xla",
                                                edge_execution=edge_execution,
                                                rngs=ops.ParamKeys(0)))
    return nnx.split(model)


def _random_state(space, arch=None, seed=0):
    graphdef, state = _abstract(space, arch)
    return graphdef, fill_random(state, seed)


def _params(state):
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(state, nnx.Param)))


def test_parameter_counts_match_the_networks():
    arch = tuple(int(a) for a in FEW.from_genotype(FEW_GENOTYPE))
    # The normal cell (cell 0, C=4) holds node 3's doubled conv_1x5_5x1 once.
    assert _params(_abstract(FEW, arch)[1]) == FEW.num_params(arch) - (10 * 16 + 8)
    s2_arch = tuple(int(a) for a in S2.sample(jax.random.key(1)))
    assert _params(_abstract(S2, s2_arch)[1]) <= S2.num_params(s2_arch)
    # The supernet holds every op on every edge; no `none` module anywhere.
    _, state = _abstract(FEW)
    names = {str(p[2]) for p, _ in nnx.to_flat_state(state) if p[0] == "cells"}
    assert {f"e0_{op}" for op in ("conv_3x3", "conv_1x5_5x1", "sep_conv_3x3")} <= names
    assert not any("none" in n for n in names)


@pytest.fixture(scope="module")
def few_supernet_call():
    graphdef, state = _random_state(FEW)

    def call(w):
        model = nnx.merge(graphdef, state, copy=True)
        return model(X, edge_weights=w, train=True), nnx.state(model, nnx.BatchStat)

    return state, jax.jit(jax.vmap(call), compiler_options=FAST_COMPILE)


def test_one_hot_supernet_equals_standalone(few_supernet_call):
    state, call = few_supernet_call
    archs = [FEW.from_genotype(FEW_GENOTYPE), np.asarray(FEW.sample(jax.random.key(5)))]
    w = jnp.stack([edge_weights(FEW, FEW.one_hot(jnp.asarray(a))) for a in archs])
    assert w.shape == (2, 2, 14, 7)
    logits, _ = call(w)
    for i, arch in enumerate(archs):
        graphdef, sa_state = _random_state(FEW, tuple(int(a) for a in arch), seed=1)
        sa_state = extract_standalone(state, sa_state)
        model = nnx.merge(graphdef, sa_state)
        np.testing.assert_allclose(logits[i], model(X, train=True), rtol=1e-4, atol=1e-4)


def test_scanned_edges_equal_unrolled_edges(few_supernet_call):
    state, call = few_supernet_call
    w = jax.nn.softmax(jnp.asarray(RNG.normal(size=(1, 2, 14, 7)), jnp.float32), -1)
    logits, _ = call(w)
    graphdef, _ = _abstract(FEW, None, "scan")

    def scanned(state, w):
        return nnx.merge(graphdef, state, copy=True)(X, edge_weights=w, train=True)

    out = jax.jit(scanned, compiler_options=FAST_COMPILE)(state, w[0])
    np.testing.assert_allclose(out, logits[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"expected \(2, 14, 7\)"):
        scanned(state, jnp.zeros((2, 14, 8)))


def test_derivation_pruning_and_diagrams_without_none():
    alpha = np.zeros((2, 14, 7), np.float32)
    conv = FEWSHOT_PRIMITIVES.index("conv_3x3")
    for node in range(4):  # each node: strongest edges from inputs 0 and 1, conv_3x3
        alpha[:, edge_index(node, 0), conv] = 3.0
        alpha[:, edge_index(node, 1), 0] = 2.0  # max_pool_3x3: op 0 is a real op here
    arch = derive(FEW, alpha)
    genotype = FEW.to_genotype(arch)
    assert genotype.normal[0] == ("conv_3x3", 0) and genotype.normal[1] == ("max_pool_3x3", 1)
    assert num_parameter_free(FEW, arch) == 8  # the 8 max pools
    # Pruning: op 0 counts as a real op when the space has no `none`.
    w = np.asarray(metanas.prune(jnp.asarray(alpha), 0.1, 0.5, none_index=None))
    assert w[0, edge_index(0, 1), 0] == 1.0 and w[0, edge_index(0, 0), conv] == 1.0
    w_darts = np.asarray(metanas.prune(jnp.asarray(alpha), 0.1, 0.5))  # op 0 taken as none
    assert w_darts[0, edge_index(0, 1), 0] == 0.0
    arrows = cell_arrows(np.asarray(edge_weights(FEW, FEW.one_hot(jnp.asarray(arch))))[0],
                         FEW.primitives)
    assert ("max_pool_3x3" in {a[2] for a in arrows}) and len(arrows) == 8


@pytest.mark.slow
def test_metanas_learner_on_the_few_shot_ops():
    """MetaNAS' learner adapts alpha on the few-shot op set (its jitted adaptation compiles
    a MetaNAS supernet: ~30 s on 2 cores, hence slow; the op set's modules, counts and
    standalone equality are tested above without it)."""
    space = DartsSpace(channels=2, num_cells=1, input_shape=(8, 8, 1), num_classes=3,
                       primitives=FEWSHOT_PRIMITIVES)
    learner, state = metanas.make_learner(jax.random.key(0), "metanas", space=space,
                                          inner_steps=1,
                                          network_options={"depthwise_impl": "xla"})
    assert state.alpha.shape == (2, 14, 7)
    x = jnp.asarray(RNG.normal(size=(6, 8, 8, 1)), jnp.float32)
    y = jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32)
    p, a, _, losses = jax.jit(functools.partial(metanas.adapt, learner))(
        jax.random.key(1), state.params, state.rest, state.alpha, x, y, 1.0)
    assert a.shape == (2, 14, 7) and not np.allclose(a, state.alpha)
    assert np.isfinite(np.asarray(losses)).all()
    random_cell, _ = metanas.make_learner(jax.random.key(0), "random_cell", space=space)
    assert all(0 <= op < 7 for op in random_cell.arch[1::2])


def test_config_fields_choose_the_op_set():
    from nas_jax.config import ConfigError, search_config, validate
    from nas_jax.meta.metanas_train import metanas_config, validate_metanas

    c = metanas_config()
    c.learner.primitives = FEWSHOT_PRIMITIVES
    validate_metanas(c)
    c.learner.primitives = ("skip_connect", "conv_9x9")
    with pytest.raises(ConfigError,
                       match=r"config.learner.primitives=.*unknown op\(s\) 'conv_9x9'"):
        validate_metanas(c)
    c = search_config()
    c.space.name = "darts"
    c.space.darts_ops = ("skip_connect", "sep_conv_3x3")
    assert validate(c).alpha_shape == (2, 14, 2)
    c.space.darts_ops = ("sep_conv_9x9",)
    with pytest.raises(ConfigError, match=r"config.space \(space 'darts'\): DartsSpace.primitives"):
        validate(c)
