"""A search on a new task that starts from a meta-trained controller
(``config.strategy.init_from``): the start state is the saved policy with the task's context
computed from the dataset as the family does, the search runs end to end through
``run_search``, and mistakes name the field."""

import json
import os

import jax
import numpy as np
import pytest

from nas_jax.config import ConfigError, search_config, validate
from nas_jax.data.datasets import dataset_from_arrays, load_dataset
from nas_jax.meta.controller import ConditionedController, save_controller
from nas_jax.meta.tasks import mnist1d_features
from nas_jax.meta.transfer import meta_trained_strategy
from nas_jax.runner import INIT_FROM_KEY, run_search
from nas_jax.spaces.macro import MLPSpace
from nas_jax.utils.metrics import CONFIG_FILE, read_jsonl

FEATURE_LENGTH = 6
UNITS, ACTIVATIONS = (16, 32), ("relu", "tanh")


def _space(input_shape):
    return MLPSpace(max_layers=1, units=UNITS, activations=ACTIVATIONS,
                    input_shape=input_shape, num_classes=10)


def _meta_trained(path, mode, family_name, *, input_shape=(20, 1)):
    """A controller saved as experiments/meta_train.py would (config.json + controller/),
    with random params (what is checked here does not depend on them being trained)."""
    controller = ConditionedController(space=_space(input_shape), mode=mode, num_tasks=4,
                                       embed_size=4, feature_size=2 * FEATURE_LENGTH,
                                       encoder_hidden=8, hidden_size=8, batch_size=4)
    params = controller.init_params(jax.random.key(3))
    os.makedirs(path, exist_ok=True)
    family = dict(name=family_name, feature_length=FEATURE_LENGTH)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump({"family": family}, f)
    save_controller(os.path.join(path, "controller"), controller, params)
    return controller, params


def _signals(length, n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = rng.normal(size=(n, length, 1)) + y[:, None, None] * 0.1
    return dataset_from_arrays("signals", x, y, x[:20], y[:20], num_classes=10,
                               valid_fraction=0.2)


def _strategy_cfg(path):
    c = search_config().strategy
    c.name, c.init_from, c.batch_size, c.learning_rate = "reinforce", str(path), 3, 0.01
    return c


def test_data_mode_starts_from_the_saved_policy_and_the_task_embedding(tmp_path):
    controller, params = _meta_trained(tmp_path / "run", "data", "mnist1d")
    dataset = _signals(length=30)  # another signal length than the family's: resampled
    space = _space((30, 1))
    strategy = meta_trained_strategy(_strategy_cfg(tmp_path / "run"), space, dataset,
                                     jax.random.key(0))
    assert strategy.space == space and strategy.batch_size == 3
    assert strategy.learning_rate == 0.01 and strategy.hidden_size == 8
    start = strategy.init(jax.random.key(1)).params
    for name in ("start", "embed", "w_x", "w_h", "b", "head_w", "head_b"):
        np.testing.assert_array_equal(start[name], params[name], err_msg=name)
    features = mnist1d_features(dataset.train.x, dataset.train.y, FEATURE_LENGTH)
    assert features.shape == (10, 2 * FEATURE_LENGTH)
    np.testing.assert_allclose(start["context"], controller.encode(params, features),
                               rtol=1e-6)
    archs, _ = strategy.ask(jax.random.key(2), strategy.init(jax.random.key(1)))
    assert archs.shape == (3, space.num_decisions)
    assert bool(jax.vmap(space.is_valid)(archs).all())


def test_mnist1d_features_resample_then_class_statistics():
    x = np.stack([np.linspace(0.0, 1.0, 11), np.linspace(1.0, 0.0, 11)])[:, :, None]
    got = np.asarray(mnist1d_features(x, np.array([0, 1]), 3, num_classes=2))
    # Resampled to 3 points: (0, 0.5, 1) and (1, 0.5, 0); one signal per class, so std 0.
    np.testing.assert_allclose(got, [[0, 0.5, 1, 0, 0, 0], [1, 0.5, 0, 0, 0, 0]], atol=1e-6)


def test_search_runs_from_a_meta_trained_controller(tmp_path):
    """An unconditioned controller over the MLP space, fine-tuned on digits by run_search."""
    _meta_trained(tmp_path / "run", "none", "synthetic", input_shape=(3,))
    c = search_config()
    c.dataset.name = "digits"
    c.space.name, c.space.max_layers = "mlp", 1
    c.space.units, c.space.activations = UNITS, ACTIVATIONS
    c.strategy.name, c.strategy.init_from = "reinforce", str(tmp_path / "run")
    c.strategy.batch_size, c.strategy.population_size, c.strategy.sample_size = 2, 2, 1
    c.budget.num_evaluations = 4
    c.evaluator.steps, c.evaluator.batch_size = 2, 16
    c.retrain.steps = 0
    c.runtime.progress_interval_s, c.runtime.compilation_cache_dir = 0.0, ""
    summary = run_search(c, str(tmp_path / "search"))
    assert summary["num_evaluations"] == 4
    rows = read_jsonl(tmp_path / "search" / "metrics.jsonl")
    # The first round is the saved policy's proposals, drawn with the runner's keys.
    space = _space((8, 8, 1))
    dataset = load_dataset("digits", valid_fraction=c.dataset.valid_fraction, seed=c.seed)
    root = jax.random.key(c.seed)
    strategy = meta_trained_strategy(c.strategy, space, dataset,
                                     jax.random.fold_in(root, INIT_FROM_KEY))
    archs, _ = strategy.ask(jax.random.split(jax.random.fold_in(root, 1))[0],
                            strategy.init(jax.random.fold_in(root, 0)))
    assert [r["arch"] for r in rows[:2]] == [space.to_string(a) for a in archs]


def test_mistakes_name_the_field(tmp_path):
    run = tmp_path / "run"
    _meta_trained(run, "data", "mnist1d")
    signals = _signals(length=20)
    with pytest.raises(ConfigError, match=r"config\.space: .*units"):
        other = MLPSpace(max_layers=1, units=(16, 64), activations=ACTIVATIONS,
                         input_shape=(20, 1))
        meta_trained_strategy(_strategy_cfg(run), other, signals, jax.random.key(0))
    images = dataset_from_arrays("images", np.zeros((40, 4, 4, 3)), np.arange(40) % 10,
                                 np.zeros((10, 4, 4, 3)), np.arange(10), num_classes=10)
    with pytest.raises(ConfigError, match=r"config\.dataset\.name='images'.*1-D signals"):
        meta_trained_strategy(_strategy_cfg(run), _space((4, 4, 3)), images,
                              jax.random.key(0))
    _meta_trained(tmp_path / "synthetic", "data", "synthetic")
    with pytest.raises(ConfigError, match=r"init_from.*'synthetic' family"):
        meta_trained_strategy(_strategy_cfg(tmp_path / "synthetic"), _space((20, 1)),
                              signals, jax.random.key(0))
    with pytest.raises(ConfigError, match=r"config\.strategy\.init_from=.*no config\.json"):
        meta_trained_strategy(_strategy_cfg(tmp_path / "nothing"), _space((20, 1)), signals,
                              jax.random.key(0))
    c = search_config()
    c.strategy.init_from = str(run)  # with the default strategy, regularized evolution
    with pytest.raises(ConfigError, match=r"config\.strategy\.init_from=.*only the reinforce"):
        validate(c)
