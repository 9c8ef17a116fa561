"""The ``class_subset`` meta-learning family through ``experiments/meta_train.py``'s code path:
2-way tasks of ``digits`` (meta-test tasks on held-out classes), a trained table per task over
a tiny MLP space, a short meta-training run, and a search on a new class subset that starts
from the meta-trained controller."""

import json
import os

import jax
import numpy as np
import pytest

from nas_jax.config import ConfigError, search_config
from nas_jax.meta.controller import load_controller
from nas_jax.meta.meta_train import (
    FINGERPRINT_FILE,
    build_family,
    meta_train_config,
    run_meta_train,
    validate_meta_train,
)
from nas_jax.meta.tasks import class_features
from nas_jax.meta.transfer import meta_trained_strategy


@pytest.fixture(scope="module", autouse=True)
def non_partitionable_threefry():
    with jax.threefry_partitionable(False):
        yield


def _config():
    c = meta_train_config()
    c.steps, c.log_every, c.checkpoint_every = 4, 2, 2
    c.progress_interval_s = 0.0
    f = c.family
    f.name, f.dataset, f.num_train, f.num_test = "class_subset", "digits", 3, 2
    f.ways, f.examples_per_class, f.num_meta_test_classes = 2, 5, 4
    f.max_layers, f.units, f.activations = 1, (4, 16), ("relu", "tanh")
    f.table.update(dict(num_seeds=1, steps=6, batch_size=16, chunk_size=4))
    c.controller.update(dict(hidden_size=8, embed_size=4, encoder_hidden=8, batch_size=4))
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("meta_class_subset"))
    config = _config()
    validate_meta_train(config)
    results = run_meta_train(config, workdir)
    family = build_family(config.family, workdir, build_tables=False)
    return config, workdir, results, family


def test_meta_train_tasks_keep_to_their_classes_and_get_tables(trained):
    config, workdir, results, family = trained
    train, test = set(family.train_classes.tolist()), set(family.test_classes.tolist())
    assert len(test) == 4 and not train & test and len(train | test) == 10
    for task_id in family.ids("train"):
        assert set(family.task_classes[task_id].tolist()) <= train
    for task_id in family.ids("test"):
        assert set(family.task_classes[task_id].tolist()) <= test
    assert family.space.num_classes == 2 and family.space.input_shape == (8, 8, 1)
    for task_id in range(5):
        task = family.task(task_id)
        fitness = np.asarray(task.fitness)
        assert fitness.shape == (family.space.size,)
        assert np.all((fitness >= 0) & (fitness <= 1))
        assert task.features.shape == (2, 2 * 64)
    assert results["task_ids"] == [3, 4] and results["steps"] == 4
    with open(os.path.join(workdir, "tables", FINGERPRINT_FILE), encoding="utf-8") as f:
        fingerprint = json.load(f)
    assert fingerprint["dataset"] == "digits" and fingerprint["ways"] == 2


def test_search_on_a_new_class_subset_starts_from_the_controller(trained):
    """A held-out class pair as the new task: the search's context is the encoder's
    embedding of the class statistics of all its training examples."""
    _, workdir, _, family = trained
    controller, params = load_controller(os.path.join(workdir, "controller"))
    new_task = family.dataset(int(family.ids("test")[0]))
    assert new_task.num_classes == 2
    c = search_config().strategy
    c.name, c.init_from = "reinforce", workdir
    strategy = meta_trained_strategy(c, family.space, new_task, jax.random.key(0))
    want = controller.encode(params, class_features(new_task.train.x, new_task.train.y, 2))
    np.testing.assert_allclose(strategy.init(jax.random.key(0)).params["context"], want,
                               rtol=1e-5)


def test_config_mistakes_name_the_field(tmp_path):
    c = _config()
    c.family.num_samples = 1  # an mnist1d field: not checked for a class_subset family
    validate_meta_train(c)
    c = _config()
    c.family.num_meta_test_classes = 1
    with pytest.raises(ConfigError, match=r"config\.family\.num_meta_test_classes=1"):
        validate_meta_train(c)
    c = _config()
    c.family.num_meta_test_classes = 9  # digits has 10 classes: 2-way meta-train needs 2
    with pytest.raises(ConfigError, match=r"num_meta_test_classes=9: digits has 10 classes"):
        build_family(c.family, str(tmp_path))
    c = _config()
    c.family.examples_per_class = 10_000
    with pytest.raises(ConfigError, match=r"config\.family\.dataset='digits': 10 of its 10 "
                                          r"classes .*examples_per_class=10000"):
        build_family(c.family, str(tmp_path))
    c = _config()
    c.family.dataset = "cifar11"
    with pytest.raises(ConfigError, match=r"config\.family\.dataset='cifar11'"):
        validate_meta_train(c)
