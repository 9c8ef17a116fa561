"""The search runner end to end: workdir contents, and exact resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nas_jax.utils.metrics import read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCH = os.path.join(REPO, "experiments", "search.py")
TINY = [
    "--config.space.channels=2",
    "--config.strategy.population_size=3",
    "--config.strategy.sample_size=2",
    "--config.strategy.batch_size=2",
    "--config.budget.num_evaluations=8",
    "--config.evaluator.steps=3",
    "--config.evaluator.batch_size=16",
    "--config.retrain.steps=3",
    "--config.retrain.batch_size=16",
    "--config.runtime.progress_interval_s=0",
    "--config.baselines=('mlp:mlp(32,relu)',)",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla_cache"))


def _command(workdir, cache_dir, *extra):
    return [sys.executable, SEARCH, f"--config={os.path.join(REPO, 'configs', 'default.py')}",
            f"--workdir={workdir}", f"--config.runtime.compilation_cache_dir={cache_dir}",
            *TINY, *extra]


def _run(workdir, cache_dir, *extra):
    proc = subprocess.run(_command(workdir, cache_dir, *extra), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    proc = _run(workdir, cache_dir)
    return workdir, proc


def _steps(workdir):
    ckpt = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt):
        return []
    return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())


def _kill_when(workdir, cache_dir, condition, timeout=300):
    """Start a run, SIGKILL it as soon as ``condition(workdir)`` holds."""
    proc = subprocess.Popen(_command(workdir, cache_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline:
            if condition(workdir):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        proc.wait()
    return proc.returncode


def test_workdir_is_filled(uninterrupted):
    workdir, proc = uninterrupted
    names = set(os.listdir(workdir))
    expected = {"config.json", "metrics.jsonl", "tb", "checkpoints", "best_architecture.json",
                "best_architecture.txt", "search_curve.png"}
    assert expected <= names
    rows = read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(9))
    assert rows[-1]["test_accuracy"] is not None
    best = json.loads((workdir / "best_architecture.json").read_text())
    assert best["num_evaluations"] == 8
    assert best["valid_accuracy"] == max(r["fitness"] for r in rows[:-1])
    assert (workdir / "best_architecture.txt").read_text().strip() == best["arch_string"]
    [baseline] = best["baselines"]
    assert baseline["space"] == "mlp" and baseline["arch_string"] == "mlp(32,relu)"
    assert baseline["num_params"] == 64 * 32 + 32 + 32 * 10 + 10  # digits: 8x8 in, 10 classes
    assert 0.0 <= baseline["test_accuracy"] <= 1.0 and baseline["finite"]
    assert "baseline mlp" in proc.stdout
    assert os.listdir(workdir / "tb")
    with open(workdir / "search_curve.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "test accuracy (retrained)" in proc.stdout
    assert best["arch_string"] in proc.stdout
    config = json.loads((workdir / "config.json").read_text())
    assert config["budget"]["num_evaluations"] == 8


def test_rerun_on_finished_workdir_resumes_without_work(uninterrupted, cache_dir):
    workdir, first = uninterrupted
    before = (workdir / "metrics.jsonl").read_text()
    proc = _run(workdir, cache_dir)
    assert "resuming" in proc.stderr
    assert (workdir / "metrics.jsonl").read_text() == before


def test_killed_runs_resume_exactly(uninterrupted, cache_dir, tmp_path):
    reference, _ = uninterrupted
    workdir = tmp_path / "killed"
    # Killed after the first checkpoint, and after the last round (during retraining). A kill
    # before any checkpoint leaves nothing to resume from (the rerun starts afresh).
    conditions = [
        lambda w: len(_steps(w)) > 0,
        lambda w: any(s >= 4 for s in _steps(w)),
    ]
    for condition in conditions:
        code = _kill_when(workdir, cache_dir, condition)
        assert code in (-signal.SIGKILL, 0)
    _run(workdir, cache_dir)
    assert (workdir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    got = json.loads((workdir / "best_architecture.json").read_text())
    want = json.loads((reference / "best_architecture.json").read_text())
    assert got == want


def test_resume_with_a_different_config_is_refused(uninterrupted, cache_dir):
    workdir, _ = uninterrupted
    proc = subprocess.run(_command(workdir, cache_dir, "--config.seed=1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert "config error: config.seed: differs from the run checkpointed" in proc.stderr
