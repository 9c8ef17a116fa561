"""The MetaNAS experiment runner end to end on a generated few-shot dataset: outputs, exact
resume and config errors with Conv-4 (the fastest learner), and one short MetaNAS run (warm-up,
in-task temperature anneal, the adapted cells)."""

import json

import jax
import numpy as np
import pytest

from nas_jax.config import ConfigError
from nas_jax.data.datasets import FewShotSplits, Split
from nas_jax.meta.metanas_train import (
    metanas_config,
    paired_difference,
    run_metanas,
    temperature_schedule,
    validate_metanas,
)
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
    assert len(result["episode_accuracies"]) == 6
    assert np.mean(result["episode_accuracies"]) == pytest.approx(result["accuracy"])
    assert summary["conv4_minus"] == {}  # no baselines in this run
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
    (dict(temperature__over="epochs"), r"config.temperature.over='epochs'"),
    (dict(temperature__mode="cosine"), r"config.temperature.mode='cosine'"),
    (dict(warmup_steps=5), r"config.warmup_steps=5: must be in \[0, config.steps=4\]"),
    (dict(learner__edge_execution="vmap"), r"config.learner.edge_execution='vmap'"),
    (dict(learner__depthwise_impl="fft"), r"config.learner.depthwise_impl='fft'"),
    (dict(learner__meta_lr_schedule="cosine"), r"config.learner.meta_lr_schedule='cosine'"),
    (dict(dataset__name="cifar10"), r"config.dataset.name='cifar10'"),
    (dict(episodes__train_shots=-1), r"config.episodes.train_shots=-1: must be >= 0"),
    (dict(learner__inner_batch=4), r"config.learner.inner_batch=4: must be in \[0, 3\]"),
    (dict(learner__inner_batch=7, episodes__train_shots=2),
     r"config.learner.inner_batch=7: must be in \[0, 6\]"),
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


def test_temperature_schedule_over_meta_or_inner_steps():
    kw = dict(start=1.0, end=0.1, mode="linear", steps=10, inner_steps=4)
    np.testing.assert_allclose(temperature_schedule(5, over="meta_steps", **kw), 0.55)
    np.testing.assert_allclose(temperature_schedule(5, over="inner_steps", **kw),
                               [1.0, 0.7, 0.4, 0.1], rtol=1e-6)
    kw["mode"] = "exponential"
    np.testing.assert_allclose(temperature_schedule(10, over="meta_steps", **kw), 0.1,
                               rtol=1e-6)
    np.testing.assert_allclose(temperature_schedule(3, over="inner_steps", **kw),
                               [1.0, 0.1 ** (1 / 3), 0.1 ** (2 / 3), 0.1], rtol=1e-6)


@pytest.mark.slow
def test_metanas_run_with_warmup_and_in_task_anneal(tmp_path):
    """A MetaNAS learner through the runner (Reptile's annealed meta step): alpha stays at its
    initialisation during the warm-up meta-steps and moves after; the outputs name the
    adapted cells and draw them."""
    from nas_jax.meta.metanas_train import build_learner
    from nas_jax.utils.checkpoint import Checkpointer

    config = _config(learner__name="metanas", learner__channels=2, learner__num_cells=1,
                     learner__depthwise_impl="xla", learner__meta_lr_schedule="linear",
                     warmup_steps=2,
                     temperature__over="inner_steps", test__cells_to_plot=1)
    summary = run_metanas(config, str(tmp_path), splits=_splits())
    result = summary["learners"]["metanas"]
    assert result["steps"] == 4 and 1 <= result["unique_task_genotypes"] <= 6
    assert 1 / 8 <= result["mean_strongest_op_weight"] <= 1
    assert len(result["task_genotypes_shown"]) == 1
    for name in ("meta_normal", "meta_reduce", "task0_normal", "task0_reduce"):
        with open(tmp_path / "metanas" / "cells" / f"{name}.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    rows = read_jsonl(tmp_path / "metanas" / "metrics.jsonl")
    assert [r["temperature"] for r in rows] == pytest.approx([0.1, 0.1])  # the last inner step
    _, initial = build_learner(config, "metanas", (8, 8, 1))
    ckpt = Checkpointer(str(tmp_path / "metanas" / "checkpoints"), max_to_keep=2)
    after_warmup = ckpt.restore(initial, 2)
    final = ckpt.restore(initial, 4)
    ckpt.close()
    np.testing.assert_array_equal(after_warmup.alpha, initial.alpha)
    assert not np.allclose(final.alpha, initial.alpha)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(after_warmup.params),
                                                     jax.tree.leaves(initial.params)))


def test_meta_training_on_more_shots_in_minibatches(tmp_path):
    """episodes.train_shots sizes only the meta-training episodes; learner.inner_batch draws
    minibatches from them, and a smaller (test) support set is used whole: a 1-shot meta-test
    with inner_batch=4 scores exactly as with inner_batch=0."""
    from nas_jax.meta import metanas
    from nas_jax.meta.metanas_train import build_learner, build_samplers

    config = _config(episodes__train_shots=3, learner__inner_batch=4)
    validate_metanas(config)
    train, valid, test, shape = build_samplers(config, _splits())
    assert (train.shots, valid.shots, test.shots) == (3, 1, 1)
    episode = train.sample(jax.random.key(0))
    assert episode.support_x.shape[0] == 9 and episode.query_x.shape[0] == 6

    learner, state = build_learner(config, "conv4", shape)
    assert learner.inner_batch == 4
    kw = dict(episodes=4, chunk=4, temperature=1.0, threshold=0.01)
    key = jax.random.key(1)
    got = metanas.evaluate(learner, key, state, test, **kw)
    want = metanas.evaluate(learner.replace(inner_batch=0), key, state, test, **kw)
    np.testing.assert_array_equal(got["accuracies"], want["accuracies"])
    # On the 9-example meta-training support set the minibatches change the adaptation.
    _, _, _, full = metanas.adapt(learner.replace(inner_batch=0), key, state.params,
                                  state.rest, state.alpha, episode.support_x,
                                  episode.support_y, 1.0)
    _, _, _, mini = metanas.adapt(learner, key, state.params, state.rest, state.alpha,
                                  episode.support_x, episode.support_y, 1.0)
    assert not np.allclose(full, mini)

    summary = run_metanas(config, str(tmp_path), splits=_splits())
    assert summary["learners"]["conv4"]["steps"] == 4


def test_paired_difference():
    got = paired_difference([0.6, 0.8, 0.4, 1.0], [0.4, 0.8, 0.2, 0.6])
    d = np.array([0.2, 0.0, 0.2, 0.4])
    assert got["mean"] == pytest.approx(0.2)
    assert got["ci95"] == pytest.approx(1.96 * d.std() / 2)
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference([0.5, 0.5], [0.5])
