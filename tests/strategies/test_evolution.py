"""Random search and regularized evolution: ask/tell bookkeeping, scan/vmap, a toy search."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax import registry
from nas_jax.config import search_config
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.strategies.base import scan_search
from nas_jax.strategies.evolution import RandomSearch, RegularizedEvolution

SPACE = NB201Space()
TARGET = jnp.array([3, 1, 4, 2, 0, 3], jnp.int32)
KEYS = jax.random.split(jax.random.key(0), 200)


def toy_fitness(archs):
    """Decisions equal to the hidden target, plus a tie-break favouring nearby values."""
    matches = jnp.sum(archs == TARGET, axis=-1)
    closeness = 1.0 - jnp.mean(jnp.abs(archs - TARGET), axis=-1) / 4.0
    return matches + 0.01 * closeness


def hamming(a, b):
    return np.sum(np.asarray(a) != np.asarray(b), axis=-1)


# One evolution config for the bookkeeping tests, so they share compiled programs.
RE = RegularizedEvolution(space=SPACE, population_size=4, sample_size=50, batch_size=3)
A = np.array([0, 1, 2, 3, 4, 0], np.int32)


@functools.partial(jax.jit, static_argnums=0)
def tell(strategy, state, archs, fitness):
    return strategy.tell(state, archs, fitness)


@functools.partial(jax.jit, static_argnums=0)
def ask_many(strategy, keys, state):
    return jax.vmap(strategy.ask, in_axes=(0, None))(keys, state)[0]


def tell_all(strategy, state, archs, fitness):
    for a, f in zip(archs, fitness):
        state, _ = tell(strategy, state, jnp.asarray([a], jnp.int32), jnp.array([f], jnp.float32))
    return state


@functools.partial(jax.jit, static_argnums=(0, 2))
def run_search(strategy, key, num_rounds):
    """init + ask/evaluate/tell entirely inside lax.scan; the final state and best curve."""
    state, metrics = scan_search(strategy, toy_fitness, key, num_rounds)
    return state, metrics["best_fitness"]


def test_warm_up_is_random_then_children_are_single_mutations():
    state = RE.init(KEYS[0])
    archs = ask_many(RE, KEYS, state)
    assert archs.shape == (200, 3, 6) and archs.dtype == jnp.int32
    assert (hamming(archs, A) > 1).mean() > 0.8  # uniform samples
    assert len({tuple(a) for a in np.asarray(archs).reshape(-1, 6)}) > 500
    state = tell_all(RE, state, [A] * 3, [1.0] * 3)
    assert int(state.size) == 3
    archs = ask_many(RE, KEYS, state)
    # Slot 0 still fills the population; the later slots are children of a member (all A).
    assert (hamming(archs[:, 0], A) > 1).mean() > 0.8
    np.testing.assert_array_equal(hamming(archs[:, 1:], A), 1)
    state = tell_all(RE, state, [A], [1.0])
    assert int(state.size) == 4
    np.testing.assert_array_equal(hamming(ask_many(RE, KEYS, state), A), 1)


def test_children_mutate_the_tournament_winner():
    # Pairwise at least 4 decisions apart, so a single mutation identifies its parent.
    pop = np.array([[0] * 6, [1, 1, 1, 1, 0, 0], [2, 2, 0, 0, 2, 2], [0, 3, 3, 3, 3, 0]])
    state = tell_all(RE, RE.init(KEYS[0]), pop, [0.1, 0.9, 0.3, 0.2])
    archs = ask_many(RE, KEYS, state)[:50]
    # 50 draws with replacement from 4 miss the best with probability (3/4)^50.
    np.testing.assert_array_equal(hamming(archs, pop[1]), 1)
    # A tournament of one: the parent is a uniformly random member.
    re1 = RegularizedEvolution(space=SPACE, population_size=4, sample_size=1, batch_size=3)
    archs = ask_many(re1, KEYS, state)
    dists = hamming(archs[:, :, None, :], pop[None, None])  # [keys, batch, members]
    assert np.all((dists == 1).sum(-1) == 1)  # exactly one member is the parent
    assert set(np.argmin(dists, -1).ravel().tolist()) == {0, 1, 2, 3}


def test_tell_removes_the_oldest_not_the_worst():
    re = RegularizedEvolution(space=SPACE, population_size=3, sample_size=2)
    archs = [np.full(6, i % 5, np.int32) + np.eye(6, dtype=np.int32)[i % 6] * (i // 5)
             for i in range(6)]
    state = tell_all(re, re.init(KEYS[0]), archs[:3], [10.0, 0.0, 5.0])
    np.testing.assert_array_equal(state.birth, [0, 1, 2])
    state = tell_all(re, state, archs[3:4], [1.0])  # replaces archs[0], the best
    members = {tuple(a) for a in np.asarray(state.population)}
    assert members == {tuple(a) for a in archs[1:4]}
    np.testing.assert_array_equal(state.birth, [3, 1, 2])
    np.testing.assert_array_equal(state.fitness, [1.0, 0.0, 5.0])
    assert float(state.best.fitness) == 10.0
    np.testing.assert_array_equal(state.best.arch, archs[0])
    # A batch of two removes the two oldest, in order of birth.
    state, metrics = tell(re, state, jnp.asarray(archs[4:6]), jnp.array([2.0, 3.0]))
    np.testing.assert_array_equal(state.birth, [3, 4, 5])
    np.testing.assert_array_equal(state.fitness, [1.0, 2.0, 3.0])
    assert int(state.size) == 3 and int(state.best.num_told) == 6
    assert int(metrics["num_evaluated"]) == 6 and float(metrics["best_fitness"]) == 10.0
    assert float(metrics["batch_mean_fitness"]) == 2.5


@pytest.mark.parametrize("strategy", [RandomSearch(space=SPACE, batch_size=3), RE])
def test_non_finite_fitness_is_never_best(strategy):
    state = strategy.init(KEYS[0])
    archs = ask_many(strategy, KEYS, state)[1]
    state, metrics = tell(strategy, state, archs, jnp.array([jnp.nan, jnp.inf, -jnp.inf]))
    assert float(state.best.fitness) == -np.inf
    assert int(state.best.num_told) == 3
    assert float(metrics["batch_mean_fitness"]) == 0.0  # no finite values to average
    archs2 = ask_many(strategy, KEYS, state)[2]
    state, metrics = tell(strategy, state, archs2, jnp.array([jnp.inf, -5.0, jnp.nan]))
    assert float(state.best.fitness) == -5.0
    np.testing.assert_array_equal(state.best.arch, archs2[1])
    assert float(metrics["batch_mean_fitness"]) == -5.0
    if strategy is RE:  # slots 0-2, then 3 and the oldest two (0, 1); only -5 is finite
        np.testing.assert_array_equal(state.fitness, [-5.0, -np.inf, -np.inf, -np.inf])


def test_random_search_best_is_the_max_told():
    rs = RandomSearch(space=SPACE, batch_size=3)
    state = rs.init(KEYS[0])
    told_archs, told_fitness = [], []
    for i in range(5):
        archs = ask_many(rs, KEYS, state)[i]
        assert archs.shape == (3, 6) and archs.dtype == jnp.int32
        fitness = jax.random.normal(KEYS[100 + i], (3,))
        state, _ = tell(rs, state, archs, fitness)
        told_archs.append(archs)
        told_fitness.append(fitness)
        j = int(np.argmax(np.concatenate(told_fitness)))
        assert float(state.best.fitness) == float(np.concatenate(told_fitness)[j])
        np.testing.assert_array_equal(state.best.arch, np.concatenate(told_archs)[j])
    assert int(state.best.num_told) == 15
    assert len({tuple(a) for a in np.concatenate(told_archs)}) > 12


@functools.partial(jax.jit, static_argnums=(0, 2))
def search_many(strategy, keys, num_rounds):
    return jax.vmap(lambda k: run_search(strategy, k, num_rounds))(keys)


SEEDS = jax.random.split(jax.random.key(42), 32)
BUDGET = 300


def test_search_runs_in_scan_under_vmap_and_evolution_beats_random_search():
    re = RegularizedEvolution(space=SPACE, population_size=20, sample_size=5)
    rs = RandomSearch(space=SPACE)
    re_state, re_curve = search_many(re, SEEDS, BUDGET)
    rs_state, rs_curve = search_many(rs, SEEDS, BUDGET)
    for state, curve in [(re_state, re_curve), (rs_state, rs_curve)]:
        assert curve.shape == (32, BUDGET)
        assert np.all(np.diff(np.asarray(curve), axis=1) >= 0)  # best never decreases
        np.testing.assert_array_equal(state.best.num_told, BUDGET)
        np.testing.assert_allclose(state.best.fitness, toy_fitness(state.best.arch))
    np.testing.assert_array_equal(re_state.size, 20)
    re_best = np.asarray(re_state.best.fitness)
    rs_best = np.asarray(rs_state.best.fitness)
    # Random search expects about 4.5 of 6 matches with 300 samples; evolution nearly 6.
    assert re_best.mean() > rs_best.mean() + 1.0, (re_best.mean(), rs_best.mean())
    assert (np.floor(re_best) == 6).mean() > 0.5
    # Same key, same search, whatever the other seeds in the batch.
    again, again_curve = search_many(re, SEEDS[::-1], BUDGET)
    np.testing.assert_array_equal(again_curve[::-1], re_curve)
    np.testing.assert_array_equal(again.population[::-1], re_state.population)
    assert not np.array_equal(re_curve[3], re_curve[4])


def test_registry_builds_every_strategy():
    # The scan test's strategy settings; 8 of its seeds (the searches' run time, at the
    # tests' XLA optimisation level, grows with the seeds vmapped).
    cfg = search_config().strategy
    cfg.update(dict(batch_size=1, population_size=20, sample_size=5))
    assert set(registry.STRATEGIES.names()) >= {"random_search", "regularized_evolution",
                                                "genetic_algorithm", "reinforce"}
    built = registry.STRATEGIES.build("regularized_evolution", cfg, SPACE)
    assert built == RegularizedEvolution(space=SPACE, population_size=20, sample_size=5)
    for name in registry.STRATEGIES.names():
        strategy = registry.STRATEGIES.build(name, cfg, SPACE)
        hash(strategy)
        state, _ = search_many(strategy, SEEDS[:8], BUDGET)
        np.testing.assert_array_equal(state.best.num_told, BUDGET * strategy.batch_size)
        # At least 3 of 6 decisions right after 300 evaluations, for every seed: random search
        # misses 3 with probability (1 - 0.099)^300 ~ 3e-14 per seed (4 would fail for about
        # one seed in six batches of 32: 0.6% per seed).
        assert np.all(np.asarray(state.best.fitness) >= 3)
        assert bool(jax.vmap(SPACE.is_valid)(state.best.arch).all())
    with pytest.raises(ValueError, match="unknown strategy"):
        registry.STRATEGIES.build("nope", cfg, SPACE)
