"""Zero-cost proxies: known answers (NASWOT kernels, synflow of a linear net, disconnected
cells), population == per-candidate, mixture weighting == standalone network, invariances."""

import logging
import re
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from nas_jax import ops, registry
from nas_jax.config import ConfigError, search_config, validate
from nas_jax.evaluators import zero_cost as zc
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.supernet.nb201 import NB201Network, extract_standalone

# The same tiny NB201 space as the one-shot tests: its initialisation compiles once.
SPACE = NB201Space(channels=4, cells_per_stage=1, input_shape=(8, 8, 1), num_classes=4)
ARCHS = jnp.array([[3, 3, 3, 3, 3, 3], [0, 0, 0, 0, 0, 0], [1, 2, 4, 3, 0, 1]], jnp.int32)
TRAIN_X = jax.random.normal(jax.random.key(0), (40, 8, 8, 1))
TRAIN = (TRAIN_X, jnp.zeros((40,), jnp.int32))
BATCH = 12
KEY = jax.random.key(7)


@pytest.fixture(scope="module", autouse=True)
def non_partitionable_threefry():
    with jax.threefry_partitionable(False):
        yield


@pytest.fixture(scope="module")
def population():
    """The evaluator's per-candidate initial states for ``KEY`` and its NASWOT minibatch."""
    k_batch, k_init = jax.random.split(KEY)
    keys = jnp.stack([jax.random.fold_in(k_init, i) for i in range(len(ARCHS))])
    params, stats = zc.init_population(SPACE, keys)
    return params, stats, zc.minibatch(k_batch, TRAIN_X, BATCH)


@jax.jit
def row(tree, i):
    """Row(s) ``i`` of every leaf (one compiled program, not one per leaf shape)."""
    return jax.tree.map(lambda a: a[i], tree)


def one_hots(archs):
    return jax.vmap(SPACE.one_hot)(jnp.asarray(archs, jnp.int32))


def test_agreement_kernel_known_answer():
    pre = jnp.array([[1.0, -1.0, 2.0, 0.0], [3.0, -2.0, -1.0, 0.0], [-1.0, -1.0, 1.0, 5.0]])
    # codes: [1 0 1 0], [1 0 0 0], [0 0 1 1]
    expected = np.array([[4, 3, 2], [3, 4, 1], [2, 1, 4]], np.float32)
    np.testing.assert_array_equal(zc.agreement_kernel(pre), expected)
    np.testing.assert_array_equal(zc.agreement_kernel(pre.reshape(3, 2, 2)), expected)
    np.testing.assert_allclose(zc.naswot_score(jnp.array([[4.0, 3.0], [3.0, 4.0]])), np.log(7.0),
                               rtol=1e-6)
    assert float(zc.naswot_score(jnp.full((3, 3), 5.0))) == -np.inf  # all codes equal


def test_naswot_evaluator_loop_equals_vmap(population, caplog):
    evaluator = zc.ZeroCostEvaluator(SPACE, TRAIN, proxy="naswot", batch_size=BATCH,
                                     execution="loop")
    with caplog.at_level(logging.WARNING):
        fitness, metrics = evaluator(KEY, ARCHS)
    assert fitness.shape == (3,) and set(metrics) == {"naswot", "finite"}
    params, stats, x = population
    kernels = zc.naswot_kernels(SPACE, params, stats, one_hots(ARCHS), x)
    np.testing.assert_allclose(metrics["naswot"], jax.vmap(zc.naswot_score)(kernels), rtol=1e-5)
    vmapped = zc.ZeroCostEvaluator(SPACE, TRAIN, proxy="naswot", batch_size=BATCH,
                                   execution="vmap")
    np.testing.assert_allclose(vmapped(KEY, ARCHS)[0], fitness, rtol=1e-5)
    # All-none cells: only the reductions' and head's ReLUs remain, and their inputs no longer
    # depend on the example: every code agrees, K is singular.
    np.testing.assert_array_equal(metrics["finite"], [True, False, True])
    assert float(fitness[1]) == -np.inf and np.isfinite(float(fitness[0]))
    assert "1 of 3 candidates got a non-finite naswot score" in caplog.text
    again, _ = evaluator(KEY, ARCHS)
    np.testing.assert_array_equal(again, fitness)
    other, _ = evaluator(jax.random.key(8), ARCHS)
    assert float(other[0]) != float(fitness[0])
    # A candidate's score depends only on its own state and architecture.
    order = jnp.array([2, 0, 1])
    shuffled = zc.naswot_kernels(SPACE, row(params, order), row(stats, order),
                                 one_hots(ARCHS)[order], x)
    np.testing.assert_array_equal(shuffled, kernels[order])
    # Identical inputs: all codes equal for every candidate.
    same = jnp.broadcast_to(TRAIN_X[:1], TRAIN_X.shape)
    evaluator = zc.ZeroCostEvaluator(SPACE, (same, TRAIN[1]), proxy="naswot", batch_size=BATCH,
                                     execution="loop")
    np.testing.assert_array_equal(evaluator(KEY, ARCHS)[0], [-np.inf] * 3)


def test_naswot_counts_exactly_the_chosen_relus(population):
    params, stats, x = population
    # skip everywhere: reductions (8x8x4 + 4x4x8, 4x4x8 + 2x2x16) and the head (2x2x16).
    base = 256 + 128 + 128 + 64 + 64
    per_conv = 256 + 128 + 64  # one convolution in each of the 3 cells (8x8x4, 4x4x8, 2x2x16)
    archs = [(1,) * 6, (3, 1, 1, 1, 1, 1), (2, 0, 3, 0, 3, 0)]
    kernels = zc.naswot_kernels(SPACE, params, stats, one_hots(archs), x)
    for kernel, convs in zip(kernels, (0, 1, 3)):
        np.testing.assert_array_equal(np.diag(kernel), np.full(BATCH, base + convs * per_conv))
    # NASWOT is invariant to the order of the minibatch (K is permuted, det unchanged).
    perm = jax.random.permutation(jax.random.key(1), BATCH)
    permuted = zc.naswot_kernels(SPACE, params, stats, one_hots(archs), x[perm])
    np.testing.assert_array_equal(permuted, kernels[:, perm][:, :, perm])


def test_naswot_supernet_equals_standalone_network(population):
    """Candidate 2 alone, through its standalone network (only its chosen operations, no
    vmap, no mixture weights), gives the population's kernel row exactly."""
    params, stats, x = population
    arch = tuple(int(a) for a in ARCHS[2])

    @jax.jit
    def standalone_kernel(params, stats, x):
        sub_graph, sub_params, sub_stats = nnx.split(
            NB201Network(SPACE, arch, rngs=ops.ParamKeys(0)), nnx.Param, nnx.BatchStat)
        model = nnx.merge(sub_graph, extract_standalone(params, sub_params),
                          extract_standalone(stats, sub_stats), copy=True)
        sites, records = zc.NASWOT_SITES[NB201Network], []
        with zc.record_sites(model, sites, records):
            model(x, train=True)
        return zc.relu_kernel(sites.weigher(SPACE, None), records, x.shape[0])

    kernels = zc.naswot_kernels(SPACE, params, stats, one_hots(ARCHS), x)
    np.testing.assert_array_equal(standalone_kernel(row(params, 2), row(stats, 2), x), kernels[2])


def test_synflow_of_a_linear_net_by_hand():
    rng = np.random.default_rng(0)
    params = {name: jnp.asarray(rng.normal(size=shape))
              for name, shape in (("w1", (3, 4)), ("w2", (4, 2)), ("b", (2,)))}

    def apply(p, x):
        return jax.nn.relu(x @ p["w1"]) @ p["w2"] + p["b"]

    a1, a2 = np.abs(np.asarray(params["w1"])), np.abs(np.asarray(params["w2"]))
    # dR/dW1[i, k] = sum_j |W2|[k, j]; dR/dW2[k, j] = sum_i |W1|[i, k]; biases are not summed.
    expected = np.sum(a1 * a2.sum(1)[None, :]) + np.sum(a2 * a1.sum(0)[:, None])
    np.testing.assert_allclose(zc.synflow_sum(apply, params, (3,)), expected, rtol=1e-5)
    # The definition, term by term in reverse mode, on the same positive parameters.
    positive = jax.tree.map(jnp.abs, params)
    grads = jax.grad(lambda p: jnp.sum(apply(p, jnp.ones((1, 3)))))(positive)
    by_grad = sum(float(jnp.sum(jnp.abs(positive[k] * grads[k]))) for k in ("w1", "w2"))
    np.testing.assert_allclose(by_grad, expected, rtol=1e-5)
    # A chain of bias-free layers: every layer's term equals R, so synflow = depth * R.
    np.testing.assert_allclose(expected, 2 * np.ones(3) @ a1 @ a2 @ np.ones(2), rtol=1e-5)


def test_synflow_population_invariances_and_disconnected_cell(population, caplog):
    evaluator = zc.ZeroCostEvaluator(SPACE, TRAIN, proxy="synflow", execution="vmap")
    with caplog.at_level(logging.WARNING):
        fitness, metrics = evaluator(KEY, ARCHS)
    assert set(metrics) == {"log_synflow", "finite"}
    assert metrics["log_synflow"].dtype == jnp.float32
    # All-none cells: no path from the input to the logits, every gradient term is 0.
    assert float(metrics["log_synflow"][1]) == -np.inf == float(fitness[1])
    assert "1 of 3 candidates got a non-finite synflow score" in caplog.text
    # More convolutions on the paths multiply more weights: all-3x3 beats the mixed cell.
    assert float(fitness[0]) > float(fitness[2]) > 0
    _, again = evaluator(KEY, ARCHS)
    np.testing.assert_array_equal(again["log_synflow"], metrics["log_synflow"])

    params, stats, _ = population
    weights = jax.vmap(SPACE.one_hot)(ARCHS)
    # A candidate's score depends only on its own state and architecture: reordering the
    # population reorders the scores.
    order = jnp.array([2, 0, 1])
    shuffled = zc.synflow_population(SPACE, row(params, order), row(stats, order),
                                     weights[order])
    np.testing.assert_allclose(shuffled, metrics["log_synflow"][order], rtol=1e-6)
    # Parameter signs do not matter (absolute values are taken).
    @jax.jit
    def flip(tree):  # every third entry of each leaf negated (no random draws to compile)
        return jax.tree.map(lambda a: jnp.where(
            jnp.arange(a.size).reshape(a.shape) % 3 == 0, -a, a), tree)

    np.testing.assert_allclose(zc.synflow_population(SPACE, flip(params), stats, weights),
                               metrics["log_synflow"], rtol=1e-6)


def test_registry_and_errors():
    split = types.SimpleNamespace
    dataset = split(train=split(x=TRAIN[0], y=TRAIN[1]))
    for name in ("naswot", "synflow"):
        cfg = ml_collections.ConfigDict(dict(name=name, proxy_batch_size=16, execution="auto"))
        evaluator = registry.EVALUATORS.build(name, cfg, SPACE, dataset)
        assert isinstance(evaluator, zc.ZeroCostEvaluator)
        assert evaluator.proxy == name and evaluator.batch_size == 16
        assert evaluator.execution == zc.resolve_execution("auto", name)
        assert evaluator.train[0] is TRAIN[0]
    on_cpu = jax.default_backend() == "cpu"
    assert zc.resolve_execution("auto", "naswot") == ("loop" if on_cpu else "vmap")
    assert zc.resolve_execution("auto", "synflow") == "vmap"
    assert zc.resolve_execution("loop", "synflow") == "loop"
    with pytest.raises(ValueError, match="execution='pmap'; allowed: auto, loop, vmap"):
        zc.ZeroCostEvaluator(SPACE, TRAIN, proxy="naswot", execution="pmap")
    with pytest.raises(ValueError, match="proxy='snip'; allowed: naswot, synflow"):
        zc.ZeroCostEvaluator(SPACE, TRAIN, proxy="snip")
    with pytest.raises(ValueError, match="no network is registered"):
        zc.ZeroCostEvaluator(object(), TRAIN, proxy="synflow")
    assert "nb201" in zc.naswot_space_names() and zc.has_relu_sites(SPACE)


@pytest.mark.parametrize("name, field, value, message", [
    ("naswot", "proxy_batch_size", 0, "config.evaluator.proxy_batch_size=0: must be > 0"),
    ("synflow", "execution", "switch",
     "config.evaluator.execution='switch': the synflow evaluator allows: auto, loop, vmap"),
    ("naswot", "space", "macro_cnn",
     "config.space.name='macro_cnn': the naswot evaluator knows the ReLUs of: nb201"),
], ids=["batch_size", "execution", "space"])
def test_config_checks(name, field, value, message):
    config = search_config()
    config.evaluator.name = name
    if field == "space":
        config.space.name = value
    else:
        config.evaluator[field] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(config)
    config = search_config()
    config.evaluator.name = name
    validate(config)
