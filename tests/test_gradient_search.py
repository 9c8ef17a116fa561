"""A tiny DARTS search end to end on offline digits: a valid derived cell, the per-epoch
diagnostics and table lookup, an exact resume, and config errors that name the field."""

import importlib
import json
import os
import shutil

import jax
import numpy as np
import pytest

from nas_jax.config import ConfigError
from nas_jax.evaluators.table import arch_codes, make_table
from nas_jax.gradient_search import (
    gradient_search_config,
    run_gradient_search,
    validate_gradient_config,
)
from nas_jax.retrain import resolve_arch, retrain_config, validate_retrain_config
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.utils.metrics import read_jsonl


def tiny_config(table_path=""):
    c = gradient_search_config()
    c.space.channels = 2
    c.train.epochs = 2
    c.train.steps_per_epoch = 3
    c.train.batch_size = 8
    c.train.eval_batch_size = 512
    c.diagnostics.eigen_every = 0  # the eigenvalue's HVP program is tested on its own
    c.table_path = table_path
    c.runtime.compilation_cache_dir = ""
    c.runtime.progress_interval_s = 0.0
    c.runtime.fast_compile = True
    return c


def synthetic_accuracy(space, archs):
    """A known accuracy per architecture (its code modulo 97, scaled)."""
    return (arch_codes(space, archs) % 97 / 97.0).astype(np.float32)


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    space = NB201Space(channels=2, cells_per_stage=1, input_shape=(8, 8, 1), num_classes=10)
    archs = space.enumerate()
    acc = synthetic_accuracy(space, archs)[:, None]
    zeros = np.zeros(len(archs), np.int64)
    table = make_table(space, archs, valid_accuracy=acc, test_accuracy=acc / 2,
                       metadata={"dataset": "synthetic"}, params=zeros, flops=zeros,
                       rows="architectures")
    return table.save(str(tmp_path_factory.mktemp("table") / "nb201.npz"))


SLOW = pytest.mark.skipif(
    not os.environ.get("NAS_JAX_SLOW_TESTS"),
    reason="a second search run (~20 s of CPU on an idle 2-core machine); set "
    "NAS_JAX_SLOW_TESTS=1")


@pytest.fixture(scope="module")
def search_run(tmp_path_factory, table_path):
    workdir = str(tmp_path_factory.mktemp("darts"))
    partitionable = jax.config.jax_threefry_partitionable
    try:  # the run sets the process-wide PRNG flag from its config; restore it after
        result = run_gradient_search(tiny_config(table_path), workdir)
        yield workdir, result
    finally:
        jax.config.update("jax_threefry_partitionable", partitionable)


def test_search_derives_a_valid_cell_and_logs_diagnostics(search_run):
    workdir, result = search_run
    space = NB201Space(channels=2, cells_per_stage=1, input_shape=(8, 8, 1), num_classes=10)
    arch = space.validate(result["arch"])
    assert space.to_string(arch) == result["arch_string"]
    np.testing.assert_array_equal(space.from_string(result["arch_string"]), arch)
    softmax = np.asarray(result["alpha_softmax"])
    assert softmax.shape == (6, 5)
    np.testing.assert_array_equal(np.argmax(softmax, -1), arch)
    with open(os.path.join(workdir, "result.json")) as f:
        assert json.load(f)["arch"] == result["arch"]
    assert os.path.getsize(os.path.join(workdir, "alpha.png")) > 0
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for name in ("arch_loss", "train_loss", "eval_valid_accuracy", "learning_rate"):
            assert np.isfinite(row[name])
        assert row["num_parameter_free"] == sum(
            op in ("none", "skip_connect", "avg_pool_3x3")
            for op in [t.split("~")[0] for t in row["genotype"].replace("+", "|").split("|")
                       if t])
        want = float(synthetic_accuracy(space, space.from_string(row["genotype"])[None])[0])
        assert row["table_valid_accuracy"] == pytest.approx(want)
        assert row["table_test_accuracy"] == pytest.approx(want / 2)
    assert result["table_valid_accuracy"] == rows[-1]["table_valid_accuracy"]
    assert rows[-1]["learning_rate"] < rows[0]["learning_rate"]  # cosine decay


def test_derived_cell_is_what_retraining_reads(search_run):
    workdir, result = search_run
    config = retrain_config()
    config.arch_from = workdir
    config.space.channels = 2
    validate_retrain_config(config)
    space = NB201Space(channels=2, cells_per_stage=1, input_shape=(8, 8, 1), num_classes=10)
    np.testing.assert_array_equal(resolve_arch(config, space), result["arch"])


@SLOW
def test_resume_from_an_epoch_checkpoint_is_exact(search_run, table_path):
    workdir, result = search_run
    shutil.rmtree(os.path.join(workdir, "checkpoints", "2"))  # as if killed during epoch 2
    partitionable = jax.config.jax_threefry_partitionable
    try:
        resumed = run_gradient_search(tiny_config(table_path), workdir)
    finally:
        jax.config.update("jax_threefry_partitionable", partitionable)
    np.testing.assert_array_equal(resumed["alpha_softmax"], result["alpha_softmax"])
    assert resumed["final_epoch"] == result["final_epoch"]
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]


def _gdas_config(execution):
    config = tiny_config()
    config.strategy.name, config.strategy.execution = "gdas", execution
    config.strategy.arch_learning_rate = 0.05  # so that alpha moves in 6 steps
    return config


def test_gdas_composed_run_resumes_exactly(tmp_path):
    """GDAS through the composed execution: a valid derived cell, alpha moved, and a run
    killed during epoch 2 resumes to the same alpha (the checkpoints hold the mixture
    supernet's form). Its steps equal the switch supernet's (tests/strategies/
    test_gdas_composed.py); the whole run against a switch run is the slow test below."""
    config = _gdas_config("composed")
    result = run_gradient_search(config, str(tmp_path / "composed"))
    shutil.rmtree(os.path.join(tmp_path, "composed", "checkpoints", "2"))
    resumed = run_gradient_search(config, str(tmp_path / "composed"))
    space = NB201Space(channels=2, cells_per_stage=1, input_shape=(8, 8, 1), num_classes=10)
    space.validate(result["arch"])
    softmax = np.asarray(result["alpha_softmax"])
    assert np.ptp(softmax) > 1e-3  # alpha moved off its near-uniform start
    np.testing.assert_array_equal(resumed["alpha_softmax"], result["alpha_softmax"])
    rows = read_jsonl(os.path.join(tmp_path, "composed", "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) for r in rows)


@SLOW
def test_gdas_composed_run_equals_switch(tmp_path):
    """A whole composed GDAS run ends at the alpha of the jitted switch-supernet run (the
    same algorithm, batches and keys)."""
    composed = run_gradient_search(_gdas_config("composed"), str(tmp_path / "composed"))
    switched = run_gradient_search(_gdas_config("switch"), str(tmp_path / "switch"))
    np.testing.assert_allclose(switched["alpha_softmax"], composed["alpha_softmax"], atol=1e-5)


def darts_space_config():
    """A tiny GDAS search in the DARTS space: 3 cells (a normal and two reduction cells),
    four ops (none, a pool, skip, a separable convolution)."""
    c = tiny_config()
    c.space.name, c.space.num_cells = "darts", 3
    c.space.darts_ops = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
    c.strategy.name = "gdas"
    return c


@pytest.mark.skipif(
    not os.environ.get("NAS_JAX_SLOW_TESTS"),
    reason="a DARTS-space search run (~30 s of CPU; the suite stays under 10 minutes on 2 "
    "cores; its step is tested in tests/strategies/test_gdas_composed.py); set "
    "NAS_JAX_SLOW_TESTS=1")
def test_gdas_composed_run_in_the_darts_space(tmp_path):
    """GDAS in the DARTS space through the composed execution: a valid genotype in the
    chosen ops, alpha moved, finite losses, a checkpoint per epoch (the composed runs'
    exact resume is tested on NB201 above: the checkpoints hold the whole-supernet form in
    both spaces)."""
    from nas_jax.spaces.darts import DartsSpace

    config = darts_space_config()
    config.strategy.execution = "composed"
    config.strategy.arch_learning_rate = 0.05
    partitionable = jax.config.jax_threefry_partitionable
    try:
        result = run_gradient_search(config, str(tmp_path / "run"))
    finally:
        jax.config.update("jax_threefry_partitionable", partitionable)
    space = DartsSpace(channels=2, num_cells=3, input_shape=(8, 8, 1), num_classes=10,
                       primitives=config.space.darts_ops)
    space.validate(result["arch"])
    assert result["arch_string"].startswith("Genotype(normal=")
    assert "sep_conv_5x5" not in result["arch_string"]
    softmax = np.asarray(result["alpha_softmax"])
    assert softmax.shape == (2, 14, 4)
    assert np.ptp(softmax) > 1e-3
    assert sorted(os.listdir(os.path.join(tmp_path, "run", "checkpoints"))) == ["1", "2"]
    rows = read_jsonl(os.path.join(tmp_path, "run", "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) for r in rows)


@pytest.mark.parametrize("field, value, message", [
    ("strategy.name", "enas", "config.strategy.name='enas': must be one of darts, gdas"),
    ("strategy.order", 3, "config.strategy.order=3"),
    ("train.batch_size", 0, "config.train.batch_size=0: must be > 0"),
    ("strategy.tau_min", 20.0, "config.strategy.tau_min=20.0"),
])
def test_config_errors_name_the_field(field, value, message):
    c = tiny_config()
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate_gradient_config(c)
    gdas = tiny_config()
    gdas.strategy.name, gdas.strategy.order = "gdas", 2
    with pytest.raises(ConfigError, match="config.strategy.order=2"):
        validate_gradient_config(gdas)
    with pytest.raises(ConfigError, match="config.train.epoch: unknown field"):
        validate_gradient_config(_with_typo())
    fast = tiny_config()
    fast.strategy.execution = "fast"
    with pytest.raises(ConfigError, match="config.strategy.execution='fast': must be one of "
                                          "mixture, switch, composed"):
        validate_gradient_config(fast)
    darts = tiny_config()
    darts.strategy.execution = "composed"
    with pytest.raises(ConfigError, match="config.strategy.execution='composed': must be "
                                          "'mixture' unless strategy.name='gdas'"):
        validate_gradient_config(darts)
    switch = darts_space_config()
    switch.strategy.execution = "switch"
    with pytest.raises(ConfigError, match="config.strategy.execution='switch': must be "
                                          "'mixture' or 'composed' unless space.name='nb201'"):
        validate_gradient_config(switch)
    switch.strategy.execution = "composed"
    validate_gradient_config(switch)


def _with_typo():
    c = tiny_config()
    c.train.epoch = 3
    return c


@pytest.mark.parametrize("name", ["darts_nb201_digits", "darts_v1_nb201_cifar10",
                                  "darts_v2_nb201_cifar10", "gdas_nb201_cifar10",
                                  "darts_cifar10", "gdas_darts_cifar10"])
def test_shipped_configs_validate(name):
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config()
    validate_gradient_config(config)
    assert f"--config=configs/{name}.py" in module.__doc__
