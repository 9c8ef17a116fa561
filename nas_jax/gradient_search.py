"""Run a gradient-based search (DARTS first/second order, GDAS) end to end.

``run_gradient_search(config, workdir)``: the training data is split in two stratified
halves (weights train on one, ``alpha`` on the other, as in DARTS), epochs of jitted steps
draw their batches on device, and after each epoch the run writes metrics (losses,
accuracies, the derived cell, its parameter-free op count, the Hessian eigenvalue every
``diagnostics.eigen_every`` epochs, the cell's table accuracy when ``table_path`` is set) and
a checkpoint that a rerun on the same workdir resumes exactly. ``result.json`` holds the
final derived architecture, ``alpha.png`` the final ``softmax(alpha)``.

``strategy.execution`` says how a step runs the supernet (``EXECUTIONS``):

- ``mixture`` (default): one jitted step; every op of every edge is computed and weighted
  (DARTS; for GDAS each op's weight then gets its exact straight-through gradient).
- ``switch`` (GDAS on NB201): one jitted step on the switch supernet, which computes only
  each edge's sampled op (AutoDL's GDAS; the other ops' logits get gradients only through
  the softmax).
- ``composed`` (GDAS on NB201 and DARTS): AutoDL's GDAS step (on NB201 the ``switch``
  step) composed from per-unit programs on the host (``strategies.gdas_composed``): only
  the sampled ops run; the fastest on CPU (docs/benchmarks.md).

Evaluation, the Hessian eigenvalue and checkpoints use the mixture supernet's form of the
weights in every case (they are the same weights); a resume still needs the same config,
execution included (``runner.check_same_run``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nas_jax.config import ConfigError, build_space, search_config
from nas_jax.data.datasets import KNOWN_DATASETS, load_dataset, stratified_split
from nas_jax.evaluators.table import TableEvaluator, table_config_problem
from nas_jax.runner import open_run
from nas_jax.spaces.darts import CELLS
from nas_jax.spaces.nb201 import EDGES as NB201_EDGES
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.strategies import collapse
from nas_jax.strategies.derive import derive, num_parameter_free
from nas_jax.strategies.gdas_composed import ComposedGDAS
from nas_jax.strategies.gradient import METHODS, GradientSearch
from nas_jax.supernet.darts import EDGES as DARTS_EDGES
from nas_jax.train.steps import draw_batch, evaluate
from nas_jax.utils.metrics import Progress, atomic_write
from nas_jax.utils.plots import plot_alpha

SPACES = ("nb201", "darts")
EXECUTIONS = ("mixture", "switch", "composed")
SEARCH_FIELDS = ("order", "learning_rate", "min_learning_rate", "momentum", "nesterov",
                 "weight_decay",
                 "grad_clip", "arch_learning_rate", "arch_beta1", "arch_beta2",
                 "arch_weight_decay", "tau_max", "tau_min", "beta_weight", "alpha_init_scale")
EIGEN_KEY = 2**31 - 3  # fold_in index of the eigenvalue probes' key
# XLA without backend optimisations: compiles in about half the time, runs slower.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def gradient_search_config() -> ml_collections.ConfigDict:
    """Every field of a gradient-search run, with DARTS' defaults where the paper has one."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = ml_collections.ConfigDict(dict(name="digits", data_dir="",
                                               valid_fraction=0.1))
    c.space = ml_collections.ConfigDict(dict(name="nb201", channels=4, cells_per_stage=1,
                                             num_cells=8, stem_multiplier=3,
                                             ops=search_config().space.ops,  # nb201
                                             darts_ops=search_config().space.darts_ops))
    c.strategy = ml_collections.ConfigDict(dict(
        name="darts", order=1, learning_rate=0.025, min_learning_rate=0.001, momentum=0.9,
        nesterov=False, weight_decay=3e-4, grad_clip=5.0, arch_learning_rate=3e-4, arch_beta1=0.5,
        arch_beta2=0.999, arch_weight_decay=1e-3, tau_max=10.0, tau_min=0.1,
        beta_weight=0.0, alpha_init_scale=1e-3, execution="mixture"))
    c.train = ml_collections.ConfigDict(dict(epochs=2, batch_size=64, eval_batch_size=256,
                                             steps_per_epoch=0))  # 0: one pass over a half
    c.diagnostics = ml_collections.ConfigDict(dict(
        eigen_every=1, eigen_iters=10,  # 0: no eigenvalue
        early_stop=False, early_stop_window=5, early_stop_threshold=0.75))  # RobustDARTS
    c.table_path = ""
    c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=2))
    c.runtime = ml_collections.ConfigDict(dict(compilation_cache_dir="~/.cache/nas_jax/xla",
                                               progress_interval_s=10.0,
                                               threefry_partitionable=False,
                                               fast_compile=False))  # see FAST_COMPILE
    return c


def validate_gradient_config(config: ml_collections.ConfigDict) -> None:
    """Check every field against the schema and its range; raise ``ConfigError`` naming it."""
    _check_fields(config, gradient_search_config(), "")
    checks = [
        ("strategy.name", config.strategy.name in METHODS, f"one of {', '.join(METHODS)}"),
        ("space.name", config.space.name in SPACES, f"one of {', '.join(SPACES)}"),
        ("dataset.name", config.dataset.name in KNOWN_DATASETS,
         f"one of {', '.join(KNOWN_DATASETS)}"),
        ("dataset.valid_fraction", 0 < config.dataset.valid_fraction < 1, "in (0, 1)"),
        ("strategy.order", config.strategy.order in (1, 2), "1 or 2"),
        ("strategy.order", config.strategy.order == 1 or config.strategy.name == "darts",
         "1 for gdas (second order is DARTS')"),
        ("strategy.tau_min", 0 < config.strategy.tau_min <= config.strategy.tau_max,
         "> 0 and <= strategy.tau_max"),
        ("strategy.momentum", 0 <= config.strategy.momentum < 1, "in [0, 1)"),
        ("strategy.execution", config.strategy.execution in EXECUTIONS,
         f"one of {', '.join(EXECUTIONS)}"),
        ("strategy.execution", config.strategy.execution == "mixture"
         or config.strategy.name == "gdas",
         "'mixture' unless strategy.name='gdas' (the switch and composed executions compute "
         "one sampled op per edge: GDAS; DARTS mixes every op)"),
        ("strategy.execution", config.strategy.execution != "switch"
         or config.space.name == "nb201",
         "'mixture' or 'composed' unless space.name='nb201' (only the NAS-Bench-201 "
         "supernet has a switch form)"),
        ("diagnostics.early_stop_threshold",
         0 < config.diagnostics.early_stop_threshold < 1, "in (0, 1)"),
        ("diagnostics.early_stop", not config.diagnostics.early_stop
         or config.diagnostics.eigen_every > 0, "False unless diagnostics.eigen_every > 0"),
    ]
    for name in ("space.channels", "space.cells_per_stage", "space.num_cells",
                 "space.stem_multiplier", "train.epochs", "train.batch_size",
                 "train.eval_batch_size", "strategy.learning_rate",
                 "strategy.arch_learning_rate", "diagnostics.eigen_iters",
                 "diagnostics.early_stop_window", "checkpoint.max_to_keep"):
        checks.append((name, _get(config, name) > 0, "> 0"))
    for name in ("strategy.min_learning_rate", "strategy.weight_decay", "strategy.grad_clip",
                 "strategy.arch_weight_decay", "strategy.beta_weight",
                 "strategy.alpha_init_scale", "diagnostics.eigen_every",
                 "train.steps_per_epoch"):
        checks.append((name, _get(config, name) >= 0, ">= 0"))
    for name, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"config.{name}={_get(config, name)!r}: must be {allowed}")
    if config.table_path and not os.path.isfile(os.path.expanduser(config.table_path)):
        raise ConfigError(f"config.table_path={config.table_path!r}: no such file (leave it "
                          "empty to skip the table lookup)")
    if config.space.name in SPACES:
        space = build_space(config.space.name, config.space)
        problem = config.table_path and table_config_problem(config.table_path, space)
        if problem:
            raise ConfigError(f"config.table_path={config.table_path!r}: {problem}")


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def _check_fields(config, schema, prefix: str) -> None:
    for key in config.keys():
        if key not in schema:
            raise ConfigError(f"config.{prefix}{key}: unknown field; allowed here: "
                              f"{', '.join(sorted(schema.keys()))}")
        value, default = config[key], schema[key]
        if isinstance(default, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f"config.{prefix}{key}: must be a section of fields")
            _check_fields(value, default, f"{prefix}{key}.")
        elif not (isinstance(value, type(default)) or (isinstance(default, float)
                  and isinstance(value, int))) or (isinstance(value, bool)
                                                    != isinstance(default, bool)):
            raise ConfigError(f"config.{prefix}{key}={value!r}: must be "
                              f"{type(default).__name__}")


def build_search(config, input_shape, num_classes: int) -> GradientSearch:
    """The space and ``GradientSearch`` a config describes (``total_steps`` set later)."""
    space = build_space(config.space.name, config.space, input_shape=input_shape,
                        num_classes=num_classes)
    fields = {name: config.strategy[name] for name in SEARCH_FIELDS}
    return GradientSearch(space, method=config.strategy.name, **fields)


SWITCH_OPTIONS = (("select", "switch"),)


@functools.lru_cache(maxsize=4)
def _programs(search: GradientSearch, batch_size: int, eval_batch_size: int, eigen_iters: int,
              fast_compile: bool, execution: str = "mixture"):
    """The run's jitted programs, cached per search so a resume in-process reuses them:
    ``init, step, score, eigen, draw`` (``draw``: the step's two batches, for the composed
    execution's host-side steps).

    ``init`` runs once, op by op (see ``GradientSearch.init``: compiled, it took 17 s of a
    tiny NB201 run's 83 s); the others are compiled without backend optimisations only
    with ``fast_compile`` (tiny runs and tests, where compiling dominates).
    """
    stepper = search
    if execution == "switch":
        stepper = dataclasses.replace(search, network_options=search.network_options
                                      + SWITCH_OPTIONS)

    def draw(keys, step, data):
        return (draw_batch(keys[0], step, *data["train"], batch_size),
                draw_batch(keys[1], step, *data["valid"], batch_size))

    def step(state, keys, data):
        return stepper.step(state, *draw(keys, state.step, data))

    def score(state, xy):
        weights = search.arch_weights(state)
        apply = lambda p, s, x, train: search.apply(p, s, weights, x, train)  # noqa: E731
        return evaluate(apply, state.params, state.stats, xy, eval_batch_size)

    def eigen(state, key, xy):  # on the first batch of the valid half, w at its current value
        batch = (xy[0][:batch_size], xy[1][:batch_size])
        loss = lambda a: search.loss(state.params, state.stats,  # noqa: E731
                                     jax.nn.softmax(a, -1), batch)[0]
        return collapse.dominant_hessian_eigenvalue(loss, state.alpha, key, eigen_iters)

    options = FAST_COMPILE if fast_compile else None
    return (search.init,
            jax.jit(step, donate_argnums=0, compiler_options=options),
            jax.jit(score, compiler_options=options), jax.jit(eigen, compiler_options=options),
            jax.jit(draw))


@functools.lru_cache(maxsize=4)
def _composed(search: GradientSearch) -> ComposedGDAS:
    """The composed execution of a search, cached as ``_programs`` is: a resume in-process
    reuses its compiled unit programs."""
    return ComposedGDAS(search)


def run_gradient_search(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or resume) the DARTS/GDAS search ``config`` describes; return the result dict."""
    validate_gradient_config(config)
    workdir, ckpt, resuming, writer = open_run(config, workdir)

    dataset = load_dataset(config.dataset.name, data_dir=config.dataset.data_dir or None,
                           valid_fraction=config.dataset.valid_fraction, seed=config.seed)
    x = jnp.concatenate([dataset.train.x, dataset.valid.x])
    y = jnp.concatenate([dataset.train.y, dataset.valid.y])
    first, second = stratified_split(np.asarray(y), 0.5, config.seed)
    data = {"train": (x[first], y[first]), "valid": (x[second], y[second])}
    tc = config.train
    steps_per_epoch = tc.steps_per_epoch or max(len(first) // tc.batch_size, 1)
    total = tc.epochs * steps_per_epoch
    search = build_search(config, dataset.input_shape, dataset.num_classes)
    search = GradientSearch(**{**{f: getattr(search, f) for f in search.__dataclass_fields__},
                               "total_steps": total})
    space = search.space
    table = (TableEvaluator.from_path(config.table_path, space=space, allow_partial=True)
             if config.table_path else None)
    execution = config.strategy.execution
    init, step, score, eigen, draw = _programs(search, tc.batch_size, tc.eval_batch_size,
                                               config.diagnostics.eigen_iters,
                                               config.runtime.fast_compile, execution)
    composed = _composed(search) if execution == "composed" else None
    root = jax.random.key(config.seed)
    keys = jax.random.split(jax.random.fold_in(root, 1))

    # Committed to one device, as a restored state is: the same placement on both paths
    # keeps a resume in the same process from compiling the step again.
    device = jax.local_devices()[0]
    state = jax.device_put(init(jax.random.fold_in(root, 0)), device)
    history, eigens, start = [], [], 0
    if resuming:
        state, meta = ckpt.restore(state, with_meta=True)
        state = jax.device_put(state, device)
        start, history, eigens = int(meta["epoch"]), list(meta["history"]), list(meta["eigens"])
        print(f"resuming {workdir} from epoch {start}/{tc.epochs}", flush=True)
    writer.truncate_after(start)
    progress = Progress(tc.epochs, start=start, name=f"{search.method} search",
                        interval_s=config.runtime.progress_interval_s)
    stopped = bool(history and history[-1].get("early_stopped"))
    t0 = time.time()
    for epoch in range(start, tc.epochs):
        if stopped:
            break
        sums = None
        if composed is not None:  # the weights as the composed graph's dicts for the epoch
            template, cstate = state, composed.prepare(jax.tree.map(jnp.copy, state))
        for _ in range(steps_per_epoch):
            if composed is None:
                state, metrics = step(state, keys, data)
            else:
                cstate, metrics = composed.step(cstate, *draw(keys, cstate.step, data))
            sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
        if composed is not None:
            state = jax.device_put(composed.restore(cstate, template), device)
        row = {k: float(v) / steps_per_epoch for k, v in sums.items()}
        row.update({f"eval_{k}": float(v) for k, v in score(state, data["valid"]).items()})
        row.update(_derived(space, state.alpha, table))
        if config.diagnostics.eigen_every and (epoch + 1) % config.diagnostics.eigen_every == 0:
            value = float(eigen(state, jax.random.fold_in(root, EIGEN_KEY + epoch),
                                data["valid"]))
            row["hessian_eigenvalue"] = value
            eigens.append({"epoch": epoch + 1, "value": value, "arch": row["arch"]})
            if config.diagnostics.early_stop and collapse.robust_darts_should_stop(
                    [e["value"] for e in eigens], config.diagnostics.early_stop_window,
                    config.diagnostics.early_stop_threshold):
                stopped = row["early_stopped"] = True
        row["epoch"] = epoch + 1
        writer.write(epoch + 1, {k: v for k, v in row.items() if k != "arch"})
        history.append(row)
        ckpt.save(epoch + 1, state, meta={"epoch": epoch + 1, "history": history,
                                          "eigens": eigens})
        progress.update(epoch + 1, {"valid_acc": row["eval_valid_accuracy"],
                                    "param_free": row["num_parameter_free"]})
    ckpt.close()
    writer.close()
    result = _result(config, space, state, history, eigens, stopped, table)
    result["search_seconds_this_process"] = time.time() - t0
    atomic_write(os.path.join(workdir, "result.json"),
                 lambda f: json.dump(result, f, indent=2, sort_keys=True))
    if jax.process_index() == 0:
        _plot_alpha(os.path.join(workdir, "alpha.png"), space, state.alpha)
    print(f"derived: {result['arch_string']}", flush=True)
    return result


def _plot_alpha(path: str, space, alpha) -> None:
    """``softmax(alpha)`` as a heat map: a row per edge (and cell type), a column per op."""
    weights = np.asarray(jax.nn.softmax(alpha, -1))
    if isinstance(space, NB201Space):
        rows = [f"{src}->{dst}" for dst, src in NB201_EDGES]
    else:
        rows = [f"{cell} {src}->{node + 2}" for cell in CELLS for node, src in DARTS_EDGES]
    plot_alpha(path, weights.reshape(len(rows), -1), rows, space.op_names,
               title="softmax(alpha) at the end of the search")


def _derived(space, alpha, table) -> dict:
    """The cell ``alpha`` derives (see ``_describe``)."""
    return _describe(space, derive(space, np.asarray(alpha)), table)


def _describe(space, arch: np.ndarray, table) -> dict:
    """A cell, its string, its parameter-free op count and its table accuracies."""
    out = {"arch": arch.tolist(), "genotype": space.to_string(arch),
           "num_parameter_free": num_parameter_free(space, arch)}
    if table is not None:
        row = int(np.asarray(table.rows(arch[None]))[0])
        if row >= 0:
            out["table_valid_accuracy"] = float(table.arrays["valid_mean"][row])
            out["table_test_accuracy"] = float(table.arrays["test_mean"][row])
    return out


def _result(config, space, state, history, eigens, stopped, table) -> dict:
    """The final derived cell; after a RobustDARTS early stop, the cell derived
    ``early_stop_window`` eigenvalue evaluations before the stop (as DARTS-ES returns)."""
    derived = _derived(space, state.alpha, table)
    if stopped:
        back = eigens[-1 - min(config.diagnostics.early_stop_window, len(eigens) - 1)]
        derived = {**_describe(space, np.asarray(back["arch"], np.int32), table),
                   "early_stopped_at_epoch": eigens[-1]["epoch"],
                   "returned_epoch": back["epoch"]}
    return {"method": config.strategy.name, "order": config.strategy.order,
            "space": config.space.name, "arch": derived["arch"],
            "arch_string": derived["genotype"],
            "num_parameter_free": derived["num_parameter_free"],
            "alpha_softmax": np.asarray(jax.nn.softmax(state.alpha, -1)).tolist(),
            "epochs_run": len(history), "early_stopped": bool(stopped),
            **{k: v for k, v in derived.items()
               if k.startswith(("table_", "early_stopped_at", "returned_"))},
            "final_epoch": history[-1] if history else None}
