"""Task families: meta-train and meta-test kept apart, features, the synthetic family's known
best architecture, MNIST-1D variants and per-task tables cached per task."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.data.datasets import dataset_from_arrays
from nas_jax.evaluators.table_build import synthetic_table
from nas_jax.meta.tasks import (
    ClassSubsetFamily,
    Mnist1dVariantFamily,
    SyntheticTableFamily,
    class_features,
    dense_fitness,
    per_task_tables,
    stack_tasks,
    table_fitness,
)
from nas_jax.spaces.base import SearchSpace
from nas_jax.spaces.macro import MLPSpace


@pytest.fixture(scope="module")
def toy_dataset():
    """8 classes, 12 train and 4 test examples each; example features encode the class."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(8), 16)
    x = y[:, None] * 10.0 + rng.standard_normal((len(y), 3))
    test = np.arange(len(y)) % 4 == 0
    return dataset_from_arrays("toy", x[~test], y[~test], x[test], y[test], num_classes=8,
                               valid_fraction=0.25, normalize=False)


def test_class_subset_tasks_keep_meta_train_and_meta_test_apart(toy_dataset):
    fam = ClassSubsetFamily(toy_dataset, ways=2, examples_per_class=3, num_train_tasks=5,
                            num_test_tasks=3, num_meta_test_classes=3, seed=1)
    assert np.intersect1d(fam.train_classes, fam.test_classes).size == 0
    assert np.intersect1d(fam.ids("train"), fam.ids("test")).size == 0
    for split, allowed in (("train", fam.train_classes), ("test", fam.test_classes)):
        for i in fam.ids(split):
            classes = fam.task_classes[i]
            assert np.isin(classes, allowed).all() and len(set(classes.tolist())) == 2
            task = fam.task(i)
            assert int(task.task_id) == i and task.features.shape == (2, 6)
            # Examples are from the task's classes (features encode the class, x ~ 10 * c).
            original = np.round(np.asarray(task.x)[:, 0] / 10.0).astype(int)
            np.testing.assert_array_equal(original, classes[np.asarray(task.y)])
            data = fam.dataset(i)
            assert data.num_classes == 2
            for s in (data.train, data.valid, data.test):
                back = np.round(np.asarray(s.x)[:, 0] / 10.0).astype(int)
                np.testing.assert_array_equal(back, classes[np.asarray(s.y)])
    # Fixed seeds: the same family again.
    again = ClassSubsetFamily(toy_dataset, ways=2, examples_per_class=3, num_train_tasks=5,
                              num_test_tasks=3, num_meta_test_classes=3, seed=1)
    np.testing.assert_array_equal(np.stack(again.task_classes), np.stack(fam.task_classes))
    assert stack_tasks([fam.task(0), fam.task(1)]).x.shape == (2, 6, 3)
    with pytest.raises(ValueError, match="ways=4"):
        ClassSubsetFamily(toy_dataset, ways=4, examples_per_class=3, num_train_tasks=1,
                          num_test_tasks=1, num_meta_test_classes=3)


def test_class_features_are_per_class_mean_and_std():
    x = jnp.array([[1.0, 2.0], [3.0, 2.0], [5.0, -1.0]])
    y = jnp.array([0, 0, 2])
    got = np.asarray(class_features(x, y, 3))
    np.testing.assert_allclose(got, [[2.0, 2.0, 1.0, 0.0], [0, 0, 0, 0], [5.0, -1.0, 0, 0]],
                               atol=1e-6)


def test_synthetic_family_best_is_the_known_function_of_the_feature():
    space = SearchSpace(num_choices=(3, 4, 2))
    fam = SyntheticTableFamily(space, num_train=6, num_test=3, seed=2)
    assert np.intersect1d(fam.ids("train"), fam.ids("test")).size == 0
    span = np.asarray(space.num_choices) - 1
    bests = []
    for i in range(9):
        target = fam.targets(fam.task_features[i])
        known = np.argmin(np.abs(np.arange(4)[None, :] / span[:, None] - target[:, None])
                          + 10.0 * (np.arange(4)[None, :] > span[:, None]), axis=1)
        np.testing.assert_array_equal(fam.best_arch(i), known)
        bests.append(tuple(known))
        # The set features are noisy copies of the task feature.
        feats = np.asarray(fam.task(i).features)
        np.testing.assert_allclose(feats.mean(0), fam.task_features[i], atol=0.1)
    assert len(set(bests)) > 2
    stacked = fam.stacked("train")
    assert stacked.fitness.shape == (6, space.size) and stacked.x is None
    archs = jnp.asarray(space.enumerate()[[0, 5, 23]])
    np.testing.assert_array_equal(table_fitness(fam.task(0), archs, space),
                                  np.asarray(fam.task(0).fitness)[[0, 5, 23]])


def test_mnist1d_variants_differ_and_share_feature_shapes():
    fam = Mnist1dVariantFamily(num_train=2, num_test=1, num_samples=200, feature_length=8,
                               ranges={"final_seq_length": (30, 50), "iid_noise_scale": (0.0, 0.1)})
    assert fam.ids("train").tolist() == [0, 1] and fam.ids("test").tolist() == [2]
    assert len({s["final_seq_length"] for s in fam.settings}) > 1
    assert len({s["iid_noise_scale"] for s in fam.settings}) == 3
    for i in range(3):
        data = fam.dataset(i)
        assert data.input_shape == (fam.settings[i]["final_seq_length"], 1)
        assert fam.task(i).features.shape == (10, 16)
    assert stack_tasks([fam.task(i).light() for i in range(3)]).features.shape == (3, 10, 16)
    with pytest.raises(ValueError, match="unknown MNIST-1D"):
        Mnist1dVariantFamily(num_train=1, num_test=1, ranges={"bogus": (0, 1)})


def test_per_task_tables_build_once_and_attach_dense_fitness(tmp_path):
    space = MLPSpace(max_layers=2, units=(4, 8), activations=("relu", "tanh"), input_shape=(3,),
                     num_classes=2)
    fam = SyntheticTableFamily(space, num_train=2, num_test=1, seed=0)
    calls = []

    def build(task_id, path):
        calls.append(task_id)
        return synthetic_table(space, jax.random.key(task_id), num_seeds=2)

    tables = per_task_tables(fam, build, str(tmp_path))
    assert calls == [0, 1, 2] and sorted(tables) == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"task-{i}.npz" for i in range(3)]
    fitness = np.asarray(fam.task(1).fitness)
    np.testing.assert_allclose(fitness, dense_fitness(tables[1]))
    canon = space.canonical(space.enumerate()[5])  # a table row is its class's representative
    row = int(np.argmax(np.all(tables[1].archs == canon, axis=1)))
    np.testing.assert_allclose(fitness[5], np.nanmean(tables[1].valid_accuracy[row]), rtol=1e-6)
    # A second call loads the cached files and builds nothing.
    again = per_task_tables(fam, build, str(tmp_path))
    assert calls == [0, 1, 2]
    np.testing.assert_array_equal(again[2].valid_accuracy, tables[2].valid_accuracy)
