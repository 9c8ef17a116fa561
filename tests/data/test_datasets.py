"""Tests for nas_jax.data.datasets and the offline builders; all offline, under a socket guard."""

import random
import socket
import threading
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from nas_jax.data import (
    KNOWN_DATASETS,
    MNIST1D_DEFAULTS,
    DatasetNotPreparedError,
    builders,
    check_dataset_name,
    clear_cache,
    dataset_from_arrays,
    datasets,
    load_dataset,
    make_mnist1d,
    prepare_builtin,
    resolve_data_dir,
    stratified_split,
)

BUILTIN_SIZES = {"digits": ((8, 8, 1), 1438, 359), "mnist1d": ((40, 1), 4000, 1000)}
MOCK_SHAPES = {
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "svhn_cropped": ((32, 32, 3), 10),
    "omniglot": ((105, 105, 1), 1623),
}


@pytest.fixture(scope="module")
def network_attempts():
    """Makes every socket connection or DNS lookup fail, and records the attempts."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in an offline test")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("connect", "connect_ex"):
            patch.setattr(socket.socket, name, refuse)
        patch.setattr(socket, "create_connection", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        yield attempts


@pytest.fixture(autouse=True)
def offline(network_attempts):
    yield
    assert network_attempts == [], f"network was attempted: {network_attempts}"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    clear_cache()
    return str(tmp_path_factory.mktemp("tfds"))


def _sorted_rows(x: np.ndarray) -> np.ndarray:
    flat = np.asarray(x).reshape(len(x), -1)
    return flat[np.lexsort(flat.T[::-1])]


@pytest.mark.parametrize("name", sorted(BUILTIN_SIZES))
def test_builtin_shapes_splits_and_labels(name, data_dir):
    shape, num_train, num_test = BUILTIN_SIZES[name]
    ds = load_dataset(name, data_dir=data_dir)
    info = prepare_builtin(name, data_dir).info
    assert info.splits["train"].num_examples == num_train
    assert info.splits["test"].num_examples == num_test
    assert ds.name == name and ds.num_classes == 10 and ds.input_shape == shape
    assert len(ds.train) + len(ds.valid) == num_train and len(ds.test) == num_test
    assert len(ds.valid) == round(0.1 * num_train)
    for split in (ds.train, ds.valid, ds.test):
        assert isinstance(split.x, jax.Array) and isinstance(split.y, jax.Array)
        assert split.x.shape == (len(split), *shape) and split.x.dtype == np.float32
        assert split.y.dtype == np.int32
        assert set(np.unique(split.y).tolist()) == set(range(10))


@pytest.mark.parametrize("name", sorted(BUILTIN_SIZES))
def test_builtin_normalisation_uses_train_statistics(name, data_dir):
    ds = load_dataset(name, data_dir=data_dir, as_jax=False)
    raw = load_dataset(name, data_dir=data_dir, as_jax=False, normalize=False)
    x = ds.train.x.reshape(-1, ds.train.x.shape[-1])
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-4)
    assert ds.mean.shape == ds.std.shape == (ds.input_shape[-1],)
    np.testing.assert_allclose(raw.train.x.mean(), ds.mean[0], rtol=1e-5, atol=1e-6)
    for split, raw_split in ((ds.valid, raw.valid), (ds.test, raw.test)):
        np.testing.assert_allclose(split.x * ds.std + ds.mean, raw_split.x, atol=1e-4)
        np.testing.assert_array_equal(split.y, raw_split.y)
    np.testing.assert_array_equal(raw.mean, 0.0)
    np.testing.assert_array_equal(raw.std, 1.0)
    with pytest.raises(ValueError, match="read-only"):
        ds.train.x[0] = 0.0


def test_digits_content_matches_sklearn(data_dir):
    from sklearn.datasets import load_digits

    raw = load_dataset("digits", data_dir=data_dir, normalize=False, as_jax=False)
    x = np.concatenate([raw.train.x, raw.valid.x, raw.test.x])
    y = np.concatenate([raw.train.y, raw.valid.y, raw.test.y])
    digits = load_digits()
    np.testing.assert_array_equal(np.bincount(y), np.bincount(digits.target))
    np.testing.assert_array_equal(_sorted_rows(x), _sorted_rows(digits.images))
    test_counts = np.bincount(raw.test.y, minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * np.bincount(digits.target)) <= 1)


def test_mnist1d_content_matches_generator(data_dir):
    raw = load_dataset("mnist1d", data_dir=data_dir, normalize=False, as_jax=False)
    data = make_mnist1d()
    np.testing.assert_array_equal(_sorted_rows(raw.test.x), _sorted_rows(data["x_test"]))
    train_x = np.concatenate([raw.train.x, raw.valid.x])
    np.testing.assert_array_equal(_sorted_rows(train_x), _sorted_rows(data["x"]))


def test_load_is_deterministic_and_seeded(data_dir):
    first = load_dataset("digits", data_dir=data_dir, seed=3, as_jax=False)
    assert load_dataset("digits", data_dir=data_dir, seed=3, as_jax=False) is first
    clear_cache()
    again = load_dataset("digits", data_dir=data_dir, seed=3, as_jax=False)
    assert again is not first
    for a, b in ((first.train, again.train), (first.valid, again.valid)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    other = load_dataset("digits", data_dir=data_dir, seed=4, as_jax=False)
    assert len(other.valid) == len(first.valid)
    assert not np.array_equal(_sorted_rows(other.valid.x), _sorted_rows(first.valid.x))
    np.testing.assert_array_equal(other.test.y, first.test.y)
    np.testing.assert_allclose(
        other.test.x * other.std + other.mean, first.test.x * first.std + first.mean, atol=1e-4
    )


def test_second_load_does_not_rebuild(data_dir, monkeypatch):
    load_dataset("digits", data_dir=data_dir)
    folder = Path(data_dir) / "nas_jax_digits" / "1.0.0"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert any(name.endswith("-of-00001") for name in before)

    def fail(*args, **kwargs):
        raise AssertionError("the dataset was generated again")

    monkeypatch.setattr(builders.NasJaxDigits, "_split_generators", fail)
    clear_cache()
    ds = load_dataset("digits", data_dir=data_dir, seed=11)
    assert len(ds.test) == 359
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    # Later loads read the array cache written by the first, not the records.
    assert datasets.ARRAYS_CACHE in before
    monkeypatch.setattr(datasets, "_read_source", fail)
    clear_cache()
    again = load_dataset("digits", data_dir=data_dir, seed=11)
    np.testing.assert_array_equal(again.test.x, ds.test.x)
    np.testing.assert_array_equal(again.train.y, ds.train.y)


def test_concurrent_builds_generate_once(tmp_path, monkeypatch):
    calls = []
    original = builders.NasJaxDigits._split_generators

    def counted(self, dl_manager):
        calls.append(1)
        return original(self, dl_manager)

    monkeypatch.setattr(builders.NasJaxDigits, "_split_generators", counted)
    results, errors = [], []

    def build():
        try:
            results.append(prepare_builtin("digits", tmp_path).info.splits["test"].num_examples)
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [359, 359] and len(calls) == 1


def test_make_mnist1d_defaults_overrides_and_global_rng():
    from mnist1d.data import get_dataset_args

    reference = get_dataset_args(as_dict=True)
    reference.pop("url")
    reference["padding"] = tuple(reference["padding"])
    assert reference == MNIST1D_DEFAULTS

    np.random.seed(123)
    random.seed(123)
    expected = (np.random.rand(), random.random())
    np.random.seed(123)
    random.seed(123)
    data = make_mnist1d(num_samples=200, final_seq_length=20, seed=7)
    assert (np.random.rand(), random.random()) == expected
    assert data["x"].shape == (160, 20) and data["x_test"].shape == (40, 20)
    assert data["x"].dtype == np.float32 and data["y"].dtype == np.int32
    assert data["templates"].shape == (10, 12)
    np.testing.assert_array_equal(
        make_mnist1d(num_samples=200, final_seq_length=20, seed=7)["x"], data["x"]
    )
    assert not np.array_equal(make_mnist1d(num_samples=200, final_seq_length=20)["x"], data["x"])
    with pytest.raises(ValueError, match="'bogus'.*num_samples"):
        make_mnist1d(bogus=1)


@pytest.mark.parametrize("name", sorted(MOCK_SHAPES))
def test_catalog_datasets_with_mock_data(name, tmp_path):
    shape, num_classes = MOCK_SHAPES[name]
    clear_cache()
    with tfds.testing.mock_data(num_examples=40):
        ds = load_dataset(name, data_dir=tmp_path, as_jax=False)
    clear_cache()
    assert ds.input_shape == shape and ds.num_classes == num_classes
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (36, 4, 40)
    assert ds.train.x.shape == (36, *shape) and ds.train.x.dtype == np.float32
    assert ds.test.y.dtype == np.int32 and 0 <= ds.test.y.min() and ds.test.y.max() < num_classes
    flat = ds.train.x.reshape(-1, shape[-1])
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(flat.std(axis=0), 1.0, atol=1e-4)
    assert ds.mean.shape == (shape[-1],) and np.all(ds.std > 0)


def test_omniglot_resize_with_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=20):
        ds = load_dataset("omniglot", data_dir=tmp_path, image_size=28, normalize=False)
    clear_cache()
    assert ds.input_shape == (28, 28, 1) and ds.train.x.shape[1:] == (28, 28, 1)
    assert 0.0 <= float(ds.train.x.min()) and float(ds.train.x.max()) <= 255.0


@pytest.mark.parametrize("name", ["cifar10", "omniglot"])
def test_unprepared_catalog_dataset_raises_clear_error(name, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotPreparedError) as info:
        load_dataset(name, data_dir=empty)
    message = str(info.value)
    assert f"'{name}' is not prepared" in message and "never downloads" in message
    assert f"tfds build {name} --file_format=array_record --data_dir={empty}" in message
    assert list(empty.rglob("*")) == []


def test_unknown_names_and_bad_arguments():
    with pytest.raises(ValueError) as info:
        load_dataset("nope")
    assert "unknown dataset 'nope'" in str(info.value)
    assert "known: " + ", ".join(KNOWN_DATASETS) in str(info.value)
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; known: digits, mnist1d"):
        check_dataset_name("cifar")
    assert check_dataset_name("omniglot") == "omniglot"
    assert set(KNOWN_DATASETS) == set(BUILTIN_SIZES) | set(MOCK_SHAPES) | {"glyphs"}
    with pytest.raises(ValueError, match="image_size is only supported for omniglot"):
        load_dataset("digits", image_size=4)


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    assert resolve_data_dir("digits") == str(Path("~/.cache/nas_jax/tfds").expanduser())
    assert resolve_data_dir("cifar10") is None
    assert resolve_data_dir("cifar10", tmp_path) == str(tmp_path)
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir("mnist1d") == str(tmp_path / "env")
    assert resolve_data_dir("mnist") == str(tmp_path / "env")
    assert resolve_data_dir("mnist", tmp_path) == str(tmp_path)


def test_stratified_split_exact_sizes_and_per_class_balance():
    labels = np.repeat(np.arange(5), [3, 7, 10, 21, 9])
    keep, held = stratified_split(labels, 0.25, seed=1)
    assert len(held) == round(0.25 * len(labels))
    assert np.intersect1d(keep, held).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([keep, held])), np.arange(len(labels)))
    per_class = np.bincount(labels[held], minlength=5)
    assert np.all(np.abs(per_class - 0.25 * np.bincount(labels)) < 1)
    again = stratified_split(labels, 0.25, seed=1)
    np.testing.assert_array_equal(again[1], held)
    assert not np.array_equal(stratified_split(labels, 0.25, seed=2)[1], held)
    assert stratified_split(labels, 0.0, seed=1)[1].size == 0
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(labels, 1.0, seed=1)


def test_dataset_from_arrays_infers_classes_and_guards_constant_channels():
    x = np.zeros((30, 4, 2), np.float32)
    x[..., 0] = np.arange(30)[:, None]
    y = np.arange(30) % 3
    ds = dataset_from_arrays("toy", x, y, x[:6], y[:6], valid_fraction=0.2, as_jax=False)
    assert ds.num_classes == 3 and ds.input_shape == (4, 2)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (24, 6, 6)
    np.testing.assert_array_equal(ds.std[1], 1.0)
    np.testing.assert_array_equal(ds.train.x[..., 1], 0.0)
    assert np.bincount(ds.valid.y).tolist() == [2, 2, 2]
