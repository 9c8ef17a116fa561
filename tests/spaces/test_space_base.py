"""SearchSpace base operators (jitted): sample, mutate, crossover, one-hot, bit genomes."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nas_jax import registry
from nas_jax.spaces.base import SearchSpace
from nas_jax.spaces.nb201 import NB201Space

SPACE = SearchSpace(num_choices=(5, 3, 2, 1))
KEYS = jax.random.split(jax.random.key(0), 2000)


@functools.partial(jax.jit, static_argnums=0)
def sample_many(space, keys):
    return jax.vmap(space.sample)(keys)


@functools.partial(jax.jit, static_argnums=0)
def mutate_many(space, keys, archs):
    return jax.vmap(space.mutate)(keys, archs)


@functools.partial(jax.jit, static_argnums=0)
def crossover_many(space, keys, a, b):
    return jax.vmap(space.crossover, in_axes=(0, None, None))(keys, a, b)


def test_sizes():
    assert SPACE.num_decisions == 4 and SPACE.max_choices == 5 and SPACE.size == 30
    assert SPACE.bits_per_decision == (3, 2, 1, 1) and SPACE.num_bits == 7


def test_space_is_a_static_argument():
    assert hash(SearchSpace((5, 3, 2, 1))) == hash(SPACE) and SearchSpace((5, 3, 2, 1)) == SPACE
    f = jax.jit(lambda s, k: s.sample(k), static_argnums=0)
    assert f(SPACE, KEYS[0]).shape == (4,)
    assert f(NB201Space(channels=3), KEYS[0]).shape == (6,)


def test_sample_in_range_and_covers_every_value():
    archs = np.asarray(sample_many(SPACE, KEYS))
    assert archs.dtype == np.int32 and archs.shape == (2000, 4)
    for d, n in enumerate(SPACE.num_choices):
        counts = np.bincount(archs[:, d], minlength=n)
        assert len(counts) == n  # nothing out of range
        expected = len(archs) / n
        assert np.all(np.abs(counts - expected) < 0.25 * expected), (d, counts)
    assert len({tuple(a) for a in archs}) == SPACE.size  # every architecture is reachable
    assert bool(jax.jit(jax.vmap(SPACE.is_valid))(archs).all())


def test_sample_population_and_determinism():
    sample_population = jax.jit(SPACE.sample_population, static_argnums=1)
    pop = sample_population(KEYS[1], 16)
    assert pop.shape == (16, 4) and pop.dtype == jnp.int32
    np.testing.assert_array_equal(pop, sample_population(KEYS[1], 16))
    assert not np.array_equal(pop, sample_population(KEYS[2], 16))


def test_mutate_changes_exactly_one_decision():
    parents = sample_many(SPACE, KEYS[::-1])
    children = np.asarray(mutate_many(SPACE, KEYS, parents))
    parents = np.asarray(parents)
    diff = children != parents
    assert np.all(diff.sum(1) == 1)
    assert children.dtype == np.int32
    assert bool(jax.vmap(SPACE.is_valid)(children).all())
    pos = diff.argmax(1)
    assert set(pos.tolist()) == {0, 1, 2}  # never the single-choice decision 3
    # From a fixed value, every other value of that decision is reached.
    rows = (pos == 0) & (parents[:, 0] == 2)
    assert set(children[rows, 0].tolist()) == {0, 1, 3, 4}


def test_mutate_with_one_mutable_decision():
    space = SearchSpace(num_choices=(1, 4, 1))
    arch = jnp.array([0, 3, 0], jnp.int32)
    children = np.asarray(mutate_many(space, KEYS[:200], jnp.tile(arch, (200, 1))))
    assert np.all(children[:, [0, 2]] == 0)
    assert set(children[:, 1].tolist()) == {0, 1, 2}


def test_crossover_is_two_point():
    space = SearchSpace(num_choices=(4,) * 8)
    a, b = jnp.zeros(8, jnp.int32), jnp.array([1, 2, 3, 1, 2, 3, 1, 2], jnp.int32)
    children = np.asarray(crossover_many(space, KEYS[:500], a, b))
    from_b = children == np.asarray(b)
    assert np.all(from_b | (children == 0))  # each gene from one of the parents
    # The genes taken from b form one contiguous segment (possibly empty).
    edges = np.abs(np.diff(np.pad(from_b.astype(int), ((0, 0), (1, 1))), axis=1)).sum(1)
    assert np.all(edges <= 2)
    assert 0.5 < from_b.any(1).mean() < 1.0 and from_b.all(1).any()
    segments = {(r.argmax(), r.sum()) for r in from_b if r.any()}
    assert len(segments) > 20  # many different cut points
    assert {s for s, _ in segments} >= set(range(8))
    np.testing.assert_array_equal(crossover_many(space, KEYS[:500], b, b), np.tile(b, (500, 1)))


def test_one_hot_and_choice_mask():
    arch = jnp.array([4, 2, 0, 0], jnp.int32)
    oh = jax.jit(SPACE.one_hot)(arch)
    assert oh.shape == (4, 5) and oh.dtype == jnp.float32
    np.testing.assert_array_equal(oh.sum(1), np.ones(4))
    np.testing.assert_array_equal(oh.argmax(1), arch)
    mask = np.asarray(SPACE.choice_mask())
    np.testing.assert_array_equal(mask.sum(1), SPACE.num_choices)
    ohs = jax.vmap(SPACE.one_hot)(jnp.asarray(SPACE.enumerate()))
    assert float(jnp.sum(jnp.where(mask, 0.0, ohs))) == 0.0  # never a padded choice


def test_bits_round_trip_and_layout():
    to_bits = jax.jit(jax.vmap(SPACE.to_bits))
    from_bits = jax.jit(jax.vmap(SPACE.from_bits))
    archs = jnp.asarray(SPACE.enumerate())
    bits = np.asarray(to_bits(archs))
    assert bits.shape == (30, 7) and set(np.unique(bits)) <= {0, 1}
    assert len({tuple(b) for b in bits}) == 30
    np.testing.assert_array_equal(from_bits(bits), archs)
    # Most significant bit first per gene: 4 -> 100, 2 -> 10, 1 -> 1, 0 -> 0.
    i = [tuple(a) for a in np.asarray(archs)].index((4, 2, 1, 0))
    np.testing.assert_array_equal(bits[i], [1, 0, 0, 1, 0, 1, 0])


def test_from_bits_out_of_range_codes_stay_valid():
    every = (np.arange(128)[:, None] >> np.arange(6, -1, -1)) & 1  # all 7-bit genomes
    decoded = np.asarray(jax.jit(jax.vmap(SPACE.from_bits))(jnp.asarray(every)))
    is_valid = jax.jit(jax.vmap(SPACE.is_valid))
    assert bool(is_valid(decoded).all())
    assert len({tuple(d) for d in decoded}) == SPACE.size  # still reaches everything
    # Out-of-range codes wrap: 7 -> 2 and 5 -> 0 (5-way), 3 -> 0 (3-way), 1 -> 0 (1-way).
    np.testing.assert_array_equal(decoded[0b1111111], [2, 0, 1, 0])
    np.testing.assert_array_equal(decoded[0b1010000], [0, 0, 0, 0])
    bad = jnp.array([[5, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1], [4, 2, 1, 0]])
    np.testing.assert_array_equal(is_valid(bad), [False, False, False, True])


def test_validate_names_the_problem():
    out = SPACE.validate([4, 2, 1, 0])
    assert out.dtype == np.int32
    with pytest.raises(ValueError, match="decision 1 has value 3; allowed 0..2"):
        SPACE.validate([0, 3, 0, 0])
    with pytest.raises(ValueError, match="decision 3 has value -1"):
        SPACE.validate([0, 0, 0, -1])
    with pytest.raises(ValueError, match=r"shape \(3,\).*\(4,\)"):
        SPACE.validate([0, 0, 0])


def test_enumerate_and_strings():
    archs = SPACE.enumerate()
    assert archs.shape == (30, 4) and archs.dtype == np.int32
    assert len({tuple(a) for a in archs}) == 30
    assert bool(jax.vmap(SPACE.is_valid)(archs).all())
    with pytest.raises(ValueError, match="limit"):
        SPACE.enumerate(limit=10)
    assert SPACE.to_string([4, 2, 1, 0]) == "4,2,1,0"
    np.testing.assert_array_equal(SPACE.from_string("4,2,1,0"), [4, 2, 1, 0])
    with pytest.raises(ValueError):
        SPACE.from_string("4,2,2,0")
    np.testing.assert_array_equal(SPACE.canonical([1, 1, 1, 0]), [1, 1, 1, 0])
    for cost in (SPACE.num_params, SPACE.flops):
        with pytest.raises(NotImplementedError):
            cost([0, 0, 0, 0])


def test_space_registry():
    assert "nb201" in registry.SPACES.names()
    cfg = ml_collections.ConfigDict(dict(channels=4, cells_per_stage=2))
    space = registry.SPACES.build("nb201", cfg, input_shape=[8, 8, 1], num_classes=3)
    assert space == NB201Space(channels=4, cells_per_stage=2, input_shape=(8, 8, 1),
                               num_classes=3)
    hash(space)
    with pytest.raises(ValueError, match="unknown space; allowed: .*nb201"):
        registry.SPACES.build("nope", cfg)
    with pytest.raises(ValueError, match="registered twice"):
        registry.SPACES.register("nb201", lambda cfg: None)
