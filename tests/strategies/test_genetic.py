"""The generational genetic algorithm: selection, crossover, mutation, elitism, scan/vmap.

Statistics come from one large generation (P = 2000) rather than many keys, so each
configuration compiles once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.spaces.base import SearchSpace
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.strategies.base import scan_search
from nas_jax.strategies.genetic import GeneticAlgorithm

SPACE = NB201Space()
ODD = SearchSpace(num_choices=(5, 3, 2))  # bit codes 5..7 and 3 wrap around
TARGET = jnp.array([3, 1, 4, 2, 0, 3], jnp.int32)
KEY = jax.random.key(0)
P = 2000
# Pairwise at least 4 decisions apart, so members are easy to tell apart.
MEMBERS = np.array([[0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [2, 2, 0, 0, 2, 2],
                    [0, 3, 3, 3, 3, 0], [4, 4, 4, 0, 0, 4], [3, 0, 2, 4, 1, 1],
                    [1, 4, 0, 2, 4, 3], [4, 2, 3, 1, 2, 0]], np.int32)
RANK = np.array([np.nan, 1, 2, 3, 4, 5, 6, 7], np.float32)  # NaN counts as the worst
POP, FIT = np.tile(MEMBERS, (P // 8, 1)), np.tile(RANK, P // 8)


def toy_fitness(archs):
    return jnp.sum(archs == TARGET, axis=-1).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def ask_after(strategy, archs, fitness):
    """One generation told, then the next ask."""
    state = strategy.tell(strategy.init(KEY), archs, fitness)[0]
    return strategy.ask(jax.random.key(1), state)[0]


def which(archs, members=MEMBERS):
    """Index of the member each arch equals, -1 for none."""
    eq = np.all(np.asarray(archs)[:, None] == members[None], axis=-1)
    return np.where(eq.any(-1), eq.argmax(-1), -1)


def ga(space=SPACE, **kw):
    return GeneticAlgorithm(space=space, **{"population_size": P, **kw})


NOVAR = {e: ga(crossover_rate=0.0, mutation_rate=0.0, encoding=e) for e in ("binary", "integer")}


def test_batch_size_is_the_population_size_and_fields_are_checked():
    assert GeneticAlgorithm(space=SPACE).batch_size == 100
    assert ga(batch_size=P).batch_size == P
    with pytest.raises(ValueError, match="batch_size=5"):
        ga(batch_size=5)
    with pytest.raises(ValueError, match="encoding='gray'"):
        ga(encoding="gray")
    with pytest.raises(ValueError, match="elitism=2001"):
        ga(elitism=2001)
    with pytest.raises(ValueError, match="crossover_rate=1.5"):
        ga(crossover_rate=1.5)
    hash(ga())


def test_first_generation_is_uniform_random():
    strategy = NOVAR["binary"]
    archs, _ = jax.jit(strategy.ask)(KEY, strategy.init(KEY))
    assert archs.shape == (P, 6) and archs.dtype == jnp.int32
    assert len({tuple(a) for a in np.asarray(archs)}) > 1800
    counts = np.stack([np.bincount(np.asarray(archs)[:, d], minlength=5) for d in range(6)])
    assert counts.shape == (6, 5) and np.all((counts > 320) & (counts < 480))  # 400 expected


@pytest.mark.parametrize("encoding", ["binary", "integer"])
def test_without_variation_the_children_are_tournament_winners(encoding):
    archs = ask_after(NOVAR[encoding], POP, FIT)
    assert archs.shape == (P, 6)
    idx = which(archs)
    assert np.all(idx >= 0)  # only members of the last generation
    # P(winner = rank i of 8, tournament of 3 with replacement) = ((i+1)^3 - i^3) / 512.
    freq = np.bincount(idx, minlength=8) / P
    expected = (np.arange(1, 9) ** 3 - np.arange(8) ** 3) / 512
    np.testing.assert_allclose(freq, expected, atol=0.04)
    assert freq[4:].sum() > 0.8 and freq[0] < 0.01
    # Same key, same generation.
    np.testing.assert_array_equal(ask_after(NOVAR[encoding], POP, FIT), archs)


@pytest.mark.parametrize("encoding", ["binary", "integer"])
def test_elitism_copies_the_best_unchanged(encoding):
    strategy = ga(elitism=3, crossover_rate=1.0, mutation_rate=1.0, gene_mutation_rate=0.5,
                  encoding=encoding)
    fit = np.random.default_rng(0).permutation(P).astype(np.float32)
    archs = np.asarray(ask_after(strategy, POP, fit))
    np.testing.assert_array_equal(archs[:3], POP[np.argsort(-fit)[:3]])
    assert (which(archs[3:]) < 0).mean() > 0.5  # the rest did vary


def test_binary_mutation_flips_bits_and_integer_mutation_redraws():
    flip = ga(crossover_rate=0.0, mutation_rate=1.0, gene_mutation_rate=1.0)
    archs = ask_after(flip, POP, FIT)
    # Every bit flipped: a 3-bit code v becomes 7 - v, which wraps modulo 5.
    assert np.all(which(archs, (7 - MEMBERS) % 5) >= 0)
    redraw = ga(crossover_rate=0.0, mutation_rate=1.0, gene_mutation_rate=1.0,
                encoding="integer")
    archs = np.asarray(ask_after(redraw, POP, FIT))
    counts = np.bincount(archs.ravel(), minlength=5)
    assert np.all(np.abs(counts / archs.size - 0.2) < 0.02)
    assert (which(archs) < 0).mean() > 0.95


def test_crossover_swaps_one_contiguous_segment_between_pairs():
    a, b = np.zeros(6, np.int32), np.full(6, 4, np.int32)
    pop, fit = np.stack([a, b] * (P // 2)), np.ones(P, np.float32)
    cross = ga(crossover_rate=1.0, mutation_rate=0.0, encoding="integer")
    archs = np.asarray(ask_after(cross, pop, fit)).reshape(-1, 2, 6)
    mixed = ~np.all(archs[:, 0] == archs[:, 1], axis=-1)  # the two parents differed
    assert 0.4 < mixed.mean() < 0.6
    np.testing.assert_array_equal(archs[mixed, 0] + archs[mixed, 1], 4)  # complementary
    assert np.all(np.count_nonzero(np.diff(archs[:, 0]), axis=1) <= 2)  # one segment swapped
    # On the binary genome the cut points fall inside genes too: values other than 0 and 7.
    space8 = SearchSpace(num_choices=(8,) * 4)
    binary = ga(space8, crossover_rate=1.0, mutation_rate=0.0)
    pop8 = np.stack([np.zeros(4, np.int32), np.full(4, 7, np.int32)] * (P // 2))
    archs = np.asarray(ask_after(binary, pop8, fit)).reshape(-1, 2, 4)
    mixed = ~np.all(archs[:, 0] == archs[:, 1], axis=-1)
    np.testing.assert_array_equal(archs[mixed, 0] + archs[mixed, 1], 7)
    bits = np.asarray(jax.vmap(space8.to_bits)(archs[:, 0]))
    assert np.all(np.count_nonzero(np.diff(bits), axis=1) <= 2)
    assert set(np.unique(archs)) > {0, 7}


@pytest.mark.parametrize("encoding", ["binary", "integer"])
def test_valid_architectures_in_a_space_with_odd_choice_counts(encoding):
    strategy = GeneticAlgorithm(space=ODD, population_size=999, crossover_rate=1.0,
                                mutation_rate=1.0, gene_mutation_rate=0.5, encoding=encoding)
    pop = np.tile(np.array([[4, 2, 1], [0, 0, 0], [2, 1, 0]], np.int32), (333, 1))
    archs = np.asarray(ask_after(strategy, pop, np.arange(999.0, dtype=np.float32)))
    assert archs.shape == (999, 3)
    assert bool(jax.vmap(ODD.is_valid)(archs).all())
    for d, n in enumerate(ODD.num_choices):
        assert set(np.unique(archs[:, d])) == set(range(n))


def test_short_final_batch_and_non_finite_fitness():
    strategy = NOVAR["binary"]
    state, metrics = jax.jit(strategy.tell)(strategy.init(KEY), MEMBERS[:3],
                                            np.array([np.inf, np.nan, 2.0], np.float32))
    np.testing.assert_array_equal(state.fitness[:4], [-np.inf, -np.inf, 2.0, -np.inf])
    assert np.all(np.isneginf(state.fitness[3:]))
    assert float(state.best.fitness) == 2.0 and int(state.best.num_told) == 3
    np.testing.assert_array_equal(state.best.arch, MEMBERS[2])
    assert float(metrics["batch_mean_fitness"]) == 2.0
    archs, _ = jax.jit(strategy.ask)(KEY, state)  # the padded slots take part as -inf
    assert archs.shape == (P, 6) and bool(jax.vmap(SPACE.is_valid)(archs).all())


@functools.partial(jax.jit, static_argnums=(0, 2))
def search_many(strategy, keys, num_rounds):
    """init + ask/evaluate/tell inside lax.scan, vmapped over seeds; best_fitness per round."""

    def run(key):
        state, metrics = scan_search(strategy, toy_fitness, key, num_rounds)
        return state, metrics["best_fitness"]

    return jax.vmap(run)(keys)


SEEDS = jax.random.split(jax.random.key(42), 8)


@pytest.mark.parametrize("encoding", ["binary", "integer"])
def test_search_runs_in_scan_under_vmap_deterministically(encoding):
    strategy = GeneticAlgorithm(space=SPACE, population_size=20, elitism=1, encoding=encoding)
    state, curve = search_many(strategy, SEEDS, 15)  # 300 evaluations
    assert curve.shape == (8, 15)
    assert np.all(np.diff(np.asarray(curve), axis=1) >= 0)
    np.testing.assert_array_equal(state.best.num_told, 300)
    np.testing.assert_array_equal(state.generation, 15)
    np.testing.assert_allclose(state.best.fitness, toy_fitness(state.best.arch))
    # Selection pressure: the last generation is far fitter than uniform samples (1.2 of 6).
    last_mean = np.asarray(state.fitness).mean()
    assert last_mean > 3.0, last_mean
    # Same key, same search, whatever the other seeds in the batch.
    again, again_curve = search_many(strategy, SEEDS[::-1], 15)
    np.testing.assert_array_equal(again_curve[::-1], curve)
    np.testing.assert_array_equal(again.population[::-1], state.population)

