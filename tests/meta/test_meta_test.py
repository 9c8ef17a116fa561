"""The meta-test protocol on a 3x3x3 synthetic space with 2 held-out tasks whose tables are
crafted: regret curves never rise, random search's evaluations-to-target match a hand count,
a controller made deterministic on the best architecture has regret 0 after one evaluation,
the command writes its outputs, and config mistakes name the field."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nas_jax.config import ConfigError
from nas_jax.meta.controller import save_controller
from nas_jax.meta.meta_test import (
    BASELINES,
    curve_styles,
    evals_to_target,
    markdown_table,
    meta_test_config,
    method_runs,
    ranked_runs,
    run_meta_test,
    summarise,
    validate_meta_test,
)
from nas_jax.meta.meta_train import (
    FAST_COMPILE,
    build_controller,
    build_family,
    meta_train_config,
)
from nas_jax.utils.metrics import CONFIG_FILE, to_python

CODES = np.arange(27)
TABLE_A = np.where(CODES == 25, 0.895, 0.5 + 0.3 * CODES / 26)  # within 0.01: codes 25, 26
TABLE_A[26] = 0.9
TABLE_B = np.where(CODES == 26, 0.9, 0.8 - 0.3 * CODES / 26)  # within 0.01: code 26 only
STRIDES = np.array([9, 3, 1])
METHODS = ("zero_shot:det", "ranked:det", "finetune:det") + BASELINES


@pytest.fixture(scope="module", autouse=True)
def non_partitionable_threefry():
    with jax.threefry_partitionable(False):
        yield


def _train_config():
    c = meta_train_config()
    c.family.num_train, c.family.num_test, c.family.num_choices = 4, 2, (3, 3, 3)
    c.family.feature_dim = 1
    c.controller.update(dict(hidden_size=8, embed_size=4, encoder_hidden=8, batch_size=4,
                             tanh_constant=0.0, temperature=1.0))
    return c


def _config(path="unused"):
    c = meta_test_config()
    c.controllers = ml_collections.ConfigDict(dict(det=path))
    c.num_seeds, c.budget = 4, 12
    c.evolution.population_size, c.evolution.sample_size = 4, 2
    return c


@pytest.fixture(scope="module")
def setup():
    """A data-mode controller whose policy puts all mass on (2, 2, 2), the best of both crafted
    held-out tables (no clipping of the logits, so the heads decide)."""
    train_cfg = _train_config()
    family = build_family(train_cfg.family)
    controller = build_controller(train_cfg, family)
    params = dict(jax.jit(controller.init_params, compiler_options=FAST_COMPILE)(
        jax.random.key(0)))
    params["head_w"] = jnp.zeros_like(params["head_w"])
    params["head_b"] = jnp.where(jnp.arange(3) == 2, 1e4, -1e4) * jnp.ones((3, 1))
    test_ids = family.ids("test")
    family.attach_tables({int(test_ids[0]): TABLE_A, int(test_ids[1]): TABLE_B})
    config = _config()
    validate_meta_test(config)
    controllers = {"det": (controller, params)}
    runs = method_runs(jax.random.key(0), controllers, family, config)
    summary = summarise(runs, family, controllers, config)
    return dict(train_cfg=train_cfg, controller=controller, params=params, runs=runs,
                summary=summary, family=family, config=config)


def test_every_curve_non_increasing(setup):
    summary = setup["summary"]
    assert tuple(summary["methods"]) == METHODS
    for name, m in summary["methods"].items():
        curve = np.asarray(m["regret_mean"])
        assert curve.shape == (2, 12), name
        assert np.all(curve >= 0) and np.all(np.diff(curve, axis=1) <= 1e-12), name
        fitness, archs = setup["runs"][name]
        assert fitness.shape == (2, 4, 12) and archs.shape == (2, 4, 12, 3), name
        tables = np.stack([TABLE_A, TABLE_B])
        looked_up = np.stack([tables[t][archs[t] @ STRIDES] for t in range(2)])
        np.testing.assert_allclose(fitness, looked_up, rtol=1e-6, err_msg=name)


def test_random_search_evals_to_target_by_hand(setup):
    fitness, archs = setup["runs"]["random_search"]
    got = np.asarray(setup["summary"]["methods"]["random_search"]["evals_to_target"])
    for t, targets in enumerate(({25, 26}, {26})):
        for s in range(4):
            codes = [int(a @ STRIDES) for a in archs[t, s]]
            hits = [i + 1 for i, c in enumerate(codes) if c in targets]
            assert got[t, s] == (hits[0] if hits else 13), (t, s, codes)
    # Known answers of the helper itself: the 2nd value is within 0.01, never reached -> E + 1.
    np.testing.assert_array_equal(
        evals_to_target(np.array([[0.5, 0.895, 0.9], [0.5, 0.6, 0.7]]), np.array([0.9, 0.9]),
                        0.01), [2, 4])


def test_deterministic_zero_shot_finds_best_at_once(setup):
    summary = setup["summary"]
    zero = summary["methods"]["zero_shot:det"]
    np.testing.assert_array_equal(np.asarray(zero["regret_mean"])[:, 0], 0.0)
    np.testing.assert_array_equal(zero["evals_to_target"], np.ones((2, 4)))
    assert np.all(setup["runs"]["zero_shot:det"][1] == 2)
    greedy = summary["zero_shot_greedy"]["det"]
    assert greedy["archs"] == [[2, 2, 2]] * 2 and greedy["share_beats_median"] == 1.0
    scratch = summary["methods"]["scratch"]["median_evals"]
    assert summary["factor_scratch_over"]["zero_shot:det"] == scratch


def test_ranked_zero_shot_by_hand(setup):
    """With the heads' weights zero, the policy is a product of per-decision softmaxes of the
    biases, so the ranking and each task's ranked trace can be computed by hand."""
    controller, family = setup["controller"], setup["family"]
    bias = np.array([[0.3, 1.2, -0.4], [0.0, -1.0, 2.0], [0.7, 0.1, 0.5]], np.float32)
    params = dict(setup["params"], head_b=jnp.asarray(bias))
    logsm = bias - np.log(np.exp(bias).sum(axis=1, keepdims=True))
    archs = family.space.enumerate()
    logp = logsm[np.arange(3), archs].sum(axis=1)
    order = np.argsort(-logp, kind="stable")
    task = family.task(int(family.ids("test")[0]))
    np.testing.assert_array_equal(controller.rank(params, task, archs), order)
    # The trace: the first 12 of that order in each table, the same for every seed; a budget
    # beyond the space's 27 architectures cycles through the order again.
    tables = np.stack([TABLE_A, TABLE_B])
    fitness, picked = ranked_runs(controller, params, family.stacked("test"), archs, 30, 3)
    assert fitness.shape == (2, 3, 30) and picked.shape == (2, 3, 30, 3)
    want = np.concatenate([order, order[:3]])
    for t in range(2):
        for s in range(3):
            np.testing.assert_array_equal(picked[t, s], archs[want])
            np.testing.assert_allclose(fitness[t, s], tables[t][want], rtol=1e-6)
    # In the module's run, the deterministic controller ranks (2, 2, 2) first: found at once.
    ranked = setup["summary"]["methods"]["ranked:det"]
    np.testing.assert_array_equal(ranked["evals_to_target"], np.ones((2, 4)))
    assert np.all(setup["runs"]["ranked:det"][1][:, :, 0] == 2)
    assert setup["summary"]["factor_scratch_over"]["ranked:det"] == \
        setup["summary"]["methods"]["scratch"]["median_evals"]


def test_run_meta_test_writes_outputs(setup, tmp_path):
    trained = tmp_path / "meta_train"
    trained.mkdir()
    # Recorded as by a run from before the family's `ranges` and `table.chunk_size` fields
    # existed: they load with their defaults.
    saved = to_python(setup["train_cfg"])
    del saved["family"]["ranges"], saved["family"]["table"]["chunk_size"]
    (trained / CONFIG_FILE).write_text(json.dumps(saved))
    save_controller(str(trained / "controller"), setup["controller"], setup["params"])
    out = tmp_path / "meta_test"
    summary = run_meta_test(_config(str(trained)), str(out))
    for name in ("meta_test.json", "meta_test.md", "regret.png", CONFIG_FILE):
        assert os.path.getsize(out / name) > 0, name
    saved = json.loads((out / "meta_test.json").read_text())
    assert tuple(saved["methods"]) == METHODS and saved["not_reached_counts_as"] == 13
    assert saved["task_ids"] == [4, 5] == summary["task_ids"]
    text = (out / "meta_test.md").read_text()
    methods_part, tasks_part = text.split("Per held-out task")
    rows = [line for line in methods_part.splitlines()
            if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split(" | ")[0][2:] for r in rows] == list(METHODS)
    # Per task: the table's best architecture, and the controller's zero-shot proposal with
    # its regret (here the family's own tables, not the crafted ones).
    assert summary["task_settings"] is None  # a synthetic family has no generator settings
    greedy = summary["zero_shot_greedy"]["det"]
    for t, task in enumerate(summary["task_ids"]):
        regret = summary["task_best"][t] - greedy["fitness"][t]
        assert (f"| {task} | `{summary['task_best_arch'][t]}` ({summary['task_best'][t]:.3f}) "
                f"| `{greedy['arch_strings'][t]}` ({regret:.3f}) |") in tasks_part


def test_per_task_best_and_proposals(setup):
    """On the crafted tables both tasks' best is (2, 2, 2), which the deterministic
    controller proposes: regret 0 in the per-task table."""
    summary = setup["summary"]
    assert summary["task_best_arch"] == ["2,2,2", "2,2,2"]
    assert summary["zero_shot_greedy"]["det"]["arch_strings"] == ["2,2,2", "2,2,2"]
    text = markdown_table(summary)
    assert "| 4 | `2,2,2` (0.900) | `2,2,2` (0.000) |" in text
    assert "| 5 | `2,2,2` (0.900) | `2,2,2` (0.000) |" in text
    # (2, 2, 2) is best on both tables, so no fixed architecture leaves any regret.
    assert summary["best_fixed_arch"] == {"arch": "2,2,2", "mean_regret": 0.0,
                                          "max_regret": 0.0, "tasks_where_best": 2}


def test_best_fixed_architecture_by_hand(setup):
    """With task B's table changed so that (2, 2, 2) is poor there, the best single
    architecture is the one with the best mean over both tables, computed here by hand."""
    summary = setup["summary"]
    family_tables = np.stack([TABLE_A, TABLE_B - np.where(CODES == 26, 0.5, 0.0)])
    best = family_tables.max(axis=1, keepdims=True)
    regret = (best - family_tables).mean(axis=0)
    want = int(np.argmin(regret))
    assert want != 26
    runs = {k: v for k, v in setup["runs"].items()}
    family = setup["family"]
    test_ids = family.ids("test")
    family.attach_tables({int(test_ids[0]): TABLE_A, int(test_ids[1]): family_tables[1]})
    try:
        got = summarise(runs, family, {}, setup["config"])["best_fixed_arch"]
    finally:
        family.attach_tables({int(test_ids[0]): TABLE_A, int(test_ids[1]): TABLE_B})
    arch = ",".join(str(int(c)) for c in np.unravel_index(want, (3, 3, 3)))
    assert got["arch"] == arch
    np.testing.assert_allclose(got["mean_regret"], regret[want], rtol=1e-6)
    np.testing.assert_allclose(got["max_regret"], (best[:, 0] - family_tables[:, want]).max(),
                               rtol=1e-6)
    assert summary["task_ids"] == [4, 5]


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.budget"):
        c = _config()
        c.budget = 0
        validate_meta_test(c)
    with pytest.raises(ConfigError, match=r"config\.controllers: empty"):
        c = _config()
        c.controllers = ml_collections.ConfigDict()
        validate_meta_test(c)
    with pytest.raises(ConfigError, match=r"config\.evolution\.sample_size"):
        c = _config()
        c.evolution.sample_size = 5
        validate_meta_test(c)
    with pytest.raises(ConfigError, match=r"config\.controllers\.det=.*no config\.json"):
        run_meta_test(_config(str(tmp_path / "missing")), str(tmp_path / "out"))


def test_curve_styles():
    """One colour per controller, the line style by kind; baselines in their own styles."""
    names = ("zero_shot:a", "ranked:a", "finetune:a", "zero_shot:b", "ranked:b") + BASELINES
    styles = curve_styles(dict.fromkeys(names))
    assert {styles[n]["color"] for n in names[:3]} == {"C0"}
    assert {styles[n]["color"] for n in names[3:5]} == {"C1"}
    assert [styles[n]["linestyle"] for n in names[:3]] == ["--", "-", ":"]
    assert len({(styles[n]["color"], styles[n]["linestyle"]) for n in names}) == len(names)
