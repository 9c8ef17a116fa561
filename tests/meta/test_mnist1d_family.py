"""The ``mnist1d`` meta-learning family on a tiny MNIST-1D variant pool and a 10-architecture
MLP space: a short meta-training run builds one trained table per task (``per_task_tables`` +
``training_table_builder``); the tables are cached (a second pass trains nothing), attached to
the tasks as dense fitness, and an architecture's entry equals training it once more with the
same key; the meta-test path reuses the tables and refuses a missing or mismatched folder."""

import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.config import ConfigError
from nas_jax.evaluators.table import Table, arch_codes, canonical_archs
from nas_jax.evaluators.table_build import _trainer
from nas_jax.meta.meta_train import (
    FINGERPRINT_FILE,
    build_family,
    meta_train_config,
    run_meta_train,
    validate_meta_train,
)
from nas_jax.meta.tasks import per_task_tables
from nas_jax.spaces.macro import MacroCNNSpace
from nas_jax.train.steps import recipe_from_config


@pytest.fixture(scope="module", autouse=True)
def non_partitionable_threefry():
    with jax.threefry_partitionable(False):
        yield


def _config():
    c = meta_train_config()
    c.steps, c.log_every, c.checkpoint_every = 4, 2, 2
    c.progress_interval_s = 0.0
    f = c.family
    f.name, f.num_train, f.num_test, f.num_samples = "mnist1d", 2, 1, 200
    f.max_layers, f.units, f.activations = 1, (4, 8, 16, 32, 64), ("relu", "tanh")
    f.table.update(dict(num_seeds=2, steps=8, batch_size=16, chunk_size=10))
    c.controller.update(dict(hidden_size=8, embed_size=4, encoder_hidden=8, batch_size=4))
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A meta-training run whose family builds its tables in ``<workdir>/tables``."""
    workdir = str(tmp_path_factory.mktemp("meta_mnist1d"))
    config = _config()
    results = run_meta_train(config, workdir)
    family = build_family(config.family, workdir, build_tables=False)
    return config, workdir, results, family


def test_meta_train_runs_end_to_end(trained):
    _, workdir, results, family = trained
    assert family.space.size == 10
    assert os.path.isfile(os.path.join(workdir, "controller", "controller.json"))
    assert results["task_ids"] == [2] and results["steps"] == 4
    assert 0.0 <= results["mean_regret"] <= 1.0
    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
        assert json.load(f)["mode"] == "data"


def test_tables_are_cached_and_attached(trained):
    _, workdir, _, family = trained
    folder = os.path.join(workdir, "tables")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".npz"))
    assert names == ["task-0.npz", "task-1.npz", "task-2.npz"]
    mtimes = [os.path.getmtime(os.path.join(folder, n)) for n in names]
    calls = []
    tables = per_task_tables(family, lambda i, path: calls.append(i), folder,
                             space=family.space)
    assert calls == []  # every table came from the cache
    assert mtimes == [os.path.getmtime(os.path.join(folder, n)) for n in names]
    archs = canonical_archs(family.space)
    codes = arch_codes(family.space, archs)
    for i, table in tables.items():
        fitness = np.asarray(family.task(i).fitness)
        assert fitness.shape == (family.space.size,)
        assert np.all((fitness >= 0.0) & (fitness <= 1.0)) and np.ptp(fitness) > 0
        np.testing.assert_allclose(fitness[codes], table.valid_accuracy.mean(1), rtol=1e-6)
    assert not np.array_equal(family.task(0).fitness, family.task(1).fitness)


def test_table_entry_equals_training_again(trained):
    """Row r, seed j was trained with key fold_in(fold_in(key(seed), j), r): training that
    architecture again with that key on the task's data reproduces the table."""
    config, workdir, _, family = trained
    from nas_jax.meta.meta_train import table_build_recipe

    build = table_build_recipe(config.family)
    trainer = _trainer(family.space, recipe_from_config(build.evaluator), "vmap")
    table = Table.load(os.path.join(workdir, "tables", "task-1.npz"))
    row = 3
    arch = canonical_archs(family.space)[row]
    root = jax.random.key(config.family.seed)
    keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(root, j), row) for j in range(2)])
    weights = jax.vmap(family.space.one_hot)(jnp.asarray(np.stack([arch, arch])))
    data = family.dataset(1)
    splits = tuple((s.x, s.y) for s in (data.train, data.valid, data.test))
    results, _ = trainer(keys, weights, splits)
    np.testing.assert_allclose(results["valid_accuracy"], table.valid_accuracy[row], atol=1e-6)


def test_meta_test_path_refuses_missing_or_foreign_tables(trained, tmp_path):
    config, workdir, _, _ = trained
    with pytest.raises(ConfigError, match="no table"):
        build_family(config.family, str(tmp_path), build_tables=False)
    other = _config()
    other.family.table.steps = 9
    with open(os.path.join(workdir, "tables", FINGERPRINT_FILE), encoding="utf-8") as f:
        assert json.load(f)["table"]["steps"] == 8
    with pytest.raises(ConfigError, match="table_dir"):
        build_family(other.family, workdir)


def test_config_mistakes_name_the_field():
    c = _config()
    c.family.table.execution = "switch"
    with pytest.raises(ConfigError, match="family.table.execution"):
        validate_meta_train(c)
    c = _config()
    c.family.activations = ("relu", "bogus")
    with pytest.raises(ConfigError, match="family.activations"):
        validate_meta_train(c)
    c = _config()
    c.family.space = "choices"
    with pytest.raises(ConfigError, match="family.space='choices'; allowed for the mnist1d"):
        validate_meta_train(c)
    for value, message in [((0, 9), "generator needs values >= 1"),
                           ((2.0, 9), "an integer setting"), ((9, 2), "lo <= hi"),
                           ((1, 2, 3), r"must be \(lo, hi\)")]:
        c = _config()
        c.family.ranges.max_translation = value
        with pytest.raises(ConfigError, match=f"family.ranges.max_translation.*{message}"):
            validate_meta_train(c)


@pytest.mark.parametrize("name", ["meta_controller_mnist1d", "meta_controller_mnist1d_cnn",
                                  "meta_controller_synthetic"])
def test_shipped_configs_validate(name):
    module = importlib.import_module(f"configs.{name}")
    for arg in (None, "learned", "none"):
        validate_meta_train(module.get_config(arg))


def test_macro_cnn_family_draws_its_ranges_and_builds_cnn_tables(tmp_path):
    """``family.space='macro_cnn'`` with ``family.ranges``: each task's generator settings
    lie in their ranges (integers for ``max_translation``, the rest at the generator's
    defaults), and each task gets a trained table over the CNN space."""
    c = _config()
    f = c.family
    f.space, f.num_layers, f.filters, f.kernel_sizes, f.strides = "macro_cnn", 1, (4,), (3,), (1, 2)
    f.activations = ("relu",)
    for name in f.ranges:
        f.ranges[name] = ()
    f.ranges.max_translation = (1, 30)
    f.ranges.scale_coeff = (0, 1)  # a float setting: a float range, although given as ints
    validate_meta_train(c)
    family = build_family(f, str(tmp_path))
    assert isinstance(family.space, MacroCNNSpace) and family.space.size == 4
    assert family.space.input_shape == (40, 1) and family.space.ndim == 1
    for s in family.settings:
        assert isinstance(s["max_translation"], int) and 1 <= s["max_translation"] <= 30
        assert isinstance(s["scale_coeff"], float) and 0.0 <= s["scale_coeff"] <= 1.0
        assert "shear_scale" not in s  # the generator's default
    assert len({s["max_translation"] for s in family.settings}) > 1
    for task_id in range(3):
        fitness = np.asarray(family.task(task_id).fitness)
        assert fitness.shape == (4,) and np.all((fitness >= 0) & (fitness <= 1))
    with open(os.path.join(tmp_path, "tables", FINGERPRINT_FILE), encoding="utf-8") as fp:
        fingerprint = json.load(fp)
    assert fingerprint["space"] == "macro_cnn"
    assert fingerprint["ranges"] == {"max_translation": [1, 30], "scale_coeff": [0, 1]}
