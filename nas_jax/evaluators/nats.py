"""Read NAS-Bench-201 / NATS-Bench topology (``tss``) results into a ``Table``.

Three on-disk forms of the same data (Dong & Yang, ICLR 2020; Dong et al., TPAMI 2021):

- ``NATS-tss-v1_0-3ffb9-simple/``: ``meta.pickle.pbz2`` (``{'meta_archs': [arch strings]}``)
  and one ``{index:06d}.pickle.pbz2`` per architecture, ``{'12': results, '200': results}``;
- ``NATS-tss-v1_0-3ffb9.pickle.pbz2``: ``{'meta_archs', 'arch2infos': {index: {'12': ...,
  '200': ...}}, 'evaluated_indexes'}`` in one bz2 pickle;
- ``NAS-Bench-201-v1_1-096897.pth`` (a torch pickle; needs PyTorch): the same dict with
  ``'less'`` (12 epochs) and ``'full'`` (200 epochs) instead of ``'12'``/``'200'``.

``results`` is an ``ArchResults`` state dict: ``dataset_seed {dataset: [seeds]}`` and
``all_results {(dataset, seed): trial}``, where a trial holds ``train_losses {epoch: loss}``,
``train_times``, ``eval_acc1es``/``eval_losses`` ``{'<set>@<epoch>': value}`` (accuracy in
percent), ``params`` (millions), ``flop`` (millions) and ``epochs``. These are plain pickles:
only read files you trust.
"""

from __future__ import annotations

import bz2
import os
import pickle

import numpy as np

from nas_jax.evaluators.table import Table, git_commit, make_table, utc_now
from nas_jax.spaces.nb201 import NB201Space

# dataset -> ((benchmark dataset, set) of the valid accuracy, (dataset, set) of the test one).
# 'cifar10' follows NATS-Bench's protocol: search on cifar10-valid's validation split, report
# the test accuracy of the network trained on train+valid.
SETS = {
    "cifar10-valid": (("cifar10-valid", "x-valid"), ("cifar10-valid", "ori-test")),
    "cifar10": (("cifar10-valid", "x-valid"), ("cifar10", "ori-test")),
    "cifar100": (("cifar100", "x-valid"), ("cifar100", "x-test")),
    "ImageNet16-120": (("ImageNet16-120", "x-valid"), ("ImageNet16-120", "x-test")),
}
SHAPES = {"cifar10-valid": ((32, 32, 3), 10), "cifar10": ((32, 32, 3), 10),
          "cifar100": ((32, 32, 3), 100), "ImageNet16-120": ((16, 16, 3), 120)}
PTH_KEYS = {12: "less", 200: "full"}
WHERE = ("NATS-Bench (no PyTorch needed): NATS-tss-v1_0-3ffb9-simple.tar from "
         "https://github.com/D-X-Y/NATS-Bench (README: Preparation and Download), extracted to "
         "a folder; NAS-Bench-201: NAS-Bench-201-v1_1-096897.pth from "
         "https://github.com/D-X-Y/NAS-Bench-201")


def _load_pbz2(path: str):
    with bz2.BZ2File(path, "rb") as f:
        return pickle.load(f)


def _load_pth(path: str):
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path}: reading a NAS-Bench-201 .pth file needs PyTorch (pip install "
                          "torch), or use NATS-Bench's pickle files, which do not") from None
    return torch.load(path, map_location="cpu", weights_only=False)


def _entries(path: str):
    """``(meta_archs, {index: {hp: results}})`` (lazily loaded in the folder form)."""
    if os.path.isdir(path):
        meta = os.path.join(path, "meta.pickle.pbz2")
        if not os.path.isfile(meta):
            raise FileNotFoundError(f"{path} has no meta.pickle.pbz2; expected the "
                                    f"NATS-tss-v1_0-3ffb9-simple folder. Get it: {WHERE}")
        archs = _load_pbz2(meta)["meta_archs"]
        files = {}
        for name in os.listdir(path):
            stem = name.split(".")[0]
            if name.endswith(".pickle.pbz2") and stem.isdigit():
                files[int(stem)] = os.path.join(path, name)
        return archs, {i: (lambda p=p: _load_pbz2(p)) for i, p in sorted(files.items())}
    data = _load_pth(path) if path.endswith(".pth") else _load_pbz2(path)
    for key in ("meta_archs", "arch2infos"):
        if key not in data:
            raise ValueError(f"{path}: no {key!r}; not a NAS-Bench-201 / NATS-Bench tss file")
    return data["meta_archs"], {int(i): (lambda v=v: v)
                                for i, v in sorted(data["arch2infos"].items())}


def _trials(results: dict, dataset: str, where: str) -> list[dict]:
    seeds = results.get("dataset_seed", {}).get(dataset)
    if not seeds:
        known = ", ".join(results.get("dataset_seed", {})) or "none"
        raise ValueError(f"{where}: no results for {dataset!r} (has: {known})")
    return [results["all_results"][(dataset, seed)] for seed in sorted(seeds)]


def _eval(trial: dict, name: str, kind: str, where: str) -> float:
    key = f"{name}@{trial['epochs'] - 1}"
    table = trial[kind]
    if key not in table:
        raise ValueError(f"{where}: trial has no {kind}[{key!r}]")
    return float(table[key])


def _train_seconds(trial: dict) -> float:
    times = trial.get("train_times")
    return float(sum(times.values())) if isinstance(times, dict) and times else np.nan


def read_nats(path: str, *, dataset: str = "cifar10", epochs: int = 200) -> Table:
    """All architectures' results for ``dataset`` after ``epochs`` (12 or 200) of training, as
    a ``Table`` with ``rows='architectures'`` (the benchmark trained isomorphic cells
    separately; row ``i`` is benchmark index ``i``). Seeds are the benchmark's trials, fewer
    for some architectures (NaN after them). Accuracies are fractions; costs are counts."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"no NAS-Bench-201 / NATS-Bench file at {path}. Get it: {WHERE}")
    if dataset not in SETS:
        raise ValueError(f"dataset={dataset!r}; allowed: {', '.join(SETS)}")
    if epochs not in PTH_KEYS:
        raise ValueError(f"epochs={epochs}; the topology benchmark has 12 and 200")
    hp = PTH_KEYS[epochs] if path.endswith(".pth") else str(epochs)
    (valid_ds, valid_set), (test_ds, test_set) = SETS[dataset]
    shape, classes = SHAPES[dataset]
    space = NB201Space(channels=16, cells_per_stage=5, input_shape=shape, num_classes=classes)
    meta_archs, entries = _entries(path)
    rows = []
    for index, load in entries.items():
        where = f"{path}: architecture {index}"
        per_hp = load()
        if hp not in per_hp:
            raise ValueError(f"{where}: no {hp!r} results (has: {', '.join(map(str, per_hp))})")
        results = per_hp[hp]
        valid_trials = _trials(results, valid_ds, where)
        test_trials = _trials(results, test_ds, where)
        rows.append(dict(
            arch=space.from_string(meta_archs[index]),
            valid_accuracy=[_eval(t, valid_set, "eval_acc1es", where) / 100 for t in valid_trials],
            valid_loss=[_eval(t, valid_set, "eval_losses", where) for t in valid_trials],
            train_loss=[float(t["train_losses"][t["epochs"] - 1]) for t in valid_trials],
            train_seconds=[_train_seconds(t) for t in valid_trials],
            test_accuracy=[_eval(t, test_set, "eval_acc1es", where) / 100 for t in test_trials],
            params=round(float(valid_trials[0]["params"]) * 1e6),
            flops=round(float(valid_trials[0]["flop"]) * 1e6)))
    if not rows:
        raise ValueError(f"{path}: no architecture results found")
    seeds = max(max(len(r["valid_accuracy"]), len(r["test_accuracy"])) for r in rows)

    def packed(name):
        out = np.full((len(rows), seeds), np.nan, np.float32)
        for i, r in enumerate(rows):
            out[i, : len(r[name])] = r[name]
        return out

    metadata = {"source": "nats", "path": path, "dataset": dataset, "epochs": epochs,
                "benchmark_sets": {"valid": [valid_ds, valid_set], "test": [test_ds, test_set]},
                "recipe": f"NAS-Bench-201 {epochs}-epoch schedule", "seeds": "benchmark trials",
                "commit": git_commit(), "date": utc_now(), "num_benchmark_archs": len(meta_archs),
                "indexes": [int(i) for i in entries]}
    per_seed = {n: packed(n) for n in ("valid_accuracy", "test_accuracy", "valid_loss",
                                       "train_loss", "train_seconds")}
    return make_table(space, np.stack([r["arch"] for r in rows]), metadata=metadata,
                      rows="architectures", space_name="nb201",
                      params=[r["params"] for r in rows], flops=[r["flops"] for r in rows],
                      **per_seed)
