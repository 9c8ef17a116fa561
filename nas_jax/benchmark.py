"""Population-training throughput of each execution strategy, measured side by side.

``run_benchmark(config)`` times, in one process and on the same candidates and data, every
execution strategy listed per workload, end to end from a cold start (compilation
included; the persistent compilation cache is not used), and prints candidate-steps per
second, the useful FLOP rate (FLOPs of the chosen operations only: 3x a forward pass per
training example, as for backprop) and that rate as a share of the machine's fp32 matmul
peak, measured in the same run. Only ratios within one run are meaningful on a shared
machine; absolute numbers move with load.

With ``warm=True`` each execution is also timed a second time on the same evaluator, whose
compiled programs are then reused: that is the steady-state cost, and cold minus warm is
about the compile time. On a GPU, where one compile of the supernet's step takes about a
minute, the cold figure alone cannot tell a slow program from a slow compiler.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nas_jax.evaluators.population import EXECUTIONS, PopulationEvaluator
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.train.steps import Recipe


def benchmark_config() -> ml_collections.ConfigDict:
    """Defaults: the two workloads of the engine issue (NB201, 16 random cells each).

    The mixture executions, which compute every operation of every edge, are listed only off
    CPU: ``vmap`` (on XLA:CPU its per-candidate convolutions become grouped convolutions, and
    the small workload alone ran for more than 10 minutes on 2 idle cores without finishing)
    and ``loop`` (the mixture in a host loop: 49-64 s of the small workload there, the
    slowest row but ``compiled``, and 430 s of the large one). The large workload lists the
    two fastest CPU executions only (``compiled`` takes minutes there), so the whole
    benchmark runs in ~8 minutes on 2 cores (8 min 43 s with ``loop`` on 2026-12-01, 10 min
    3 s on a slower day). Add them with ``workloads.<name>.executions=...``."""
    mixture = () if jax.default_backend() == "cpu" else ("vmap", "loop")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.warm = False  # also time a second, warm call per execution (compiled programs reused)
    c.train_examples = 1024
    c.valid_examples = 256
    c.matmul_size = 2048
    c.run = ("small", "large")  # which of the workloads below, in order
    c.workloads = ml_collections.ConfigDict()
    c.workloads.small = ml_collections.ConfigDict(dict(
            name="small", channels=8, cells_per_stage=1, input_shape=(16, 16, 3),
            batch_size=64, candidates=16, steps=50,
            executions=mixture + ("switch", "composed", "compiled"), vmap_candidates=16))
    c.workloads.large = ml_collections.ConfigDict(dict(
            name="large", channels=16, cells_per_stage=5, input_shape=(32, 32, 3),
            batch_size=64, candidates=16, steps=10,
            executions=mixture[:1] + ("switch", "composed"), vmap_candidates=4))
    return c


def measure_matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """fp32 FLOP/s of a jitted ``size x size`` matmul (best of ``repeats``)."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * size**3 / best


def _workload_data(key, w, n_train: int, n_valid: int):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    shape = tuple(w.input_shape)
    train = (jax.random.normal(k1, (n_train,) + shape), jax.random.randint(k2, (n_train,), 0, 10))
    valid = (jax.random.normal(k3, (n_valid,) + shape), jax.random.randint(k4, (n_valid,), 0, 10))
    return train, valid


def time_execution(space, archs, train, valid, recipe: Recipe, execution: str,
                   key: jax.Array, warm: bool = False) -> dict:
    """Seconds to train and score ``archs`` from a cold start with one execution; with
    ``warm``, also the seconds of a second call on the same evaluator (``warm_seconds``,
    its programs already compiled; same key, so the same fitness up to the backend's
    nondeterminism)."""
    evaluator = PopulationEvaluator(space, train, valid, recipe, execution=execution)

    def timed():
        t0 = time.perf_counter()
        fitness, _ = evaluator(key, archs)
        jax.block_until_ready(fitness)
        return time.perf_counter() - t0, np.asarray(fitness).tolist()

    seconds, fitness = timed()
    out = {"seconds": seconds, "fitness": fitness, "warm_seconds": None}
    if warm:
        out["warm_seconds"], out["warm_fitness"] = timed()
    return out


def run_workload(w, config, peak: float, log=print) -> list[dict]:
    """Every listed execution on one workload; one result row each."""
    space = NB201Space(channels=w.channels, cells_per_stage=w.cells_per_stage,
                       input_shape=tuple(w.input_shape), num_classes=10)
    key = jax.random.key(config.seed)
    archs = np.asarray(space.sample_population(jax.random.fold_in(key, 1), w.candidates))
    train, valid = _workload_data(jax.random.fold_in(key, 2), w, config.train_examples,
                                  config.valid_examples)
    recipe = Recipe(steps=w.steps, batch_size=w.batch_size, optimizer="sgd",
                    learning_rate=0.05, eval_batch_size=256)
    rows = []
    for execution in w.executions:
        if execution not in EXECUTIONS or execution == "auto":
            raise ValueError(f"workloads.{w.name}.executions: {execution!r}; allowed: "
                             f"{', '.join(e for e in EXECUTIONS if e != 'auto')}")
        n = w.vmap_candidates if execution == "vmap" else w.candidates
        # The runs' PRNG setting (runner.setup_runtime): XLA:CPU compiles inits much faster.
        with jax.threefry_partitionable(False):
            result = time_execution(space, archs[:n], train, valid, recipe, execution,
                                    jax.random.fold_in(key, 3), warm=config.warm)
        useful = sum(3.0 * space.flops(a) * w.batch_size * w.steps for a in archs[:n])
        row = {
            "workload": w.name, "execution": execution, "candidates": n, "steps": w.steps,
            "seconds": result["seconds"],
            "candidate_steps_per_s": n * w.steps / result["seconds"],
            "useful_gflops_per_s": useful / result["seconds"] / 1e9,
            "share_of_peak": useful / result["seconds"] / peak,
            "mean_fitness": float(np.mean(result["fitness"])),
            "warm_seconds": result["warm_seconds"],
            "warm_candidate_steps_per_s": (None if result["warm_seconds"] is None
                                           else n * w.steps / result["warm_seconds"]),
            "warm_mean_fitness": (float(np.mean(result["warm_fitness"]))
                                  if config.warm else None),
        }
        rows.append(row)
        log(format_row(row))
    return rows


HEADER = (f"{'workload':8s} {'execution':10s} {'cands':>5s} {'steps':>5s} {'seconds':>8s} "
          f"{'cand-steps/s':>12s} {'useful GFLOP/s':>14s} {'of peak':>8s}")


WARM_HEADER = f" {'warm s':>8s} {'warm cand-steps/s':>17s}"


def format_row(r: dict) -> str:
    line = (f"{r['workload']:8s} {r['execution']:10s} {r['candidates']:5d} {r['steps']:5d} "
            f"{r['seconds']:8.1f} {r['candidate_steps_per_s']:12.1f} "
            f"{r['useful_gflops_per_s']:14.2f} {100 * r['share_of_peak']:7.1f}%")
    if r.get("warm_seconds") is not None:
        line += f" {r['warm_seconds']:8.2f} {r['warm_candidate_steps_per_s']:17.1f}"
    return line


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True,
                              cwd=os.path.dirname(__file__)).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_benchmark(config: ml_collections.ConfigDict, workdir: str | None = None,
                  log=print) -> dict:
    """Run every workload; print the table; write ``benchmark.json`` into ``workdir``."""
    peak = measure_matmul_peak(config.matmul_size)
    header = {
        "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__, "commit": _commit(),
        "matmul_peak_gflops_per_s": peak / 1e9,
    }
    log(f"backend {header['backend']} ({len(header['devices'])} device(s), "
        f"{header['cpu_count']} CPUs), jax {header['jax']}, commit {header['commit']}")
    log(f"measured fp32 matmul peak ({config.matmul_size}^3): {peak / 1e9:.0f} GFLOP/s")
    log(HEADER + (WARM_HEADER if config.warm else ""))
    rows = []
    for name in config.run:
        if name not in config.workloads:
            raise ValueError(f"config.run: unknown workload {name!r}; defined: "
                             f"{', '.join(config.workloads.keys())}")
        w = config.workloads[name]
        rows.extend(run_workload(w, config, peak, log))
    out = {**header, "rows": rows}
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "benchmark.json"), "w") as f:
            json.dump(out, f, indent=1)
    return out
