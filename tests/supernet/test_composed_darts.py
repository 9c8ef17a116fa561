"""The composed DARTS network (per-unit programs walked from Python) computes the supernet's
function, gradients and batch statistics for one architecture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nas_jax import ops
from nas_jax.evaluators.population import build_network, init_candidate
from nas_jax.spaces.darts import PRIMITIVES, DartsSpace, decision_index
from nas_jax.supernet.composed import (
    ComposedGraph,
    darts_plan,
    darts_unit_paths,
    path_key,
    plan_for,
    pullback,
    sub_state,
    unit_paths,
)
from nas_jax.supernet.darts import edge_index, extract_standalone
from nas_jax.train.steps import cross_entropy

SPACE = DartsSpace(channels=4, num_cells=3, input_shape=(8, 8, 3), num_classes=5)


def make_arch(normal, reduce) -> np.ndarray:
    """``int[32]`` from per cell type 4 nodes x 2 slots of ``(input, op name)``."""
    arch = np.zeros(32, np.int32)
    for kind, nodes in enumerate((normal, reduce)):
        for node, slots in enumerate(nodes):
            for slot, (src, name) in enumerate(slots):
                arch[decision_index(kind, node, slot, 0)] = src
                arch[decision_index(kind, node, slot, 1)] = PRIMITIVES.index(name)
    return arch


EVERY_OP = [[(0, "sep_conv_3x3"), (1, "dil_conv_5x5")], [(0, "max_pool_3x3"), (2, "skip_connect")],
            [(1, "avg_pool_3x3"), (3, "sep_conv_5x5")], [(4, "dil_conv_3x3"), (0, "skip_connect")]]
CRAFTED = {
    # every op kind; in the reduction cell strided pools, convolutions and a factorized
    # reduce (skip from a cell input)
    "every_op": make_arch(EVERY_OP, EVERY_OP),
    # a node whose two slots are `none` (zeros, at half resolution in the reduction cell) and
    # read by a later node; a node whose two slots pick the same input and op (doubled)
    "none_and_doubled": make_arch(
        [[(0, "none"), (1, "none")], [(2, "sep_conv_3x3"), (2, "sep_conv_3x3")],
         [(1, "skip_connect"), (1, "skip_connect")], [(3, "max_pool_3x3"), (0, "none")]],
        [[(0, "none"), (1, "none")], [(2, "avg_pool_3x3"), (1, "skip_connect")],
         [(1, "skip_connect"), (1, "skip_connect")], [(0, "dil_conv_3x3"), (0, "dil_conv_3x3")]]),
    # every op `none`: every node is zeros
    "all_none": make_arch([[(0, "none"), (1, "none")]] * 4, [[(0, "none"), (1, "none")]] * 4),
}


class _Reference:
    """A composed graph on a DARTS supernet's weights, checked against the standalone network
    of each architecture (its weights cut out of the supernet's; the standalone network
    equals the supernet for one-hot weights: tests/supernet/test_darts_network.py). The
    standalone step is one jitted program: at these tiny shapes compiling it (~9 s) costs
    less than running it eagerly the first time (~28 s: every primitive compiled alone)."""

    def __init__(self, space, **options):
        with jax.threefry_partitionable(False):
            self.params, self.stats, _ = init_candidate(space, None, jax.random.key(1),
                                                        **options)
        self.space, self.options = space, options
        self.x = jax.random.normal(jax.random.key(2), (6, 8, 8, 3))
        self.y = jnp.arange(6) % 5
        self.network = nnx.eval_shape(lambda: build_network(space, None, rngs=ops.ParamKeys(0),
                                                            **options))
        self.graph = ComposedGraph(self.network)

    def standalone(self, arch):
        """The loss, gradients, new statistics and evaluation logits of ``arch``'s standalone
        network."""
        abstract = nnx.eval_shape(lambda: build_network(self.space, arch, rngs=ops.ParamKeys(0),
                                                        **self.options))
        graphdef, params_t, stats_t = nnx.split(abstract, nnx.Param, nnx.BatchStat)
        params = extract_standalone(self.params, params_t)
        stats = extract_standalone(self.stats, stats_t)

        @jax.jit
        def step(params, stats, x, y):
            def loss_fn(p):
                model = nnx.merge(graphdef, p, stats, copy=True)
                return cross_entropy(model(x, train=True), y), nnx.state(model, nnx.BatchStat)

            (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            logits = nnx.merge(graphdef, params, stats, copy=True)(x, train=False)
            return loss, grads, new_stats, logits

        return step(params, stats, self.x, self.y)

    def check(self, arch):
        """Loss, every parameter gradient, the chosen modules' updated statistics and the
        evaluation logits of the composed network equal the standalone network's (modules
        it does not hold get no gradient); returns the plan."""
        want_loss, want_grads, want_stats, want_logits = self.standalone(arch)
        graph, network = self.graph, self.network
        paths = unit_paths(network)
        assert paths == darts_unit_paths(network)
        p, s = graph.split_weights(paths, self.params, self.stats)
        graph.from_units(paths, p, self.params)  # every leaf belongs to one unit
        plan = plan_for(network, arch)
        logits, new_s, tape = graph.forward(plan, p, s, self.x, train=True)
        loss, loss_vjp = jax.vjp(lambda z: cross_entropy(z, self.y), logits)
        grads = graph.backward(tape, pullback(loss_vjp, jnp.ones(()))[0])
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
        used = {path_key(q) for q in graph.paths(plan)}
        for path in paths:
            key = path_key(path)
            want_g = tuple(jax.tree.leaves(sub_state(want_grads, path)))
            if key not in grads:  # no gradient reaches it (or not in the standalone network)
                for w in want_g:
                    np.testing.assert_allclose(w, 0.0, atol=1e-6, err_msg=key)
                continue
            assert key in used
            for g, w in zip(grads[key], want_g, strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=key)
            for g, w in zip(new_s[key], jax.tree.leaves(sub_state(want_stats, path)),
                            strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(graph.forward(plan, p, s, self.x, train=False), want_logits,
                                   rtol=1e-4, atol=1e-5)
        return plan


@pytest.fixture(scope="module")
def reference():
    return _Reference(SPACE)


def test_composed_darts_step_equals_the_supernet(reference):
    for name in ("every_op", "none_and_doubled"):
        reference.check(CRAFTED[name])
    # all `none`: nothing but the stem, the preprocessing, zeros and the head
    plan = darts_plan(reference.network, CRAFTED["all_none"])
    assert not any("/e" in path_key(p) for n in plan if not isinstance(n.unit, str)
                   for p in n.unit.paths)


@pytest.mark.slow
def test_composed_darts_step_in_the_search_form():
    """DARTS' search-time supernet (affine-free BN, a BN after each pooling op: the pooling
    units then carry a module)."""
    plan = _Reference(SPACE, affine=False, pool_bn=True).check(CRAFTED["every_op"])
    pool_units = [n.unit for n in plan if "pool" in n.out]
    assert pool_units and all(len(u.paths) == 1 for u in pool_units)


def test_doubled_op_is_computed_once_and_counted_twice(reference):
    plan = darts_plan(reference.network, CRAFTED["none_and_doubled"])
    term = f"k0e{edge_index(1, 2)}_sep_conv_3x3"  # cell 0's node 1 reads node 0 twice
    assert sum(n.out == term for n in plan) == 1
    node = next(n for n in plan if n.out == "k0n1")
    assert node.inputs == (term, term) and node.unit == "sum"


def test_darts_units_share_programs_across_edges(reference):
    """Every unit of one op at one shape and stride runs one program, whichever edge."""
    arch = make_arch([[(0, "sep_conv_3x3"), (1, "sep_conv_3x3")]] * 4,
                     [[(0, "sep_conv_3x3"), (1, "sep_conv_3x3")]] * 4)
    plan = darts_plan(reference.network, arch)
    units = [n.unit for n in plan if n.out.startswith("k0e")]
    assert len(units) == len({u.paths for u in units}) == 8  # one unit per edge
    assert len({id(reference.graph.programs(u)) for u in units}) == 1
