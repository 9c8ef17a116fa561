"""The collapse study: variants x seeds of a tiny DARTS search on digits, every returned cell
scored in a table, and config errors that name the field."""

import json
import os

import jax
import numpy as np
import pytest

from nas_jax.collapse_study import _curve, collapse_config, run_collapse, validate_collapse
from nas_jax.config import ConfigError
from nas_jax.evaluators.table import TableEvaluator
from nas_jax.evaluators.table_build import synthetic_table
from nas_jax.spaces.nb201 import OPS, NB201Space

OPS_4 = OPS[:4]


def tiny_config(table_path):
    c = collapse_config()
    c.variants = ("darts", "beta_darts")
    c.seeds = 2
    s = c.search
    s.space.channels, s.space.ops = 2, OPS_4
    s.train.epochs, s.train.steps_per_epoch, s.train.batch_size = 2, 2, 8
    s.diagnostics.eigen_every = 0  # the eigenvalue's program is tested in test_gradient_search
    s.table_path = table_path
    s.runtime.compilation_cache_dir = ""
    s.runtime.progress_interval_s = 0.0
    s.runtime.fast_compile = True
    return c


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    space = NB201Space(channels=2, cells_per_stage=1, input_shape=(8, 8, 1), ops=OPS_4)
    path = str(tmp_path_factory.mktemp("collapse") / "table.npz")
    synthetic_table(space, jax.random.key(0)).save(path)
    return path


def test_study_scores_every_returned_cell_in_the_table(tmp_path, table_path):
    previous = jax.config.jax_threefry_partitionable
    try:
        summary = run_collapse(tiny_config(table_path), str(tmp_path))
    finally:
        jax.config.update("jax_threefry_partitionable", previous)
    table = TableEvaluator.from_path(table_path)
    space = table.space
    assert set(summary["variants"]) == {"darts", "beta_darts"}
    for name, v in summary["variants"].items():
        accs = []
        for run in v["runs"]:
            arch = space.from_string(run["genotype"])
            row = int(np.asarray(table.rows(arch[None]))[0])
            expected = float(table.arrays["test_mean"][row])
            assert run["table_test_accuracy"] == pytest.approx(expected)
            assert run["accuracy_by_epoch"][-1] == pytest.approx(expected)  # no early stop
            assert len(run["accuracy_by_epoch"]) == 2 and run["epochs_run"] == 2
            assert 0 <= run["num_parameter_free"] <= 6
            assert os.path.isfile(tmp_path / name / f"seed{run['seed']}" / "result.json")
            accs.append(expected)
        assert v["table_test_accuracy_mean"] == pytest.approx(np.mean(accs))
        assert v["table_test_accuracy_std"] == pytest.approx(np.std(accs))
    with open(tmp_path / "collapse.json") as f:
        assert json.load(f)["variants"]["darts"]["runs"][0]["seed"] == 0
    for name in ("collapse.md", "collapse_accuracy.png", "collapse_param_free.png"):
        assert os.path.getsize(tmp_path / name) > 0
    assert "| beta_darts |" in summary["markdown"]
    for name, weight in (("darts", 0.0), ("beta_darts", 50.0)):  # what each variant ran
        with open(tmp_path / name / "seed1" / "config.json") as f:
            run_config = json.load(f)
        assert run_config["strategy"]["beta_weight"] == weight and run_config["seed"] == 1
    # A finished study is read back, not rerun: the same summary at once.
    again = run_collapse(tiny_config(table_path), str(tmp_path))
    assert again["markdown"] == summary["markdown"]


def test_an_early_stopped_run_keeps_its_returned_cell_in_the_curves():
    rows = [{"step": 1, "acc": 0.5}, {"step": 2, "acc": 0.6}, {"step": 3, "acc": None}]
    np.testing.assert_array_equal(_curve(rows, "acc", 5), [0.5, 0.6, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(_curve(rows, "acc", 5, returned=0.55),
                                  [0.5, 0.6, 0.55, 0.55, 0.55])


@pytest.mark.parametrize("field, value, message", [
    ("seeds", 0, "config.seeds=0"),
    ("beta_weight", 0.0, "config.beta_weight=0.0"),
    ("variants", ("darts", "darts"), "config.variants="),
    ("variants", ("darts", "pc_darts"), "'pc_darts' is unknown; allowed: darts, beta_darts"),
])
def test_bad_study_fields_are_named(table_path, field, value, message):
    c = tiny_config(table_path)
    c[field] = value
    with pytest.raises(ConfigError, match=message):
        validate_collapse(c)


def test_the_search_must_be_plain_and_scored(table_path):
    c = tiny_config("")
    with pytest.raises(ConfigError, match="config.search.table_path is empty"):
        validate_collapse(c)
    c = tiny_config(table_path)
    c.search.strategy.beta_weight = 1.0
    with pytest.raises(ConfigError, match="beta_weight=0"):
        validate_collapse(c)
    c = tiny_config(table_path)
    c.search.space.ops = OPS  # the table's cells choose among 4 ops
    with pytest.raises(ConfigError, match="set config.space.ops to the table's"):
        validate_collapse(c)
