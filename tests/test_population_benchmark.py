"""The population benchmark's plumbing on a tiny workload (timings are not asserted)."""

import json

import pytest

from nas_jax.benchmark import benchmark_config, run_benchmark


def _tiny(executions):
    c = benchmark_config()
    c.train_examples, c.valid_examples, c.matmul_size = 32, 16, 64
    c.run = ("small",)
    w = c.workloads.small
    w.channels, w.input_shape, w.batch_size, w.candidates, w.steps = 2, (8, 8, 1), 8, 2, 2
    w.executions = executions
    return c


def test_row_cold_and_warm(tmp_path):
    """An execution's row; with ``warm``, a second call on the same evaluator reuses its
    programs and repeats the training exactly (same key: the same fitness on XLA:CPU). That
    the executions train alike is tested in tests/evaluators/test_executors.py (a second
    execution here cost ~15 s of the suite)."""
    c = _tiny(("composed",))
    c.warm = True
    lines = []
    out = run_benchmark(c, str(tmp_path), log=lines.append)
    assert [r["execution"] for r in out["rows"]] == ["composed"]
    for row in out["rows"]:
        assert row["seconds"] > 0 and row["candidate_steps_per_s"] > 0
        assert 0 < row["share_of_peak"]
        assert row["warm_seconds"] > 0 and row["warm_candidate_steps_per_s"] > 0
        assert row["warm_mean_fitness"] == row["mean_fitness"]
    assert json.loads((tmp_path / "benchmark.json").read_text())["rows"] == out["rows"]
    assert any(line.startswith("small    composed") for line in lines)
    assert "warm cand-steps/s" in lines[2] and len(lines[3].split()) == 10


def test_unknown_execution_is_named():
    with pytest.raises(ValueError, match="workloads.small.executions: 'fast'"):
        run_benchmark(_tiny(("fast",)))


def test_cpu_defaults_leave_out_the_mixture_executions():
    c = benchmark_config()  # the suite runs on CPU
    assert tuple(c.workloads.small.executions) == ("switch", "composed", "compiled")
    assert tuple(c.workloads.large.executions) == ("switch", "composed")
