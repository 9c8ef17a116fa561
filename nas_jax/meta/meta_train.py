"""Meta-train a task-conditioned controller over a task family; checkpointed and resumable.

``run_meta_train(config, workdir)``: ``config.steps`` meta-steps (``ConditionedController.
meta_step``) over the family's meta-train tasks, ``config.log_every`` steps per jitted
``lax.scan`` chunk; metrics go to ``workdir/metrics.jsonl`` (and TensorBoard), the
``MetaState`` to ``workdir/checkpoints`` every ``checkpoint_every`` steps (a run started on a
workdir with a checkpoint resumes from it), and the trained controller to
``workdir/controller`` (``controller.load_controller``). At the end every meta-test task gets
a zero-shot greedy proposal, scored in its table (``workdir/results.json``).

Families: ``synthetic`` (``SyntheticTableFamily``), ``mnist1d`` (``Mnist1dVariantFamily``)
and ``class_subset`` (``ClassSubsetFamily``: ``ways``-class tasks of one dataset, meta-train
and meta-test tasks on disjoint classes). The last two are over an ``MLPSpace`` or a
``MacroCNNSpace``: every task's table is built by training every architecture on that task,
cached one file per task in ``family.table_dir``, default ``<workdir>/tables``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nas_jax import registry
from nas_jax.config import ConfigError, check_schema
from nas_jax.meta.controller import MODES, ConditionedController, save_controller
from nas_jax.meta.tasks import (
    MNIST1D_INTEGER,
    MNIST1D_RANGED,
    MNIST1D_RANGES,
    ClassSubsetFamily,
    Mnist1dVariantFamily,
    SyntheticTableFamily,
    Task,
    default_synthetic_space,
    per_task_tables,
    table_fitness,
    training_table_builder,
)
from nas_jax.spaces.base import SearchSpace
from nas_jax.spaces.macro import ACTIVATIONS
from nas_jax.utils.checkpoint import Checkpointer
from nas_jax.utils.metrics import MetricWriter, Progress, atomic_write

FAMILIES = ("synthetic", "mnist1d", "class_subset")
TABLE_FAMILIES = ("mnist1d", "class_subset")  # tables trained per task
TABLE_EXECUTIONS = ("auto", "loop", "vmap")
FINGERPRINT_FILE = "fingerprint.json"  # in a table_dir: what its tables were built from
SYNTHETIC_SPACES = ("choices", "mlp")
MNIST1D_SPACES = ("mlp", "macro_cnn")
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # see meta_train_config: fast_compile


def meta_train_config() -> ml_collections.ConfigDict:
    """The schema of a meta-training run, with defaults (the fast synthetic family)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.steps = 300
    c.tasks_per_step = 0  # meta-train tasks per step; 0: all of them
    c.log_every = 25  # steps per jitted chunk and per metrics line
    c.checkpoint_every = 100
    c.max_to_keep = 2
    c.family = ml_collections.ConfigDict(dict(
        name="synthetic", num_train=16, num_test=4, seed=0,
        # The space; "": the family's default. synthetic: 'choices' (a plain vector, the
        # default) or 'mlp'; mnist1d: 'mlp' (the default) or 'macro_cnn'.
        space="",
        # synthetic: the vector's choices and the task features
        num_choices=(3, 3, 3, 3), feature_dim=1, set_size=4, feature_noise=0.05,
        sharpness=3.0,
        # mnist1d: MNIST-1D variants of num_samples examples (80% train, of which
        # valid_fraction is the valid split the table scores), each task's generator settings
        # drawn uniformly from `ranges` ((lo, hi), ints for integer settings; (): the
        # generator's default, tasks.MNIST1D_RANGES by default).
        num_samples=2000, valid_fraction=0.5, feature_length=20,
        # class_subset: `ways`-class tasks of `dataset` (labels 0..ways-1), each from
        # examples_per_class training examples per class (its set-encoder features); the
        # meta-test tasks use only the num_meta_test_classes held-out classes. A task's table
        # trains on all train examples of its classes (valid_fraction: the valid split).
        dataset="digits", ways=5, examples_per_class=20, num_meta_test_classes=5,
        ranges=ml_collections.ConfigDict(dict(
            {name: () for name in MNIST1D_RANGED}, **MNIST1D_RANGES)),
        # mnist1d and class_subset: the space, 'mlp' (max_layers, units, activations) or
        # 'macro_cnn' (num_layers
        # convolutions with filters, kernel_sizes, strides, activations; global pooling)
        max_layers=2, units=(16, 64, 128), activations=("relu", "tanh", "swish"),
        num_layers=2, filters=(16,), kernel_sizes=(3, 9), strides=(1, 2),
        table_dir="",  # cached per-task tables; "": <workdir>/tables
        # How each table is built (table_build.build_table): every canonical architecture
        # trained num_seeds times; vmap over all candidates was the fastest on 2 CPU cores.
        table=ml_collections.ConfigDict(dict(
            num_seeds=2, steps=200, batch_size=64, optimizer="adam", learning_rate=0.003,
            weight_decay=0.0, execution="vmap", chunk_size=45))))
    c.controller = ml_collections.ConfigDict(dict(
        mode="data", hidden_size=16, embed_size=8, encoder_hidden=16, batch_size=16,
        learning_rate=0.005, temperature=1.0, tanh_constant=2.5, entropy_weight=0.05,
        init_scale=0.1))
    c.progress_interval_s = 10.0
    # XLA backend optimisation level 0 for the meta-step program: on CPU it compiled ~2.7x
    # faster and ran ~3x slower (4.7 s vs 12.7 s to compile, 2.4 s vs 0.8 s for 300 steps),
    # the better trade for runs of a few hundred steps; False for long runs.
    c.fast_compile = True
    return c


def validate_meta_train(config: ml_collections.ConfigDict) -> None:
    """Check the config against the schema and ranges; ConfigError names the field."""
    check_schema(config, meta_train_config(), "")
    for field in ("steps", "log_every", "checkpoint_every", "max_to_keep"):
        if config[field] < 1:
            raise ConfigError(f"config.{field}={config[field]}: must be >= 1")
    if config.steps % config.log_every:
        raise ConfigError(f"config.steps={config.steps}: must be a multiple of "
                          f"config.log_every={config.log_every}")
    if config.checkpoint_every % config.log_every:
        raise ConfigError(f"config.checkpoint_every={config.checkpoint_every}: must be a "
                          f"multiple of config.log_every={config.log_every}")
    fam, ctl = config.family, config.controller
    if fam.name not in FAMILIES:
        raise ConfigError(f"config.family.name={fam.name!r}; allowed: {', '.join(FAMILIES)}")
    if fam.name in TABLE_FAMILIES:
        validate_table_family(fam)
    elif fam.space not in ("", *SYNTHETIC_SPACES):
        raise ConfigError(f"config.family.space={fam.space!r}; allowed for the synthetic "
                          f"family: {', '.join(SYNTHETIC_SPACES)} (or '': choices)")
    if not fam.num_choices or min(fam.num_choices) < 1:
        raise ConfigError(f"config.family.num_choices={fam.num_choices}: needs entries >= 1")
    for field in ("num_train", "num_test", "feature_dim", "set_size"):
        if fam[field] < 1:
            raise ConfigError(f"config.family.{field}={fam[field]}: must be >= 1")
    if not 0 <= config.tasks_per_step <= fam.num_train:
        raise ConfigError(f"config.tasks_per_step={config.tasks_per_step}: must be in [0, "
                          f"config.family.num_train={fam.num_train}] (0: all)")
    if ctl.mode not in MODES:
        raise ConfigError(f"config.controller.mode={ctl.mode!r}; allowed: {', '.join(MODES)}")
    for field in ("hidden_size", "embed_size", "encoder_hidden", "batch_size"):
        if ctl[field] < 1:
            raise ConfigError(f"config.controller.{field}={ctl[field]}: must be >= 1")
    if ctl.batch_size < 2:
        raise ConfigError(f"config.controller.batch_size={ctl.batch_size}: rewards are "
                          "z-scored per task, so at least 2")
    for field in ("learning_rate", "temperature"):
        if not ctl[field] > 0:
            raise ConfigError(f"config.controller.{field}={ctl[field]}: must be > 0")


def validate_table_family(fam: ml_collections.ConfigDict) -> None:
    """The ``mnist1d`` or ``class_subset`` family's fields (ConfigError names the field)."""
    if fam.space not in ("", *MNIST1D_SPACES):
        raise ConfigError(f"config.family.space={fam.space!r}; allowed for the {fam.name} "
                          f"family: {', '.join(MNIST1D_SPACES)} (or '': mlp)")
    mnist1d_only = ("num_samples", "feature_length") if fam.name == "mnist1d" else ()
    for field in (*mnist1d_only, "max_layers", "num_layers"):
        if fam[field] < (50 if field == "num_samples" else 1):
            raise ConfigError(f"config.family.{field}={fam[field]}: too small")
    if fam.name == "mnist1d":
        validate_ranges(fam.ranges)
    if fam.name == "class_subset":
        from nas_jax.data.datasets import KNOWN_DATASETS

        if fam.dataset not in KNOWN_DATASETS:
            raise ConfigError(f"config.family.dataset={fam.dataset!r}: unknown dataset; "
                              f"allowed: {', '.join(KNOWN_DATASETS)}")
        if fam.ways < 2:
            raise ConfigError(f"config.family.ways={fam.ways}: a task needs >= 2 classes")
        if fam.examples_per_class < 1:
            raise ConfigError(f"config.family.examples_per_class={fam.examples_per_class}: "
                              "must be >= 1")
        if fam.num_meta_test_classes < fam.ways:
            raise ConfigError(f"config.family.num_meta_test_classes="
                              f"{fam.num_meta_test_classes}: a meta-test task draws "
                              f"config.family.ways={fam.ways} of them, so at least that many")
    if not 0.0 < fam.valid_fraction < 1.0:
        raise ConfigError(f"config.family.valid_fraction={fam.valid_fraction}: must be in "
                          "(0, 1)")
    for field in ("units", "filters", "kernel_sizes", "strides"):
        if not fam[field] or min(fam[field]) < 1:
            raise ConfigError(f"config.family.{field}={fam[field]}: needs entries >= 1")
    unknown = [a for a in fam.activations if a not in ACTIVATIONS]
    if not fam.activations or unknown:
        raise ConfigError(f"config.family.activations={fam.activations}: unknown {unknown}; "
                          f"known: {', '.join(ACTIVATIONS)}")
    t = fam.table
    for field in ("num_seeds", "steps", "batch_size", "chunk_size"):
        if t[field] < 1:
            raise ConfigError(f"config.family.table.{field}={t[field]}: must be >= 1")
    if not t.learning_rate > 0:
        raise ConfigError(f"config.family.table.learning_rate={t.learning_rate}: must be > 0")
    if t.execution not in TABLE_EXECUTIONS:
        raise ConfigError(f"config.family.table.execution={t.execution!r}; allowed: "
                          f"{', '.join(TABLE_EXECUTIONS)}")


def validate_ranges(ranges: ml_collections.ConfigDict) -> None:
    """``family.ranges``: per MNIST-1D setting ``()`` or ``(lo, hi)`` with ``lo <= hi``."""
    for name in MNIST1D_RANGED:
        value = tuple(ranges[name])
        where = f"config.family.ranges.{name}={value}"
        if not value:
            continue
        if len(value) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                      for v in value):
            raise ConfigError(f"{where}: must be (lo, hi) numbers, or () for the generator's "
                              "default")
        if not value[0] <= value[1]:
            raise ConfigError(f"{where}: needs lo <= hi")
        if name in MNIST1D_INTEGER and not all(isinstance(v, int) for v in value):
            raise ConfigError(f"{where}: an integer setting; give integers")
        low = MNIST1D_RANGED[name]
        if value[0] < low:
            raise ConfigError(f"{where}: the generator needs values >= {low}")


def mnist1d_ranges(fam: ml_collections.ConfigDict) -> dict:
    """``family.ranges`` without the settings left at the generator's default."""
    return {name: tuple(v) for name, v in fam.ranges.items() if tuple(v)}


def mnist1d_space_name(fam: ml_collections.ConfigDict) -> str:
    return fam.space or "mlp"


def table_build_recipe(fam: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ``table_build`` config that trains the ``mnist1d`` / ``class_subset`` family's
    tables (the data itself is each task's, given to ``build_table``)."""
    from nas_jax.evaluators.table_build import table_build_config

    c, t = table_build_config(), fam.table
    c.seed, c.num_seeds, c.chunk_size = fam.seed, t.num_seeds, t.chunk_size
    c.dataset.name = fam.dataset if fam.name == "class_subset" else "mnist1d"
    c.dataset.valid_fraction = fam.valid_fraction
    c.space.name = mnist1d_space_name(fam)
    c.space.activations = tuple(fam.activations)
    c.space.max_layers, c.space.units = fam.max_layers, tuple(fam.units)
    c.space.num_layers, c.space.filters = fam.num_layers, tuple(fam.filters)
    c.space.kernel_sizes, c.space.strides = tuple(fam.kernel_sizes), tuple(fam.strides)
    c.evaluator.name, c.evaluator.execution = "population", t.execution
    for field in ("steps", "batch_size", "optimizer", "learning_rate", "weight_decay"):
        c.evaluator[field] = t[field]
    c.runtime.progress_interval_s = 60.0
    return c


def _table_fingerprint(fam: ml_collections.ConfigDict) -> dict:
    """What a task's table depends on (the task id aside): its data and its recipe."""
    keys = ("seed", "num_samples", "valid_fraction", "activations")
    keys += (("max_layers", "units") if mnist1d_space_name(fam) == "mlp" else
             ("num_layers", "filters", "kernel_sizes", "strides"))
    if fam.name == "class_subset":
        keys = tuple(k for k in keys if k != "num_samples") + (
            "name", "dataset", "ways", "examples_per_class", "num_meta_test_classes",
            "num_train", "num_test")  # the tasks' classes are drawn in order of their ids
    out = {k: fam[k] for k in keys}
    out["table"] = fam.table.to_dict()
    if mnist1d_space_name(fam) != "mlp":
        out["space"] = mnist1d_space_name(fam)
    ranges = mnist1d_ranges(fam)
    if fam.name == "mnist1d" and ranges != MNIST1D_RANGES:
        # (only then, so the folders of runs with the default ranges stay valid)
        out["ranges"] = ranges
    return json.loads(json.dumps(out))


def table_dir(fam: ml_collections.ConfigDict, workdir: str | None) -> str:
    """``family.table_dir``, or ``<workdir>/tables`` when it is empty."""
    if fam.table_dir:
        return os.path.abspath(os.path.expanduser(fam.table_dir))
    if not workdir:
        raise ConfigError("config.family.table_dir is empty and there is no workdir to hold "
                          "the tables; set config.family.table_dir")
    return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "tables")


def _claim_table_dir(path: str, fam: ml_collections.ConfigDict) -> None:
    """Refuse a table folder written for other data or another recipe; mark a new one."""
    os.makedirs(path, exist_ok=True)
    fingerprint, file = _table_fingerprint(fam), os.path.join(path, FINGERPRINT_FILE)
    if os.path.isfile(file):
        with open(file, encoding="utf-8") as f:
            found = json.load(f)
        if found != fingerprint:
            raise ConfigError(f"config.family.table_dir: {path} holds tables built for "
                              f"{found}, not {fingerprint}; use another table_dir")
        return
    text = json.dumps(fingerprint, indent=2, sort_keys=True)
    atomic_write(file, lambda f: f.write(text + "\n"))


def build_mnist1d_family(fam: ml_collections.ConfigDict, workdir: str | None = None, *,
                         build_tables: bool = True) -> Mnist1dVariantFamily:
    """The MNIST-1D variant family with its space (``family.space``) and every task's
    table attached; tables missing from the table folder are built by training
    (``build_tables``) or refused with a ConfigError (the meta-test reuses meta-train's)."""
    family = Mnist1dVariantFamily(num_train=fam.num_train, num_test=fam.num_test,
                                  ranges=mnist1d_ranges(fam), num_samples=fam.num_samples,
                                  feature_length=fam.feature_length,
                                  valid_fraction=fam.valid_fraction, seed=fam.seed)
    return _with_space_and_tables(family, fam, workdir, build_tables, num_classes=10)


def build_class_subset_family(fam: ml_collections.ConfigDict, workdir: str | None = None, *,
                              build_tables: bool = True) -> ClassSubsetFamily:
    """``ways``-class tasks of ``family.dataset`` (meta-test tasks on held-out classes),
    with the space and tables as ``build_mnist1d_family``."""
    from nas_jax.data.datasets import load_dataset

    dataset = load_dataset(fam.dataset, valid_fraction=fam.valid_fraction, seed=fam.seed)
    if fam.num_meta_test_classes > dataset.num_classes - fam.ways:
        raise ConfigError(f"config.family.num_meta_test_classes={fam.num_meta_test_classes}: "
                          f"{fam.dataset} has {dataset.num_classes} classes, so at most "
                          f"{dataset.num_classes - fam.ways} can be held out while the "
                          f"meta-train tasks still draw config.family.ways={fam.ways}")
    counts = [np.bincount(np.asarray(split.y), minlength=dataset.num_classes)
              for split in (dataset.train, dataset.valid, dataset.test)]
    short = np.flatnonzero((counts[0] < fam.examples_per_class) | (counts[1] < 1)
                           | (counts[2] < 1))
    if short.size:
        raise ConfigError(
            f"config.family.dataset={fam.dataset!r}: {short.size} of its {dataset.num_classes} "
            f"classes (e.g. {short[:5].tolist()}) have fewer than config.family."
            f"examples_per_class={fam.examples_per_class} training examples, or none in the "
            "valid or test split; every class of a class_subset family needs all three (a "
            "few-shot dataset whose splits hold disjoint classes, such as glyphs, does not fit)")
    family = ClassSubsetFamily(dataset, ways=fam.ways, examples_per_class=fam.examples_per_class,
                               num_train_tasks=fam.num_train, num_test_tasks=fam.num_test,
                               num_meta_test_classes=fam.num_meta_test_classes, seed=fam.seed)
    return _with_space_and_tables(family, fam, workdir, build_tables, num_classes=fam.ways)


def _with_space_and_tables(family, fam, workdir, build_tables: bool, num_classes: int):
    """Give ``family`` its space (``family.space``, built through the registry from the
    table recipe) and every task its table, built or loaded (see ``build_mnist1d_family``)."""
    recipe = table_build_recipe(fam)
    family.space = registry.SPACES.build(recipe.space.name, recipe.space,
                                         input_shape=tuple(family.dataset(0).input_shape),
                                         num_classes=num_classes)
    path = table_dir(fam, workdir)
    if build_tables:
        _claim_table_dir(path, fam)
        build = training_table_builder(family, recipe)
    else:
        def build(task_id: int, out: str):
            raise ConfigError(f"config.family.table_dir: no table {out} for task {task_id}; "
                              "run experiments/meta_train.py on this family first")
        if os.path.isfile(os.path.join(path, FINGERPRINT_FILE)):
            _claim_table_dir(path, fam)
    # build_table sets process-wide JAX options (setup_runtime); keep the PRNG implementation
    # as it was, so what follows does not depend on whether tables were built or loaded.
    partitionable = jax.config.jax_threefry_partitionable
    try:
        per_task_tables(family, build, path, space=family.space)
    finally:
        jax.config.update("jax_threefry_partitionable", partitionable)
    return family


def build_family(fam: ml_collections.ConfigDict, workdir: str | None = None, *,
                 build_tables: bool = True):
    """The task family named by ``config.family`` (``workdir``: see ``table_dir``)."""
    if fam.name == "mnist1d":
        return build_mnist1d_family(fam, workdir, build_tables=build_tables)
    if fam.name == "class_subset":
        return build_class_subset_family(fam, workdir, build_tables=build_tables)
    space = (default_synthetic_space() if fam.space == "mlp"
             else SearchSpace(num_choices=tuple(fam.num_choices)))
    return SyntheticTableFamily(space, num_train=fam.num_train, num_test=fam.num_test,
                                feature_dim=fam.feature_dim, set_size=fam.set_size,
                                feature_noise=fam.feature_noise, sharpness=fam.sharpness,
                                seed=fam.seed)


def build_controller(config, family) -> ConditionedController:
    train = family.stacked("train")
    return ConditionedController(space=family.space, num_tasks=int(train.task_id.shape[0]),
                                 feature_size=int(train.features.shape[-1]),
                                 **config.controller.to_dict())


@functools.lru_cache(maxsize=8)
def _chunk_fn(controller, tasks_per_step: int, length: int, fast_compile: bool = False):
    """Jitted ``length`` meta-steps (tasks drawn per step when ``tasks_per_step`` > 0)."""

    def chunk(state, key, tasks):
        def body(s, _):
            k = jax.random.fold_in(key, s.step)
            batch = tasks
            if tasks_per_step:
                n = tasks.task_id.shape[0]
                pick = jnp.argsort(jax.random.uniform(jax.random.fold_in(k, 1), (n,)))
                batch = jax.tree.map(lambda x: x[pick[:tasks_per_step]], tasks)
            return controller.meta_step(k, s, batch)

        state, metrics = jax.lax.scan(body, state, None, length=length)
        return state, jax.tree.map(jnp.mean, metrics)

    return jax.jit(chunk, donate_argnums=0,
                   compiler_options=FAST_COMPILE if fast_compile else None)


def _greedy_regret(controller: ConditionedController, params, tasks: Task):
    archs = jax.vmap(lambda t: controller.greedy(params, t))(tasks)
    got = jax.vmap(lambda t, a: table_fitness(t, a[None], controller.space)[0])(tasks, archs)
    return archs, tasks.fitness.max(axis=1) - got


greedy_regret = jax.jit(_greedy_regret, static_argnums=0)
greedy_regret.__doc__ = """Each task's greedy (zero-shot) architecture, int32[T, D], and its
regret in the task's table, float[T] (0: it is the task's best); jitted."""
_greedy_regret_fast = jax.jit(_greedy_regret, static_argnums=0, compiler_options=FAST_COMPILE)


def zero_shot_results(controller, params, family, fast_compile: bool = False) -> dict:
    """The greedy zero-shot proposal of each meta-test task, its regret, and the fraction of
    tasks on which it is the task's best architecture."""
    run = _greedy_regret_fast if fast_compile else greedy_regret
    archs, regret = (np.asarray(x) for x in run(controller, params, family.stacked("test")))
    found = regret <= 1e-7
    return {"task_ids": family.ids("test").tolist(), "archs": archs.tolist(),
            "regret": regret.tolist(), "found_best": found.tolist(),
            "mean_regret": float(np.mean(regret)), "fraction_found_best": float(np.mean(found))}


def run_meta_train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Meta-train (or resume) in ``workdir``; returns the zero-shot meta-test results."""
    validate_meta_train(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    family = build_family(config.family, workdir)
    controller = build_controller(config, family)
    tasks = family.stacked("train")
    root = jax.random.key(config.seed)
    # Committed like a restored state, so a resumed run reuses the compiled programs.
    fast = config.fast_compile
    init = jax.jit(controller.meta_init, compiler_options=FAST_COMPILE if fast else None)
    state = jax.device_put(init(jax.random.fold_in(root, 0)), jax.devices()[0])
    before = zero_shot_results(controller, state.params, family, fast)
    writer = MetricWriter(workdir)
    writer.write_config(config)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.max_to_keep)
    start = ckpt.latest_step() or 0
    if start:
        state = ckpt.restore(state, start)
        writer.truncate_after(start)
        print(f"resuming meta-training from step {start}", file=sys.stderr, flush=True)
    chunk = _chunk_fn(controller, config.tasks_per_step, config.log_every, config.fast_compile)
    progress = Progress(config.steps, start=start, name="meta_train",
                        interval_s=config.progress_interval_s)
    t0, step = time.perf_counter(), start
    while step < config.steps:
        state, metrics = chunk(state, jax.random.fold_in(root, 1), tasks)
        step = int(state.step)
        values = {k: float(v) for k, v in metrics.items()}
        writer.write(step, values)
        progress.update(step, values)
        if step % config.checkpoint_every == 0 or step >= config.steps:
            ckpt.save(step, state, meta={"seconds": time.perf_counter() - t0}, force=True)
    ckpt.close()
    save_controller(os.path.join(workdir, "controller"), controller, state.params, step=step)
    results = zero_shot_results(controller, state.params, family, fast)
    results.update(steps=step, mode=controller.mode, before_meta_training=before)
    text = json.dumps(results, indent=2, sort_keys=True)
    atomic_write(os.path.join(workdir, "results.json"), lambda f: f.write(text + "\n"))
    writer.close()
    print(f"meta-test zero-shot: found the best architecture on "
          f"{results['fraction_found_best']:.0%} of {len(results['task_ids'])} unseen tasks "
          f"(mean regret {results['mean_regret']:.4f})", file=sys.stderr, flush=True)
    return results
