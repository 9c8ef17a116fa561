"""experiments/benchmark.py runs without the dataset stack, as the GPU check needs
(experiments/device_check.sh: the GPU machine has JAX but not TFDS, Grain or mnist1d)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = '''
import importlib.abc, sys
BLOCKED = {"tensorflow_datasets", "grain", "mnist1d", "tensorboardX", "array_record"}
class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked by the test")
sys.meta_path.insert(0, _Blocker())
'''


def test_search_benchmark_runs_without_the_dataset_stack(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path / "site"),
                                                      env.get("PYTHONPATH")]))
    blocked = subprocess.run([sys.executable, "-c", "import tensorflow_datasets"], env=env,
                             capture_output=True, text=True)
    assert blocked.returncode != 0 and "blocked by the test" in blocked.stderr
    work = tmp_path / "work"
    run = subprocess.run(
        [sys.executable, "experiments/benchmark.py", "--config=configs/benchmark_darts.py",
         "--config.methods=('random_path_composed',)", "--config.channels=2",
         "--config.cells_per_stage=1", "--config.input_shape=(8,8,3)", "--config.batch_size=8",
         "--config.steps=1", f"--workdir={work}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads((work / "search_benchmark.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["random_path_composed"] and rows[0]["finite"]


def test_device_check_script_parses():
    run = subprocess.run(["bash", "-n", "experiments/device_check.sh"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


TINY_PROFILE = ["--config=configs/benchmark_darts.py", "--config.channels=2",
                "--config.cells_per_stage=1", "--config.input_shape=(8,8,3)",
                "--config.batch_size=8", "--config.fast_compile=True", "--calls=1", "--top=5"]


@pytest.mark.slow
def test_profile_step_prints_and_writes_the_operations_of_a_step(tmp_path):
    """experiments/profile_step.py on a tiny supernet: the categories and rows are printed
    and written (~20 s on 2 cores, mostly compiling the step; its parts are tested in
    tests/utils/test_profile.py and tests/test_search_benchmark.py)."""
    out = tmp_path / "profile.json"
    run = subprocess.run(
        [sys.executable, "experiments/profile_step.py", *TINY_PROFILE, "--method=random_path",
         f"--json={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "random_path on cpu, NB201 C=2 N=1" in run.stdout
    assert "by category:" in run.stdout and "top 5 operations" in run.stdout
    profile = json.loads(out.read_text())
    assert profile["method"] == "random_path" and profile["wall_s"] > 0
    assert "convolution" in {row["category"] for row in profile["rows"]}


def test_profile_step_refuses_a_composed_method_naming_the_flag():
    refused = subprocess.run(
        [sys.executable, "experiments/profile_step.py", *TINY_PROFILE, "--method=gdas_composed"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert "--method: method 'gdas_composed' runs as many programs" in refused.stderr
