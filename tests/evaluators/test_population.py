"""PopulationEvaluator on a tiny synthetic task: loop == vmap, divergence, determinism."""

import logging
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from nas_jax import ops, registry
from nas_jax.data.datasets import quadrant_images
from nas_jax.evaluators import population
from nas_jax.evaluators.population import PopulationEvaluator, resolve_execution, train_standalone
from nas_jax.spaces.darts import DartsSpace
from nas_jax.spaces.macro import MLPSpace
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.train.steps import Recipe

CLASSES = 4
SPACE = NB201Space(channels=2, cells_per_stage=1, input_shape=(8, 8, 1), num_classes=CLASSES)
# Plain SGD keeps the compiled program small; 48 does not divide the 64 validation examples.
RECIPE = Recipe(steps=40, batch_size=32, optimizer="sgd", learning_rate=0.1, weight_decay=0.0,
                grad_clip=0.0, eval_batch_size=48)
ARCHS = jnp.array([[3, 3, 3, 3, 3, 3], [0, 0, 0, 0, 0, 0], [1, 2, 4, 3, 0, 1]], jnp.int32)
KEY = jax.random.key(3)


def quadrants(key, n):
    return quadrant_images(key, n, CLASSES)


TRAIN = quadrants(jax.random.key(0), 192)
VALID = quadrants(jax.random.key(1), 64)


@pytest.fixture(scope="module", autouse=True)
def non_partitionable_threefry():
    """Parameter initialisation is compiled into each training program; XLA:CPU compiles
    it several times faster with the non-partitionable threefry (same semantics)."""
    with jax.threefry_partitionable(False):
        yield


@pytest.fixture(scope="module")
def loop_evaluator():
    return PopulationEvaluator(SPACE, TRAIN, VALID, RECIPE, execution="loop")


@pytest.fixture(scope="module")
def loop_result(loop_evaluator):
    return loop_evaluator(KEY, ARCHS)


@pytest.mark.skipif(not os.environ.get("NAS_JAX_SLOW_TESTS"),
                    reason="compiling the vmapped NB201 training program takes 30-80 s on CPU; "
                    "set NAS_JAX_SLOW_TESTS=1 (test_loop_and_vmap_agree covers the evaluator)")
def test_loop_and_vmap_agree_on_nb201(loop_result):
    evaluator = PopulationEvaluator(SPACE, TRAIN, VALID, RECIPE, execution="vmap")
    fitness, metrics = evaluator(KEY, ARCHS)
    np.testing.assert_allclose(fitness, loop_result[0], atol=1e-4)
    for name in ("valid_loss", "train_loss"):
        np.testing.assert_allclose(metrics[name], loop_result[1][name], rtol=1e-3, atol=1e-4)


def test_trained_candidates_beat_chance(loop_result):
    fitness, metrics = loop_result
    assert set(metrics) >= {"valid_accuracy", "valid_loss", "train_loss", "finite"}
    assert np.all(np.asarray(metrics["finite"]))
    np.testing.assert_array_equal(fitness, metrics["valid_accuracy"])
    assert float(fitness[0]) >= 0.75 and float(fitness[2]) >= 0.75  # chance is 0.25
    assert float(metrics["train_loss"][0]) < 0.5 * np.log(CLASSES)
    # All-none cells output zeros: every input gets the same prediction, so on balanced
    # validation data the accuracy is exactly one class's share.
    assert float(fitness[1]) == 1.0 / CLASSES


def test_same_key_same_fitness_and_per_candidate_keys(loop_evaluator, loop_result):
    fitness, metrics = loop_evaluator(KEY, ARCHS)
    np.testing.assert_array_equal(fitness, loop_result[0])
    np.testing.assert_array_equal(metrics["train_loss"], loop_result[1]["train_loss"])
    # Candidate i is trained with fold_in(key, i): a prefix of the population scores the same.
    first, first_metrics = loop_evaluator(KEY, ARCHS[:1])
    assert first.shape == (1,)
    np.testing.assert_array_equal(first_metrics["train_loss"], metrics["train_loss"][:1])
    _, other = loop_evaluator(jax.random.key(4), ARCHS[:1])
    assert float(other["train_loss"][0]) != float(metrics["train_loss"][0])


class MiniSupernet(nnx.Module):
    """A cheap stand-in supernet: one mixed edge (skip, conv 1x1, conv 3x3, pool) with batch
    norm, a linear read-out, and logits of -inf (a NaN loss) when edge 1 chooses op 4."""

    def __init__(self, *, rngs):
        self.stem = ops.Conv(1, 3, 3, rngs=rngs)
        self.bn = ops.BatchNorm(3)
        self.conv1 = ops.ReLUConvBN(3, 3, 1, rngs=rngs)
        self.conv3 = ops.ReLUConvBN(3, 3, 3, rngs=rngs)
        self.head = ops.Dense(8 * 8 * 3, CLASSES, rngs=rngs)

    def __call__(self, x, weights=None, *, train=False):
        h = self.bn(self.stem(x), train)
        h = (weights[0, 1] * h + weights[0, 2] * self.conv1(h, train)
             + weights[0, 3] * self.conv3(h, train) + weights[0, 4] * ops.avg_pool_3x3(h))
        return self.head(h.reshape(h.shape[0], -1)) + jnp.log(1.0 - weights[1, 4])


@pytest.fixture
def mini_supernet(monkeypatch):
    def build(space, arch=None, *, rngs):
        assert arch is None
        return MiniSupernet(rngs=rngs)

    monkeypatch.setattr(population, "build_network", build)


MINI_ARCHS = jnp.array([[3, 0, 0, 0, 0, 0], [2, 4, 1, 1, 1, 1], [4, 2, 3, 4, 4, 4]], jnp.int32)


def test_loop_and_vmap_agree(mini_supernet, caplog):
    results = {}
    for execution in ("loop", "vmap"):
        evaluator = PopulationEvaluator(SPACE, TRAIN, VALID, RECIPE, execution=execution)
        assert evaluator.execution == execution
        with caplog.at_level(logging.WARNING):
            results[execution] = evaluator(KEY, MINI_ARCHS)
    (loop_fitness, loop_metrics), (fitness, metrics) = results["loop"], results["vmap"]
    assert fitness.shape == (3,)
    np.testing.assert_array_equal(metrics["finite"], [True, False, True])
    np.testing.assert_array_equal(loop_metrics["finite"], [True, False, True])
    np.testing.assert_allclose(fitness, loop_fitness, atol=1e-4)
    for name in ("valid_loss", "train_loss"):
        a, b = np.asarray(metrics[name])[[0, 2]], np.asarray(loop_metrics[name])[[0, 2]]
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    # The diverged candidate gets the worst fitness, with a warning; the others learn.
    assert float(fitness[1]) == -np.inf == float(loop_fitness[1])
    assert np.all(np.asarray(fitness)[[0, 2]] > 0.5)
    assert caplog.text.count("1 of 3 candidates diverged") == 2


def test_execution_choice():
    assert resolve_execution("loop") == "loop" and resolve_execution("vmap") == "vmap"
    assert resolve_execution("loop", SPACE) == "loop"
    on_cpu = jax.default_backend() == "cpu"
    assert resolve_execution("auto") == ("loop" if on_cpu else "vmap")
    # On CPU, NB201's switch supernet (chosen ops only); spaces without one keep the loop.
    assert resolve_execution("auto", SPACE) == ("switch" if on_cpu else "vmap")
    assert PopulationEvaluator(SPACE, TRAIN, VALID, RECIPE).execution == (
        "switch" if on_cpu else "vmap")
    assert resolve_execution("auto", MLPSpace(input_shape=(4,), num_classes=2)) == (
        "loop" if on_cpu else "vmap")
    # DARTS has no switch: its composed form (chosen ops only, per-unit programs).
    darts = DartsSpace(channels=2, num_cells=3, input_shape=(8, 8, 3), num_classes=2)
    assert resolve_execution("auto", darts) == ("composed" if on_cpu else "vmap")
    with pytest.raises(ValueError, match="execution='pmap'; allowed: auto, loop, switch, "
                                         "composed, compiled, vmap"):
        PopulationEvaluator(SPACE, TRAIN, VALID, RECIPE, execution="pmap")
    with pytest.raises(ValueError, match="execution='composed': the MLPSpace network has no "
                                         "composed form"):
        PopulationEvaluator(MLPSpace(input_shape=(4,), num_classes=2), TRAIN, VALID, RECIPE,
                            execution="composed")
    with pytest.raises(ValueError, match="no network"):
        population.build_network(object(), rngs=ops.ParamKeys(0))


def test_registry_builds_the_population_evaluator():
    cfg = ml_collections.ConfigDict(dict(steps=5, batch_size=8, learning_rate=0.1,
                                         execution="auto", name="population"))
    split = types.SimpleNamespace
    dataset = split(train=split(x=TRAIN[0], y=TRAIN[1]), valid=split(x=VALID[0], y=VALID[1]))
    evaluator = registry.EVALUATORS.build("population", cfg, SPACE, dataset)
    assert isinstance(evaluator, PopulationEvaluator)
    assert evaluator.recipe == Recipe(steps=5, batch_size=8, learning_rate=0.1)
    assert evaluator.execution == resolve_execution("auto", SPACE)
    assert evaluator.train[0] is TRAIN[0] and evaluator.valid[1] is VALID[1]


def test_train_standalone_returns_finite_metrics():
    out = train_standalone(jax.random.key(5), SPACE, (0, 0, 0, 3, 0, 0), TRAIN, VALID, RECIPE)
    assert set(out) >= {"valid_accuracy", "valid_loss", "train_loss", "finite"}
    assert bool(out["finite"])
    for name in ("valid_accuracy", "valid_loss", "train_loss"):
        assert np.isfinite(float(out[name]))
    assert float(out["valid_accuracy"]) > 1.0 / CLASSES
