"""The composed network (per-unit programs walked from Python) computes the supernet's
function and gradients for one architecture, leaving out only what cannot matter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nas_jax import ops
from nas_jax.evaluators.population import build_network, init_candidate
from nas_jax.spaces.nb201 import OPS, NB201Space
from nas_jax.supernet.composed import (
    OLDER_CPU_EMITTERS,
    ComposedGraph,
    nb201_live_edges,
    nb201_plan,
    nb201_unit_paths,
    path_key,
    pullback,
    sub_state,
    unit_compiler_options,
)
from nas_jax.train.steps import cross_entropy

SPACE = NB201Space(channels=3, cells_per_stage=1, input_shape=(8, 8, 2), num_classes=4)
ARCHS = [
    [3, 2, 4, 3, 1, 3],  # every op kind
    [0, 0, 0, 0, 0, 0],  # all none: the cell outputs zeros
    [0, 3, 0, 2, 0, 4],  # node 1 fed by none: a zero node that a convolution reads
    [3, 3, 3, 0, 0, 0],  # nothing reaches node 3: every edge dead
    [1, 0, 1, 2, 3, 1],  # node 2's only input is node 1, a skip; edge 1->3 a 3x3 conv
]


def test_live_edges_on_crafted_cells():
    # EDGES: (1,0), (2,0), (2,1), (3,0), (3,1), (3,2)
    assert nb201_live_edges(OPS, [3, 2, 4, 3, 1, 3]) == [0, 1, 2, 3, 4, 5]
    assert nb201_live_edges(OPS, [0, 0, 0, 0, 0, 0]) == []
    assert nb201_live_edges(OPS, [3, 3, 3, 0, 0, 0]) == []
    assert nb201_live_edges(OPS, [3, 3, 3, 2, 0, 0]) == [3]
    assert nb201_live_edges(OPS, [3, 0, 0, 0, 2, 0]) == [0, 4]
    assert nb201_live_edges(OPS, [3, 0, 1, 0, 0, 2]) == [0, 2, 5]
    assert nb201_live_edges(OPS, [3, 2, 0, 0, 0, 2]) == [1, 5]  # node 1 feeds nothing live


@pytest.fixture(scope="module")
def supernet():
    """The supernet's weights, data, and its loss and gradients as one jitted program of the
    one-hot weights (compiled once for every architecture below; run eagerly, the first
    architecture alone took ~25 s on 2 cores)."""
    with jax.threefry_partitionable(False):
        params, stats, _ = init_candidate(SPACE, None, jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (6, 8, 8, 2))
    y = jnp.arange(6) % 4
    network = nnx.eval_shape(lambda: build_network(SPACE, None, rngs=ops.ParamKeys(0)))
    graphdef = nnx.split(network, nnx.Param, nnx.BatchStat)[0]

    @jax.jit
    def value_and_grad(params, stats, weights):
        def loss_fn(p):
            model = nnx.merge(graphdef, p, stats, copy=True)
            return (cross_entropy(model(x, weights, train=True), y),
                    nnx.state(model, nnx.BatchStat))

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    return params, stats, x, y, network, graphdef, value_and_grad


@pytest.mark.parametrize("arch", ARCHS)
def test_composed_step_equals_the_supernet(supernet, arch):
    """Loss, every parameter gradient and the updated batch statistics of one training
    forward + backward equal the mixture supernet's with one-hot weights (same XLA
    convolutions, so to float rounding). The units compile with XLA:CPU's older fusion
    emitters, as the executors' do (the supernet with XLA's defaults outside the suite's
    settings: ``NAS_JAX_TEST_XLA_OPT=1``)."""
    params, stats, x, y, network, graphdef, value_and_grad = supernet
    weights = SPACE.one_hot(jnp.asarray(arch))
    (want_loss, want_stats), want_grads = value_and_grad(params, stats, weights)

    graph = ComposedGraph(network, "older")
    paths = nb201_unit_paths(network)
    p, s = graph.split_weights(paths, params, stats)
    plan = nb201_plan(network, np.asarray(arch))
    logits, new_s, tape = graph.forward(plan, p, s, x, train=True)
    loss, loss_vjp = jax.vjp(lambda z: cross_entropy(z, y), logits)
    grads = graph.backward(tape, pullback(loss_vjp, jnp.ones(()))[0])
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for path in paths:
        want_g = tuple(jax.tree.leaves(sub_state(want_grads, path)))
        got_g = grads.get(path_key(path))
        if got_g is None:  # not in the plan, or no gradient reaches it: zero in the supernet
            for w in want_g:
                np.testing.assert_allclose(w, 0.0, atol=1e-6, err_msg=path_key(path))
        else:
            for g, w in zip(got_g, want_g, strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=path_key(path))
        # Statistics: equal wherever the module's output can reach the loss (a dead edge's
        # statistics are left alone; they change nothing the network computes).
        if path_key(path) in {path_key(q) for q in graph.paths(plan)}:
            for g, w in zip(new_s[path_key(path)], jax.tree.leaves(sub_state(want_stats, path)),
                            strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=path_key(path))
    # Evaluation mode: the supernet's logits with running statistics.
    model = nnx.merge(graphdef, params, stats, copy=True)
    np.testing.assert_allclose(graph.forward(plan, p, s, x, train=False),
                               model(x, weights, train=False), rtol=1e-4, atol=1e-5)


def test_units_share_programs_across_edges_and_cells():
    space = NB201Space(channels=2, cells_per_stage=2, input_shape=(8, 8, 1), num_classes=3)
    network = nnx.eval_shape(lambda: build_network(space, None, rngs=ops.ParamKeys(0)))
    graph = ComposedGraph(network)
    plan = nb201_plan(network, np.array([3, 3, 3, 3, 3, 3]))
    units = [n.unit for n in plan if not isinstance(n.unit, str)]
    conv_units = [u for u in units if "nor_conv_3x3" in path_key(u.paths[0])]
    assert len(conv_units) == 6 * 6  # 6 cells x 6 edges
    assert len({id(graph.programs(u)) for u in conv_units}) == 1


def test_unit_emitters_are_named():
    assert unit_compiler_options("default") is None
    want = OLDER_CPU_EMITTERS if jax.default_backend() == "cpu" else None
    assert unit_compiler_options("older") == want
    with pytest.raises(ValueError, match="emitters='new'; allowed: older, default"):
        ComposedGraph(nnx.eval_shape(lambda: build_network(SPACE, None, rngs=ops.ParamKeys(0))),
                      "new")
