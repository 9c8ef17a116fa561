"""Host-loop executors: the switch supernet and per-architecture programs train exactly
what the mixture supernet trains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nas_jax.evaluators.executors import CompiledExecutor, LoopExecutor
from nas_jax.evaluators.population import EXECUTION_OPTIONS, init_candidate
from nas_jax.spaces.macro import MLPSpace
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.supernet.macro import match_standalone_init
from nas_jax.train.steps import Recipe

SPACE = NB201Space(channels=2, cells_per_stage=1, input_shape=(8, 8, 1), num_classes=3)
RECIPE = Recipe(steps=6, batch_size=16, optimizer="sgd", learning_rate=0.1, weight_decay=0.0,
                grad_clip=0.0, eval_batch_size=32)
X = jax.random.normal(jax.random.key(0), (64, 8, 8, 1))
Y = jnp.arange(64) % 3
# Canonical cells (their own representatives), so every executor trains the same network.
ARCHS = np.array([[3, 2, 4, 3, 1, 3], [0, 2, 0, 2, 0, 2]], np.int32)
KEYS = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(7), i))(jnp.arange(2))


@pytest.fixture(scope="module", autouse=True)
def non_partitionable_threefry():
    with jax.threefry_partitionable(False):
        yield


@pytest.fixture(scope="module")
def mixture_result():
    weights = jax.vmap(SPACE.one_hot)(jnp.asarray(ARCHS))
    return LoopExecutor(SPACE, RECIPE)(KEYS, ARCHS, weights, (X, Y), (X, Y))


def test_archs_are_canonical():
    for arch in ARCHS:
        np.testing.assert_array_equal(SPACE.canonical(arch), arch)


def test_switch_executor_equals_mixture(mixture_result):
    # The switch execution's supernet (taps convolutions); conv_impl="matmul" is tested at
    # the network level (test_nb201_network.py, test_ops.py).
    weights = jax.vmap(SPACE.one_hot)(jnp.asarray(ARCHS))
    out = LoopExecutor(SPACE, RECIPE, **EXECUTION_OPTIONS["switch"])(
        KEYS, ARCHS, weights, (X, Y), (X, Y))
    # The same function, rounded differently (the one-pass batch-norm moments of a 2-channel
    # network are sensitive to summation order), and 6 SGD steps at lr 0.1 amplify it: on
    # an AVX-512 CPU at XLA optimisation level 0 the second cell's losses differ by 0.27%
    # (before the recomputing switch too); on AVX2, and at the default level, not at all.
    # tests/supernet/test_nb201_network.py checks one step's gradients at 1e-4.
    np.testing.assert_array_equal(out["valid_accuracy"], mixture_result["valid_accuracy"])
    for name in ("valid_loss", "train_loss"):
        np.testing.assert_allclose(out[name], mixture_result[name], rtol=5e-3)


def test_compiled_executor_equals_mixture_and_caches_by_canonical(mixture_result):
    ex = CompiledExecutor(SPACE, RECIPE)
    out = ex(KEYS, ARCHS, None, (X, Y), (X, Y))
    for name in ("valid_accuracy", "valid_loss", "train_loss"):
        np.testing.assert_allclose(out[name], mixture_result[name], rtol=2e-4, atol=2e-5)
    assert ex.compiles == 2
    # An isomorphic cell (a dead edge's op changed) reuses the canonical cell's program and
    # its result.
    iso = np.array([[0, 2, 0, 2, 3, 2]], np.int32)
    assert SPACE.canonical_key(iso[0]) == tuple(ARCHS[1])
    again = ex(KEYS[1:], iso, None, (X, Y), (X, Y))
    assert ex.compiles == 2
    np.testing.assert_allclose(again["valid_loss"], out["valid_loss"][1:], rtol=1e-6)


MLP = MLPSpace(max_layers=2, units=(4, 16), activations=("relu", "tanh"), input_shape=(6,),
               num_classes=3)
MLP_ARCHS = np.array([[1, 0, 0, 1, 1], [0, 1, 1, 0, 0]], np.int32)  # canonical


def test_macro_candidates_start_at_their_standalone_init_scale():
    w = MLP.one_hot(jnp.asarray(MLP_ARCHS[0]))
    plain = init_candidate(MLP, None, KEYS[0])[0]
    fitted = init_candidate(MLP, None, KEYS[0], w)[0]
    want = match_standalone_init(MLP, plain, w)
    for a, b in zip(jax.tree.leaves(fitted), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
    # Layer 1 reads 4 of the 16 inputs the supernet holds: its kernel is scaled up by 2.
    k_plain = dict(nnx.to_flat_state(plain))[("layers", 1, "kernel")][...]
    k_fit = dict(nnx.to_flat_state(fitted))[("layers", 1, "kernel")][...]
    np.testing.assert_allclose(k_fit, 2.0 * k_plain, rtol=1e-6)


def test_macro_compiled_executor_equals_loop():
    x = jax.random.normal(jax.random.key(1), (64, 6))
    y = jnp.arange(64) % 3
    weights = jax.vmap(MLP.one_hot)(jnp.asarray(MLP_ARCHS))
    loop = LoopExecutor(MLP, RECIPE)(KEYS, MLP_ARCHS, weights, (x, y), (x, y))
    compiled = CompiledExecutor(MLP, RECIPE)(KEYS, MLP_ARCHS, None, (x, y), (x, y))
    for name in ("valid_accuracy", "valid_loss", "train_loss"):
        np.testing.assert_allclose(compiled[name], loop[name], rtol=2e-4, atol=2e-5)


def test_composed_executor_equals_mixture(mixture_result):
    from nas_jax.evaluators.executors import ComposedExecutor

    weights = jax.vmap(SPACE.one_hot)(jnp.asarray(ARCHS))
    ex = ComposedExecutor(SPACE, RECIPE)
    out = ex(KEYS, ARCHS, weights, (X, Y), (X, Y))
    # Same init (the supernet's), same batches and steps; 1x1 kernel gradients as matmuls.
    np.testing.assert_array_equal(out["valid_accuracy"], mixture_result["valid_accuracy"])
    for name in ("valid_loss", "train_loss"):
        np.testing.assert_allclose(out[name], mixture_result[name], rtol=5e-3)
    assert bool(np.all(out["finite"]))


def test_composed_execution_on_a_mesh_equals_no_mesh():
    """The mesh path of the host-loop executions (candidates placed on the mesh's devices)
    serves composed steps too."""
    from nas_jax.evaluators.population import PopulationEvaluator
    from nas_jax.utils import sharding

    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    runs = [PopulationEvaluator(SPACE, (X, Y), (X, Y), RECIPE, execution="composed", mesh=m)(
        jax.random.key(3), ARCHS) for m in (None, mesh)]
    (f0, out0), (f1, out1) = runs
    np.testing.assert_array_equal(f0, f1)
    np.testing.assert_allclose(out0["valid_loss"], out1["valid_loss"], rtol=1e-6)


def test_composed_diverging_candidates_get_the_worst_fitness(caplog):
    import dataclasses
    import logging

    from nas_jax.evaluators.population import PopulationEvaluator

    blowup = dataclasses.replace(RECIPE, learning_rate=1e12, momentum=0.0)
    with caplog.at_level(logging.WARNING):
        fitness, out = PopulationEvaluator(SPACE, (X, Y), (X, Y), blowup,
                                           execution="composed")(jax.random.key(3), ARCHS)
    np.testing.assert_array_equal(out["finite"], [False, False])
    np.testing.assert_array_equal(fitness, [-np.inf, -np.inf])
    assert "2 of 2 candidates diverged" in caplog.text
