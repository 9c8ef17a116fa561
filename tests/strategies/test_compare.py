"""The strategy comparison on a synthetic NB201 table: searching beats random search over
64 vmapped seeds, determinism, loop == vmap, the entry point end to end, config errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.compare import (
    best_so_far,
    build_strategies,
    compare_config,
    compare_strategies,
    run_compare,
    seed_keys,
    validate_compare,
)
from nas_jax.config import ConfigError
from nas_jax.evaluators.table import TableEvaluator
from nas_jax.evaluators.table_build import synthetic_table
from nas_jax.spaces.nb201 import NB201Space

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPACE = NB201Space(channels=8, cells_per_stage=1, input_shape=(8, 8, 1))
SEEDS, BUDGET = 64, 100  # the end-to-end run below uses the same, so compiles are shared
# Searches that run in milliseconds anyway: compiled without XLA's backend optimisations.
FAST = ("random_search", "regularized_evolution", "genetic_algorithm")


def small_config(**overrides):
    c = compare_config()
    c.num_seeds, c.num_evaluations, c.loop_seeds = SEEDS, BUDGET, 0
    c.fast_compile = FAST
    c.runtime.compilation_cache_dir = ""
    for name, value in overrides.items():
        c[name] = value
    return c


@pytest.fixture(scope="module")
def table():
    return synthetic_table(SPACE, jax.random.key(0))


@pytest.fixture(scope="module")
def results(table):
    config = small_config()
    with jax.threefry_partitionable(False):
        return compare_strategies(build_strategies(config, SPACE), TableEvaluator(table),
                                  seed_keys(0, SEEDS), BUDGET, fast_compile=config.fast_compile)


def test_best_so_far_known_answer():
    fitness = jnp.array([-jnp.inf, 0.1, 0.3, 0.2, 0.3, 0.5])
    test = jnp.arange(6.0)
    np.testing.assert_array_equal(best_so_far(fitness, test), [np.nan, 1, 2, 2, 2, 5])


def test_searching_beats_random_search(results):
    rs = np.asarray(results["random_search"]["final_regret"])
    for name in ("regularized_evolution", "reinforce", "genetic_algorithm"):
        other = np.asarray(results[name]["final_regret"])
        diff = rs.mean() - other.mean()
        stderr = np.sqrt(rs.var() / len(rs) + other.var() / len(other))
        assert diff > 3 * stderr, (name, rs.mean(), other.mean(), stderr)
    for r in results.values():  # curves start at one evaluation and only improve on average
        assert len(r["regret_mean"]) == BUDGET and r["regret_mean"][-1] < r["regret_mean"][0]


def test_comparison_is_deterministic(table, results):
    """Same keys, same searches (all four strategies are re-checked end to end below)."""
    config = small_config(strategies=("regularized_evolution",))
    strategies = build_strategies(config, SPACE)
    with jax.threefry_partitionable(False):
        again, other = (compare_strategies(strategies, TableEvaluator(table), seed_keys(s, SEEDS),
                                           BUDGET, fast_compile=config.fast_compile)
                        ["regularized_evolution"] for s in (0, 1))
    assert again["final_regret"] == results["regularized_evolution"]["final_regret"]
    assert other["final_regret"] != again["final_regret"]


def test_compare_end_to_end(tmp_path, table, results):
    """The entry point's library call on a table file; per-seed numbers equal the fixture's
    (same keys)."""
    path = str(tmp_path / "synthetic.npz")
    table.save(path)
    previous = jax.config.jax_threefry_partitionable
    try:
        summary = run_compare(small_config(table_path=path), str(tmp_path / "w"))
    finally:
        jax.config.update("jax_threefry_partitionable", previous)
    for name in ("compare.md", "compare.json", "regret.png", "config.json"):
        assert os.path.getsize(tmp_path / "w" / name) > 0
    with open(tmp_path / "w" / "compare.json") as f:
        saved = json.load(f)
    for name, r in summary["strategies"].items():
        assert r["final_regret"] == results[name]["final_regret"]
        assert saved["strategies"][name]["final_regret_mean"] == pytest.approx(
            r["final_regret_mean"])
    text = (tmp_path / "w" / "compare.md").read_text()
    assert "| regularized_evolution |" in text and "±" in text


def test_python_loop_equals_the_vmapped_search(table, results):
    """The speed column's baseline runs the same searches (random search: its ask/tell
    programs compile quickly; the loop is the same for every strategy)."""
    config = small_config(strategies=("random_search",))
    with jax.threefry_partitionable(False):
        out = compare_strategies(build_strategies(config, SPACE), TableEvaluator(table),
                                 seed_keys(0, SEEDS), BUDGET, loop_seeds=2,
                                 fast_compile=config.fast_compile)
    for name, r in out.items():
        assert r["loop_max_abs_diff"] == 0.0 and r["loop_evals_per_s"] > 0
        assert r["final_regret"] == results[name]["final_regret"]


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"config.table_path=.*build_table.py"):
        validate_compare(small_config(table_path=str(tmp_path / "none.npz")))
    c = small_config(num_evaluations=5)
    with pytest.raises(ConfigError, match="config.strategy.genetic_algorithm.population_size"):
        validate_compare(c, check_table=False)
    c = small_config(strategies=("random_search", "bayesian"))
    with pytest.raises(ConfigError, match="'bayesian' is unknown"):
        validate_compare(c, check_table=False)
    c = small_config()
    c.strategy.regularized_evolution.sample_size = 50
    with pytest.raises(ConfigError, match="config.strategy.regularized_evolution.sample_size"):
        validate_compare(c, check_table=False)


def test_entry_point_names_the_build_command_when_the_table_is_missing(tmp_path):
    missing = str(tmp_path / "nb201_4ops_c8n1_digits.npz")  # a shipped table's name
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "compare.py"),
         f"--config={os.path.join(REPO, 'configs', 'compare_nb201_digits.py')}",
         f"--workdir={tmp_path / 'w'}", f"--config.table_path={missing}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"config.table_path='{missing}'" in proc.stderr
    assert (f"experiments/build_table.py --config=configs/table_nb201_4ops_digits.py "
            f"--out={missing}") in proc.stderr


@pytest.mark.parametrize("suffix, cells", [("", 4930), ("_4ops", 871)])
def test_shipped_tables_serve_the_shipped_configs(monkeypatch, suffix, cells):
    """Each table in tables/ is complete over its space (every distinct NB201 cell: the full
    space, and the space without avg_pool_3x3), built with the recipe its config describes,
    and the comparison and collapse study configs that read it validate against it."""
    import importlib

    from nas_jax.collapse_study import validate_collapse

    monkeypatch.chdir(REPO)  # the configs name the table relative to the repository
    monkeypatch.syspath_prepend(REPO)
    table_config = importlib.import_module(f"configs.table_nb201{suffix}_digits").get_config()
    compare = importlib.import_module(f"configs.compare_nb201{suffix}_digits").get_config()
    collapse = importlib.import_module(f"configs.collapse_nb201{suffix}_digits").get_config()
    assert compare.table_path == collapse.search.table_path
    table = TableEvaluator.from_path(compare.table_path).table
    assert table.complete and table.archs.shape == (cells, 6)
    assert table.space.ops == tuple(table_config.space.ops) == tuple(collapse.search.space.ops)
    assert table.metadata["recipe"]["steps"] == table_config.evaluator.steps
    assert table.valid_accuracy.shape == (cells, 3) and np.isfinite(table.test_accuracy).all()
    validate_compare(compare)
    validate_collapse(collapse)
