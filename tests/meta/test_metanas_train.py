"""The MetaNAS experiment runner end to end on a generated few-shot dataset (Conv-4 learners:
the DARTS supernet compiles in minutes on CPU): outputs, exact resume, config errors."""

import json

import jax
import numpy as np
import pytest

from nas_jax.config import ConfigError
from nas_jax.data.datasets import FewShotSplits, Split
from nas_jax.meta.metanas_train import metanas_config, run_metanas, validate_metanas
from nas_jax.utils.metrics import read_jsonl


@pytest.fixture(scope="module", autouse=True)
def non_partitionable_threefry():
    with jax.threefry_partitionable(False):
        yield


def _splits() -> FewShotSplits:
    """30 classes of noisy 8x8 prototypes, 6 examples each; classes 0-19 meta-train."""
    rng = np.random.default_rng(0)
    protos = rng.normal(size=(30, 8, 8, 1)).astype(np.float32)
    y = np.repeat(np.arange(30), 6).astype(np.int32)
    x = protos[y] + 0.3 * rng.normal(size=(len(y), 8, 8, 1)).astype(np.float32)
    train, test = y < 20, y >= 20
    return FewShotSplits(meta_train=Split(x=x[train], y=y[train]),
                         meta_test=Split(x=x[test], y=y[test]),
                         train_classes=np.arange(20, dtype=np.int32),
                         test_classes=np.arange(20, 30, dtype=np.int32), name="generated",
                         num_classes=30, input_shape=(8, 8, 1))


def _config(**changes):
    c = metanas_config()
    c.dataset.valid_classes = 5
    c.episodes.update(dict(ways=3, shots=1, queries=2, meta_batch=2))
    c.learner.update(dict(name="conv4", conv_channels=4, inner_steps=2))
    c.baselines = ()
    c.steps, c.log_every, c.valid_every, c.checkpoint_every = 4, 2, 2, 2
    c.valid.episodes = 4
    c.test.update(dict(episodes=6, chunk=4))
    c.runtime.progress_interval_s = 0.0
    c.runtime.compilation_cache_dir = ""
    c.fast_compile = True
    for key, value in changes.items():
        node = c
        *parents, leaf = key.split("__")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("metanas")
    return workdir, run_metanas(_config(), str(workdir), splits=_splits())


def test_outputs(finished):
    workdir, summary = finished
    result = summary["learners"]["conv4"]
    assert result["steps"] == 4 and result["episodes"] == 6
    assert 0.0 <= result["accuracy"] <= 1.0 and result["ci95"] >= 0.0
    # 3-way 2-query episodes: each episode's accuracy is a multiple of 1/6.
    assert abs(result["accuracy"] * 36 - round(result["accuracy"] * 36)) < 1e-6
    assert result["num_params"] > 0
    rows = read_jsonl(workdir / "conv4" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["valid_accuracy"] is not None and np.isfinite(r["query_loss"]) for r in rows)
    assert json.loads((workdir / "results.json").read_text())["learners"]["conv4"] == result
    with open(workdir / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


class _Crash(Exception):
    pass


def test_crashed_run_resumes_exactly(finished, tmp_path, monkeypatch):
    from nas_jax.meta import metanas_train
    from nas_jax.utils.checkpoint import Checkpointer

    class CrashAfterFirstSave(Checkpointer):
        def save(self, step, tree, **kw):
            super().save(step, tree, **kw)
            raise _Crash(step)

    reference, summary = finished
    workdir = tmp_path / "crashed"
    monkeypatch.setattr(metanas_train, "Checkpointer", CrashAfterFirstSave)
    with pytest.raises(_Crash):
        run_metanas(_config(), str(workdir), splits=_splits())
    monkeypatch.undo()
    assert read_jsonl(workdir / "conv4" / "metrics.jsonl")[-1]["step"] == 2
    resumed = run_metanas(_config(), str(workdir), splits=_splits())
    got, want = resumed["learners"]["conv4"], summary["learners"]["conv4"]
    for key in ("accuracy", "ci95", "steps", "num_params"):
        assert got[key] == want[key], key

    def rows(w):
        return [{k: v for k, v in r.items() if k != "time"}
                for r in read_jsonl(w / "conv4" / "metrics.jsonl")]

    assert rows(workdir) == rows(reference)


def test_changed_config_is_refused_on_resume(finished):
    workdir, _ = finished
    with pytest.raises(ConfigError, match=r"config.seed: differs"):
        run_metanas(_config(seed=1), str(workdir), splits=_splits())


@pytest.mark.parametrize("change, message", [
    (dict(baselines=("conv4",)), r"config.baselines=\('conv4',\): repeats a learner"),
    (dict(baselines=("resnet",)), r"config.baselines: 'resnet' is not a learner"),
    (dict(learner__outer="maml"), r"config.learner.outer='maml'"),
    (dict(steps=5), r"config.steps=5: must be a multiple of config.log_every=2"),
    (dict(temperature__end=2.0), r"config.temperature: needs 0 < end <= start"),
    (dict(prune_threshold=1.0), r"config.prune_threshold=1.0"),
    (dict(dataset__name="cifar10"), r"config.dataset.name='cifar10'"),
])
def test_config_errors_name_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        validate_metanas(_config(**change))


def test_too_many_validation_classes_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config.dataset.valid_classes=20"):
        run_metanas(_config(dataset__valid_classes=20), str(tmp_path), splits=_splits())


@pytest.mark.parametrize("name, arg", [("metanas_glyphs", None), ("metanas_glyphs", "5"),
                                       ("metanas_omniglot", None)])
def test_shipped_configs_validate(name, arg):
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config(arg)
    validate_metanas(config)
    assert config.episodes.shots == int(arg or 1)
