"""Tests for nas_jax.data.tasks on small synthetic data whose features encode their index."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.data import (
    ClassSubsetTasks,
    EpisodeSampler,
    Split,
    class_index_table,
    dataset_from_arrays,
    make_class_subset_tasks,
    make_episode_samplers,
    split_classes,
)

COUNTS = np.array([12, 9, 15, 8, 20, 10, 11, 9, 14, 13])


@pytest.fixture(scope="module")
def toy():
    """A Split whose example i has features all equal to i, with shuffled uneven classes."""
    y = np.random.default_rng(0).permutation(np.repeat(np.arange(len(COUNTS)), COUNTS))
    x = np.broadcast_to(np.arange(len(y), dtype=np.float32)[:, None, None], (len(y), 2, 3))
    return Split(x=jnp.asarray(x), y=jnp.asarray(y, jnp.int32))


def _indices(x) -> np.ndarray:
    """Recovers the example indices from features made by `toy`."""
    x = np.asarray(x)
    assert np.all(x == x[..., :1, :1])
    return x[..., 0, 0].astype(int)


def test_split_classes_disjoint_deterministic_and_explicit():
    train, test = split_classes(10, 3, seed=5)
    assert train.dtype == test.dtype == np.int32
    assert len(test) == 3 and np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(10))
    np.testing.assert_array_equal(split_classes(10, 3, seed=5)[1], test)
    assert not np.array_equal(split_classes(10, 3, seed=6)[1], test)
    train, test = split_classes(10, [7, 2])
    assert test.tolist() == [2, 7] and 2 not in train and len(train) == 8
    train, test = split_classes([3, 5, 9, 11], 1, seed=0)
    assert set(train.tolist()) | set(test.tolist()) == {3, 5, 9, 11}
    for bad in (0, 10, [1, 1], [10], []):
        with pytest.raises(ValueError):
            split_classes(10, bad)


def test_class_index_table(toy):
    y = np.asarray(toy.y)
    classes = np.array([4, 1, 7])
    table, counts = class_index_table(y, classes)
    assert table.shape == (3, 20) and counts.tolist() == [20, 9, 9]
    for row, count, c in zip(table, counts, classes, strict=True):
        np.testing.assert_array_equal(row[:count], np.flatnonzero(y == c))
        assert np.all(row[count:] == -1)


def test_class_subset_tasks_relabel_and_static_shapes(toy):
    allowed = np.array([0, 2, 3, 5, 8, 9])
    tasks = ClassSubsetTasks.create(toy, allowed, examples_per_class=8)
    sample = jax.jit(ClassSubsetTasks.sample, static_argnames="ways")
    y_orig = np.asarray(toy.y)
    seen = set()
    for seed in range(5):
        x, y, classes = sample(tasks, jax.random.key(seed), ways=4)
        assert x.shape == (32, 2, 3) and y.shape == (32,) and classes.shape == (4,)
        assert y.dtype == classes.dtype == jnp.int32
        classes, idx = np.asarray(classes), _indices(x)
        assert len(set(classes.tolist())) == 4 and set(classes.tolist()) <= set(allowed.tolist())
        np.testing.assert_array_equal(np.asarray(y), np.repeat(np.arange(4), 8))
        np.testing.assert_array_equal(y_orig[idx], classes[np.asarray(y)])
        for label in range(4):
            assert len(set(idx[np.asarray(y) == label].tolist())) == 8  # no replacement
        seen.add(tuple(classes.tolist()))
    assert len(seen) > 1
    again = sample(tasks, jax.random.key(4), ways=4)
    np.testing.assert_array_equal(again[0], x)


def test_class_subset_tasks_with_replacement_and_limits(toy):
    with pytest.raises(ValueError, match=r"needs 10 examples per class; classes \[1, 3, 7\]"):
        ClassSubsetTasks.create(toy, [1, 2, 3, 7], examples_per_class=10)
    tasks = ClassSubsetTasks.create((toy.x, toy.y), [1, 3], examples_per_class=30, replace=True)
    with pytest.raises(ValueError, match="ways"):
        tasks.sample(jax.random.key(0), 3)
    with pytest.raises(ValueError, match="distinct"):
        ClassSubsetTasks.create(toy, [1, 1], examples_per_class=2)
    x, y, classes = jax.jit(ClassSubsetTasks.sample, static_argnums=2)(tasks, jax.random.key(0), 2)
    idx = _indices(x)
    assert x.shape == (60, 2, 3)
    np.testing.assert_array_equal(np.asarray(toy.y)[idx], np.asarray(classes)[np.asarray(y)])
    assert len(set(idx[:30].tolist())) < 30  # 30 draws from 9 examples must repeat


def test_episode_sampler_support_query_disjoint(toy):
    allowed = np.array([1, 2, 4, 6, 9])
    sampler = EpisodeSampler.create(toy, allowed, ways=3, shots=2, queries=5)
    episode = jax.jit(lambda s, key: s.sample(key))(sampler, jax.random.key(1))
    assert episode.support_x.shape == (6, 2, 3) and episode.query_x.shape == (15, 2, 3)
    assert episode.support_y.dtype == episode.query_y.dtype == jnp.int32
    np.testing.assert_array_equal(episode.support_y, np.repeat(np.arange(3), 2))
    np.testing.assert_array_equal(episode.query_y, np.repeat(np.arange(3), 5))
    classes, y_orig = np.asarray(episode.classes), np.asarray(toy.y)
    assert len(set(classes.tolist())) == 3 and set(classes.tolist()) <= set(allowed.tolist())
    support, query = _indices(episode.support_x), _indices(episode.query_x)
    np.testing.assert_array_equal(y_orig[support], classes[np.asarray(episode.support_y)])
    np.testing.assert_array_equal(y_orig[query], classes[np.asarray(episode.query_y)])
    assert len(set(support.tolist()) | set(query.tolist())) == 21


def test_episode_sampler_batch_jit_vmap_and_determinism(toy):
    sampler = EpisodeSampler.create(toy, None, ways=5, shots=1, queries=3)
    traces = []

    def batch(s, key):
        traces.append(1)
        return s.sample_batch(key, 16)

    batch = jax.jit(batch)
    first = batch(sampler, jax.random.key(0))
    second = batch(sampler, jax.random.key(1))
    assert len(traces) == 1
    assert first.support_x.shape == (16, 5, 2, 3) and first.query_y.shape == (16, 15)
    assert first.classes.shape == (16, 5)
    assert len({tuple(c) for c in np.asarray(first.classes).tolist()}) > 1
    assert not np.array_equal(first.query_x, second.query_x)
    np.testing.assert_array_equal(batch(sampler, jax.random.key(0)).query_x, first.query_x)
    single = jax.jit(lambda s, key: s.sample(jax.random.split(key, 16)[3]))(
        sampler, jax.random.key(0)
    )
    np.testing.assert_array_equal(single.support_x, first.support_x[3])
    y_orig, classes = np.asarray(toy.y), np.asarray(first.classes)
    query_y = np.asarray(first.query_y)
    expected = np.take_along_axis(classes, query_y, axis=1)
    np.testing.assert_array_equal(y_orig[_indices(first.query_x)], expected)


def test_episode_sampler_validation(toy):
    with pytest.raises(ValueError, match="ways"):
        EpisodeSampler.create(toy, [0, 1], ways=3, shots=1, queries=1)
    with pytest.raises(ValueError, match=r"needs 10 examples per class; classes \[3\]"):
        EpisodeSampler.create(toy, [0, 3], ways=2, shots=5, queries=5)
    with pytest.raises(ValueError, match="shots"):
        EpisodeSampler.create(toy, None, ways=2, shots=0, queries=1)


def test_meta_samplers_use_disjoint_classes(toy):
    train, test = make_episode_samplers(toy, 4, ways=3, shots=2, queries=2, seed=1)
    train_classes, test_classes = set(train.classes.tolist()), set(test.classes.tolist())
    assert len(test_classes) == 4 and not train_classes & test_classes
    assert train_classes | test_classes == set(range(10))
    episodes = jax.jit(lambda s, k: s.sample_batch(k, 64))(test, jax.random.key(2))
    assert set(np.asarray(episodes.classes).ravel().tolist()) == test_classes
    y_orig = np.asarray(toy.y)
    assert set(y_orig[_indices(episodes.support_x)].ravel().tolist()) <= test_classes
    train_tasks, test_tasks = make_class_subset_tasks(toy, [0, 4, 8], examples_per_class=5)
    assert test_tasks.classes.tolist() == [0, 4, 8]
    assert not set(train_tasks.classes.tolist()) & {0, 4, 8}


def test_episodes_from_a_loaded_dataset():
    from sklearn.datasets import load_digits

    digits = load_digits()
    ds = dataset_from_arrays(
        "digits",
        digits.images[:, :, :, None],
        digits.target,
        digits.images[:10, :, :, None],
        digits.target[:10],
    )
    _, test = make_episode_samplers(ds.train, 4, ways=4, shots=1, queries=5)
    episode = jax.jit(lambda s, k: s.sample(k))(test, jax.random.key(0))
    assert episode.support_x.shape == (4, 8, 8, 1) and episode.query_x.shape == (20, 8, 8, 1)
    assert set(np.asarray(episode.classes).tolist()) == set(test.classes.tolist())
    x, y = np.asarray(ds.train.x).reshape(len(ds.train), -1), np.asarray(ds.train.y)
    rows = np.asarray(episode.query_x).reshape(20, -1)
    for row, label in zip(rows, np.asarray(episode.query_y), strict=True):
        matches = np.flatnonzero((x == row).all(axis=1))
        assert len(matches) and set(y[matches].tolist()) == {int(episode.classes[label])}
