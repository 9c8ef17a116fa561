"""DARTS' collapse with and without a remedy, measured on a tabular benchmark.

A gradient search (``nas_jax.gradient_search``) runs for each variant and seed, each in its
own resumable workdir ``<workdir>/<variant>/seed<k>``. Every epoch's derived cell is looked
up in the table (``search.table_path``), so the runs show how the derived cell's accuracy
and its number of parameter-free ops move while the search goes on. Variants:

- ``darts``: the search as configured (DARTS collapses towards skip connections);
- ``beta_darts``: beta-DARTS' Beta-Decay regulariser (Ye et al., CVPR 2022) with weight
  ``beta_weight``, ramped linearly from 0 (the official code ramps to 50 over 100 epochs);
- ``darts_es``: RobustDARTS' early stopping on the dominant Hessian eigenvalue (Zela et
  al., ICLR 2020), which returns the cell of ``early_stop_window`` epochs before the stop.

``run_collapse(config, workdir)`` (``experiments/collapse.py``) writes ``collapse.json``,
``collapse.md`` (mean +- std over seeds of the returned cell's table accuracy, its
parameter-free ops, the epochs run) and two plots against the epoch:
``collapse_accuracy.png`` and ``collapse_param_free.png`` (a run stopped early counts with
the cell it returned at every later epoch). A finished run is read back, not rerun.
"""

from __future__ import annotations

import copy
import json
import os
import warnings

import ml_collections
import numpy as np

from nas_jax.config import ConfigError, check_schema
from nas_jax.evaluators.table import TableEvaluator
from nas_jax.gradient_search import (
    gradient_search_config,
    run_gradient_search,
    validate_gradient_config,
)
from nas_jax.runner import check_same_run
from nas_jax.utils.metrics import CONFIG_FILE, atomic_write, read_jsonl
from nas_jax.utils.plots import plot_curves

VARIANTS = ("darts", "beta_darts", "darts_es")


def collapse_config() -> ml_collections.ConfigDict:
    """The schema of a collapse study (every field with its default)."""
    c = ml_collections.ConfigDict()
    c.search = gradient_search_config()  # the plain DARTS search every variant starts from
    c.variants = VARIANTS
    c.seeds = 3  # searches per variant, seeds 0..seeds-1
    c.beta_weight = 50.0  # beta_darts: the regulariser's final weight
    return c


def variant_config(config: ml_collections.ConfigDict, variant: str,
                   seed: int) -> ml_collections.ConfigDict:
    """The gradient-search config of one variant and seed."""
    c = copy.deepcopy(config.search)
    c.seed = seed
    if variant == "beta_darts":
        c.strategy.beta_weight = float(config.beta_weight)
    elif variant == "darts_es":
        c.diagnostics.early_stop = True
        c.diagnostics.eigen_every = 1
    return c


def validate_collapse(config: ml_collections.ConfigDict) -> None:
    """Check the study's config; ``ConfigError`` names the field."""
    check_schema(config, collapse_config(), "")
    if config.seeds < 1:
        raise ConfigError(f"config.seeds={config.seeds}: must be >= 1")
    if config.beta_weight <= 0:
        raise ConfigError(f"config.beta_weight={config.beta_weight}: must be > 0")
    if not config.variants or len(set(config.variants)) != len(config.variants):
        raise ConfigError(f"config.variants={tuple(config.variants)!r}: give distinct variants "
                          f"among {', '.join(VARIANTS)}")
    for name in config.variants:
        if name not in VARIANTS:
            raise ConfigError(f"config.variants: {name!r} is unknown; allowed: "
                              f"{', '.join(VARIANTS)}")
    if not config.search.table_path:
        raise ConfigError("config.search.table_path is empty: the study scores the derived "
                          "cells in a table (e.g. tables/nb201_c8n1_digits.npz)")
    if config.search.strategy.beta_weight or config.search.diagnostics.early_stop:
        raise ConfigError("config.search is the plain search every variant starts from: set "
                          "search.strategy.beta_weight=0 and search.diagnostics.early_stop="
                          "False (the variants turn them on)")
    for name in config.variants:
        validate_gradient_config(variant_config(config, name, 0))


def _curve(rows: list[dict], key: str, epochs: int, returned=None) -> np.ndarray:
    """``key`` of the derived cell after each epoch; a run stopped early returns the cell
    ``returned`` (its value of ``key``) at every later epoch, so curves average what each
    run would hand back if asked at that epoch."""
    out = np.full(epochs, np.nan)
    last = 0
    for row in rows:
        if row.get(key) is not None and row.get("step", 0) >= 1:
            out[int(row["step"]) - 1] = float(row[key])
            last = max(last, int(row["step"]))
    if returned is not None and last < epochs:
        out[last:] = returned
    return out


def _run(config: ml_collections.ConfigDict, run_dir: str) -> dict:
    """A finished run's result (same config), else run or resume it."""
    path = os.path.join(run_dir, "result.json")
    if os.path.isfile(path):
        check_same_run(run_dir, config)
        with open(path) as f:
            return json.load(f)
    return run_gradient_search(config, run_dir)


def _mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    if not np.isfinite(values).any():
        return float("nan"), float("nan")
    return float(np.nanmean(values)), float(np.nanstd(values))


def run_collapse(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or resume) every variant and seed, then write the summary; returns it."""
    validate_collapse(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    table = TableEvaluator.from_path(config.search.table_path, allow_partial=True)
    epochs = config.search.train.epochs
    summary = {"table": config.search.table_path, "table_best_test_accuracy":
               table.best_test_accuracy, "epochs": epochs, "seeds": config.seeds,
               "beta_weight": config.beta_weight, "variants": {}}
    acc_curves, free_curves = {}, {}
    for name in config.variants:
        runs = []
        for seed in range(config.seeds):
            run_dir = os.path.join(workdir, name, f"seed{seed}")
            print(f"collapse study: {name}, seed {seed} -> {run_dir}", flush=True)
            result = _run(variant_config(config, name, seed), run_dir)
            rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
            stopped = result["early_stopped"]
            test = result.get("table_test_accuracy", np.nan)
            runs.append({"seed": seed, "genotype": result["arch_string"],
                         "table_test_accuracy": test,
                         "table_valid_accuracy": result.get("table_valid_accuracy", np.nan),
                         "num_parameter_free": result["num_parameter_free"],
                         "epochs_run": result["epochs_run"],
                         "returned_epoch": result.get("returned_epoch", result["epochs_run"]),
                         "accuracy_by_epoch": _curve(rows, "table_test_accuracy", epochs,
                                                     test if stopped else None),
                         "param_free_by_epoch": _curve(rows, "num_parameter_free", epochs,
                                                       result["num_parameter_free"]
                                                       if stopped else None)})
        acc = np.stack([r["accuracy_by_epoch"] for r in runs])
        free = np.stack([r["param_free_by_epoch"] for r in runs])
        x = np.arange(1, epochs + 1)
        with warnings.catch_warnings():  # an epoch no seed reached: NaN, as it should
            warnings.simplefilter("ignore", RuntimeWarning)
            acc_curves[name] = (x, np.nanmean(acc, 0), np.nanstd(acc, 0))
            free_curves[name] = (x, np.nanmean(free, 0), np.nanstd(free, 0))
        test_mean, test_std = _mean_std([r["table_test_accuracy"] for r in runs])
        free_mean, free_std = _mean_std([r["num_parameter_free"] for r in runs])
        summary["variants"][name] = {
            "table_test_accuracy_mean": test_mean, "table_test_accuracy_std": test_std,
            "num_parameter_free_mean": free_mean, "num_parameter_free_std": free_std,
            "epochs_run_mean": float(np.mean([r["epochs_run"] for r in runs])),
            "returned_epoch_mean": float(np.mean([r["returned_epoch"] for r in runs])),
            "runs": [{k: (v.tolist() if isinstance(v, np.ndarray) else v)
                      for k, v in r.items()} for r in runs]}
    summary["markdown"] = _markdown(summary)
    atomic_write(os.path.join(workdir, "collapse.json"),
                 lambda f: json.dump(_finite(summary), f, indent=2, sort_keys=True))
    atomic_write(os.path.join(workdir, "collapse.md"), lambda f: f.write(summary["markdown"]))
    plot_curves(os.path.join(workdir, "collapse_accuracy.png"), acc_curves, xlabel="epoch",
                ylabel="derived cell's table test accuracy",
                title="Cell returned at each epoch (mean +- std over seeds)")
    plot_curves(os.path.join(workdir, "collapse_param_free.png"), free_curves, xlabel="epoch",
                ylabel="parameter-free ops in the derived cell",
                title="Parameter-free ops by epoch (mean +- std over seeds)")
    print(summary["markdown"], flush=True)
    return summary


def _finite(value):
    """NaN -> None, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _markdown(summary: dict) -> str:
    lines = [f"Table: {summary['table']} (best mean test accuracy "
             f"{summary['table_best_test_accuracy']:.4f}); {summary['seeds']} seeds x "
             f"{summary['epochs']} epochs per variant.", "",
             "| variant | returned cell's test accuracy | parameter-free ops | "
             "epochs run | cell returned from epoch |", "|---|---|---|---|---|"]
    for name, v in summary["variants"].items():
        lines.append(f"| {name} | {v['table_test_accuracy_mean']:.4f} ± "
                     f"{v['table_test_accuracy_std']:.4f} | {v['num_parameter_free_mean']:.2f} ± "
                     f"{v['num_parameter_free_std']:.2f} | {v['epochs_run_mean']:.1f} | "
                     f"{v['returned_epoch_mean']:.1f} |")
    lines += ["", "Returned cells:", ""]
    for name, v in summary["variants"].items():
        for r in v["runs"]:
            lines.append(f"- {name}, seed {r['seed']}: `{r['genotype']}` "
                         f"({r['table_test_accuracy']:.4f})")
    return "\n".join(lines) + "\n"
