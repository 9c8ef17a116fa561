"""A whole search run: validate, load data, search round by round with checkpoints, retrain.

``run_search(config, workdir)`` is what ``experiments/search.py`` calls. A run started on a
workdir that holds a checkpoint resumes from it; round ``r`` always uses the key
``fold_in(key(seed), r)``, so a run killed at any point and restarted ends with exactly
the same architectures, fitness and metrics as an uninterrupted one.

Many devices: the evaluator gets the mesh of ``config.runtime`` (population split over
``candidates``, batches over ``data``). Many processes (``jax.distributed``): every process
runs this same loop; each evaluates its share of a round's candidates and all get the full
result, so strategies stay identical everywhere. Process 0 alone writes metrics, plots and
results; checkpoints are saved by all processes together (orbax's protocol), which needs
the workdir on a filesystem every process sees.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time

import jax
import ml_collections
import numpy as np

from nas_jax import registry
from nas_jax.config import ConfigError, parse_baselines, validate
from nas_jax.data.datasets import load_dataset
from nas_jax.evaluators.population import train_standalone
from nas_jax.train.steps import recipe_from_config
from nas_jax.utils import sharding
from nas_jax.utils.checkpoint import Checkpointer
from nas_jax.utils.metrics import CONFIG_FILE, MetricWriter, Progress, to_python
from nas_jax.utils.plots import plot_search_curve

RETRAIN_KEY = 2**31 - 1  # fold_in index of the retraining key, apart from the round keys
SUPERNET_KEY = 2**31 - 2  # fold_in index of the one-shot supernet's training key
INIT_FROM_KEY = 2**31 - 3  # ... of a meta-trained controller's fresh task embedding


def setup_runtime(runtime: ml_collections.ConfigDict) -> None:
    """Process-wide JAX settings of a run: PRNG implementation and the compilation cache.

    ``threefry_partitionable=False`` (JAX's former default) makes XLA:CPU compile parameter
    initialisation, which is part of every training program, several times faster (NB201
    init alone: 32 s -> 6.5 s measured here); random streams differ from the partitionable
    one but are just as deterministic. The persistent cache lets later processes (resumes,
    reruns) skip compiling.
    """
    jax.config.update("jax_threefry_partitionable", runtime.threefry_partitionable)
    path = runtime.compilation_cache_dir
    if not path:
        return
    path = os.path.expanduser(path)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def check_same_run(workdir: str, config: ml_collections.ConfigDict) -> None:
    """A workdir's checkpoint may only be resumed by the config that wrote it."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    current = to_python(config)
    for fields in (saved, current):  # these may change between a run and its resume
        for name in ("compilation_cache_dir", "progress_interval_s", "mesh_candidates",
                     "mesh_data"):  # results do not depend on the device split
            fields.get("runtime", {}).pop(name, None)
    if saved != current:
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise ConfigError(
            f"config.{changed[0]}: differs from the run checkpointed in {workdir}; "
            "resume with the same config or use a new --workdir"
        )


def say(message: str) -> None:
    """A status line on stderr, from process 0 only."""
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


class _ProcessCheckpointer:
    """The run's checkpointer, also in multi-process runs: orbax saves and restores only
    arrays that span the processes, so the (identical) per-process state is replicated over
    every device for a save and brought back to this process's device after a restore."""

    def __init__(self, ckpt: Checkpointer):
        self.ckpt = ckpt
        self.mesh = sharding.make_mesh() if jax.process_count() > 1 else None

    def save(self, step: int, state, meta: dict) -> None:
        if self.mesh is not None:
            state = sharding.to_global(state, self.mesh)
        self.ckpt.save(step, state, meta=meta)

    def restore(self, like):
        if self.mesh is None:
            return self.ckpt.restore(like, with_meta=True)
        state, meta = self.ckpt.restore(sharding.to_global(like, self.mesh), with_meta=True)
        return sharding.to_local(state), meta


def _with_mesh(evaluator, mesh):
    """The evaluator on ``mesh`` where it takes one (a ``mesh`` field); others run whole on
    every process."""
    if mesh is None or not dataclasses.is_dataclass(evaluator):
        return evaluator
    if "mesh" not in {f.name for f in dataclasses.fields(evaluator)}:
        return evaluator
    return dataclasses.replace(evaluator, mesh=mesh)


def open_run(config: ml_collections.ConfigDict, workdir: str):
    """What every run does first with its (validated) config: create ``workdir``, open its
    checkpointer (``config.checkpoint.max_to_keep``), refuse to resume a checkpoint written
    by another config, apply ``config.runtime`` and write the config beside the metrics.
    Returns ``(absolute workdir, checkpointer, resuming, metric writer)``."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                        max_to_keep=config.checkpoint.max_to_keep)
    resuming = ckpt.latest_step() is not None
    if resuming:
        check_same_run(workdir, config)
    setup_runtime(config.runtime)
    writer = MetricWriter(workdir)
    writer.write_config(config)
    return workdir, ckpt, resuming, writer


def run_search(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or resume) the search described by ``config`` in ``workdir``; return the summary."""
    validate(config)
    workdir, ckpt, resuming, writer = open_run(config, workdir)
    mesh = sharding.mesh_from_config(config.runtime)
    saver = _ProcessCheckpointer(ckpt)

    dataset = load_dataset(config.dataset.name, data_dir=config.dataset.data_dir or None,
                           valid_fraction=config.dataset.valid_fraction, seed=config.seed)
    space = registry.SPACES.build(config.space.name, config.space,
                                  input_shape=dataset.input_shape,
                                  num_classes=dataset.num_classes)
    root = jax.random.key(config.seed)
    if config.strategy.init_from:  # a meta-trained controller, fine-tuned on this task
        from nas_jax.meta.transfer import meta_trained_strategy

        strategy = meta_trained_strategy(config.strategy, space, dataset,
                                         jax.random.fold_in(root, INIT_FROM_KEY))
        say(f"starting from the controller meta-trained in {config.strategy.init_from}")
    else:
        strategy = registry.STRATEGIES.build(config.strategy.name, config.strategy, space)
    evaluator = registry.EVALUATORS.build(config.evaluator.name, config.evaluator, space, dataset)
    evaluator = _with_mesh(evaluator, mesh)
    if hasattr(evaluator, "train_supernet"):  # one-shot: train the shared weights once
        evaluator = evaluator.with_supernet(_trained_supernet(
            config, workdir, evaluator, jax.random.fold_in(root, SUPERNET_KEY)))
    budget = config.budget.num_evaluations
    num_rounds = math.ceil(budget / strategy.batch_size)

    state = strategy.init(jax.random.fold_in(root, 0))
    history: list[dict] = []
    meta: dict = {}
    start = 0
    if resuming:
        state, meta = saver.restore(state)
        start, history = int(meta["round"]), list(meta["history"])
        say(f"resuming {workdir} from round {start}/{num_rounds} ({len(history)} evaluations)")
    writer.truncate_after(len(history) - 1)

    ask, tell = jax.jit(strategy.ask), jax.jit(strategy.tell)
    progress = Progress(num_rounds, start=start, name="search",
                        interval_s=config.runtime.progress_interval_s)
    if start < num_rounds:
        placement = "" if mesh is None else (
            f", mesh candidates={mesh.shape[sharding.CANDIDATES]} x "
            f"data={mesh.shape[sharding.DATA]} over {jax.process_count()} process(es)")
        say(f"searching: {num_rounds - start} rounds of {strategy.batch_size} candidates, "
            f"execution={evaluator.execution} on {jax.default_backend()}{placement} (the "
            "first round includes compiling, unless cached)")
    t0 = time.time()
    for r in range(start, num_rounds):
        k_ask, k_eval = jax.random.split(jax.random.fold_in(root, r + 1))
        archs, state = ask(k_ask, state)
        archs = archs[: min(strategy.batch_size, budget - len(history))]
        fitness, out = evaluator(k_eval, archs)
        state, metrics = tell(state, archs, fitness)
        for i, arch in enumerate(np.asarray(archs)):
            best_so_far = max(float(fitness[i]), history[-1]["best_fitness"] if history
                              else -math.inf)
            row = {"round": r + 1, "arch": space.to_string(arch), "fitness": float(fitness[i])}
            # Whatever per-candidate metrics the evaluator returns (losses, proxy scores).
            row.update({k: float(v[i]) for k, v in out.items()
                        if k != "finite" and np.ndim(v) == 1})
            row["best_fitness"] = best_so_far
            writer.write(len(history), row)
            history.append(row)
        if (r + 1) % config.checkpoint.every_rounds == 0 or r + 1 == num_rounds:
            saver.save(r + 1, state, meta={"round": r + 1, "history": history})
        if jax.process_index() == 0:
            progress.update(r + 1, {"evaluated": len(history),
                                    "best": float(metrics["best_fitness"])})
    search_seconds = time.time() - t0

    best = strategy.best(state)
    best_arch = np.asarray(best.arch)
    result = meta.get("retrain") if resuming else None
    if result is None and config.retrain.steps > 0:
        say(f"retraining {space.to_string(best_arch)} from scratch "
            f"({config.retrain.steps} steps)")
        out = _retrain(config, dataset, root, space, best_arch)
        result = {"test_accuracy": float(out["valid_accuracy"]),
                  "test_loss": float(out["valid_loss"]),
                  "finite": bool(out["finite"])}
        saver.save(num_rounds + 1, state,
                   meta={"round": num_rounds, "history": history, "retrain": result})
    baselines = meta.get("baselines") if resuming else None
    if baselines is None and config.baselines:
        baselines = _train_baselines(config, dataset, root)
        saver.save(num_rounds + 2, state, meta={"round": num_rounds, "history": history,
                                                "retrain": result, "baselines": baselines})
    ckpt.close()

    summary = {
        "space": config.space.name,
        "arch": best_arch.tolist(),
        "arch_string": space.to_string(best_arch),
        "canonical": space.canonical(best_arch).tolist(),
        "valid_accuracy": float(best.fitness),
        "test_accuracy": None if result is None else result["test_accuracy"],
        "num_params": space.num_params(best_arch),
        "flops": space.flops(best_arch),
        "num_evaluations": len(history),
        "execution": evaluator.execution,
        "backend": jax.default_backend(),
    }
    if baselines:
        summary["baselines"] = baselines
    final = {"best_valid_accuracy": summary["valid_accuracy"]}
    if result is not None:
        final["test_accuracy"] = result["test_accuracy"]
    writer.write(len(history), final)
    writer.close()
    if jax.process_index() == 0:
        _write_outputs(workdir, summary, history)
        _print_summary(summary, history, search_seconds,
                       resumed_from=start if resuming else None)
    return summary


def _trained_supernet(config, workdir: str, evaluator, key: jax.Array):
    """The one-shot evaluator's supernet, trained in chunks of
    ``checkpoint.supernet_every_steps`` steps, each checkpointed in ``workdir/supernet``: a
    killed run resumes the training where it stopped (paths and batches derive from the step,
    so the result equals an uninterrupted training), and a finished one is only restored."""
    ckpt = Checkpointer(os.path.join(workdir, "supernet"), max_to_keep=1)
    saver = _ProcessCheckpointer(ckpt)
    total = evaluator.recipe.steps
    state = evaluator.init_supernet(key)
    if ckpt.latest_step() is not None:
        state, _ = saver.restore(state)
    done = int(state.step)
    if done < total:
        say(f"training the one-shot supernet: steps {done}..{total}")
    finite = True
    while done < total:
        n = min(config.checkpoint.supernet_every_steps, total - done)
        state, losses = evaluator.train_steps(state, n)
        finite = finite and bool(np.all(np.isfinite(np.asarray(losses))))
        done += n
        saver.save(done, state, meta={"step": done})
    ckpt.close()
    if not finite:
        say("warning: the supernet's training loss was not finite; candidates scored with it "
            "get the worst fitness")
    return state


def _retrain(config, dataset, root: jax.Array, space, arch) -> dict:
    """``arch`` trained from scratch with the retrain recipe and key ``fold_in(root,
    RETRAIN_KEY)`` (the search's best and every baseline alike), scored on the test split."""
    return train_standalone(jax.random.fold_in(root, RETRAIN_KEY), space, arch,
                            (dataset.train.x, dataset.train.y), (dataset.test.x, dataset.test.y),
                            recipe_from_config(config.retrain))


def _train_baselines(config, dataset, root: jax.Array) -> list[dict]:
    """``config.baselines`` trained from scratch with the retrain recipe and the same key as
    the search's best architecture, scored on the test split."""
    rows = []
    for name, _, arch in parse_baselines(config):
        space = registry.SPACES.build(name, config.space, input_shape=dataset.input_shape,
                                      num_classes=dataset.num_classes)
        say(f"training baseline {name}:{space.to_string(arch)} from scratch "
            f"({config.retrain.steps} steps)")
        out = _retrain(config, dataset, root, space, arch)
        rows.append({"space": name, "arch_string": space.to_string(arch),
                     "test_accuracy": float(out["valid_accuracy"]),
                     "finite": bool(out["finite"]),
                     "num_params": space.num_params(arch), "flops": space.flops(arch)})
    return rows


def _write_outputs(workdir: str, summary: dict, history: list[dict]) -> None:
    with open(os.path.join(workdir, "best_architecture.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    with open(os.path.join(workdir, "best_architecture.txt"), "w") as f:
        f.write(summary["arch_string"] + "\n")
    fitness = np.array([np.nan if h["fitness"] is None else h["fitness"] for h in history])
    plot_search_curve(os.path.join(workdir, "search_curve.png"), np.arange(1, len(history) + 1),
                      fitness, title=f"{summary['space']}: search curve")


def _print_summary(summary: dict, history: list[dict], seconds: float, resumed_from) -> None:
    test = summary["test_accuracy"]
    rows = [
        ("best architecture", summary["arch_string"]),
        ("valid accuracy (search)", f"{summary['valid_accuracy']:.4f}"),
        ("test accuracy (retrained)", "not retrained" if test is None else f"{test:.4f}"),
        ("parameters", f"{summary['num_params']:,}"),
        ("FLOPs / example", f"{summary['flops']:,}"),
        ("evaluations", str(len(history))),
        ("execution", f"{summary['execution']} on {summary['backend']}"),
        ("search time this process", f"{seconds:.1f} s"
         + ("" if resumed_from is None else f" (resumed at round {resumed_from})")),
    ]
    for b in summary.get("baselines", ()):
        rows.append((f"baseline {b['space']}", f"{b['arch_string']}: test accuracy "
                     f"{b['test_accuracy']:.4f}, {b['num_params']:,} parameters, "
                     f"{b['flops']:,} FLOPs"))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows), flush=True)

