"""MetaNAS experiments: meta-train MetaNAS and its baselines on the same episodes, then score
each on the same meta-test episodes; checkpointed and resumable.

``run_metanas(config, workdir)`` meta-trains every learner of ``(config.learner.name,) +
config.baselines`` in turn (``workdir/<learner>/``: checkpoints every ``checkpoint_every``
meta-steps, ``metrics.jsonl`` with the meta-validation accuracy every ``valid_every`` steps,
``result.json`` once it is scored). All learners see the same meta-training episodes (one
episode key) and are scored on the same ``config.test.episodes`` meta-test episodes, N-way
K-shot, as mean accuracy +- 95% confidence interval (the T-NAS protocol: 600 episodes).
Meta-validation episodes come from meta-train classes held out of meta-training, so the
meta-test classes are touched only by the final score. The summary goes to
``workdir/results.json``, the learning curves to ``workdir/curves.png``, and the cells that
MetaNAS adapts to a few meta-test tasks (derived genotypes) to
``workdir/metanas/cells/*.png``.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nas_jax.config import ConfigError, check_choice, check_schema
from nas_jax.data.datasets import (
    FEW_SHOT_DATASETS,
    DatasetNotPreparedError,
    FewShotSplits,
    few_shot_splits,
)
from nas_jax.data.tasks import EpisodeSampler, split_classes
from nas_jax.meta import metanas
from nas_jax.ops import DEPTHWISE_IMPLS
from nas_jax.runner import check_same_run, setup_runtime
from nas_jax.spaces.darts import CELLS, PRIMITIVES, DartsSpace
from nas_jax.supernet.darts import EDGE_EXECUTIONS, edge_weights
from nas_jax.utils.checkpoint import Checkpointer
from nas_jax.utils.metrics import MetricWriter, Progress, atomic_write, read_jsonl
from nas_jax.utils.plots import plot_cell, plot_curves

FAST_COMPILE = {"xla_backend_optimization_level": 0}
TEMPERATURE_OVER = ("meta_steps", "inner_steps")
META_LR_SCHEDULES = ("constant", "linear")


def metanas_config() -> ml_collections.ConfigDict:
    """The schema of a MetaNAS run, with defaults (a small 5-way 1-shot run on ``glyphs``)."""
    c = ml_collections.ConfigDict()
    c.method = "metanas"
    c.seed = 0
    c.dataset = ml_collections.ConfigDict(dict(
        name="glyphs", data_dir="", rotations=False, image_size=28,
        valid_classes=100))  # meta-train classes held out for meta-validation
    # train_shots: support examples per class in meta-training episodes (0: `shots`). Reptile
    # and the MetaNAS code meta-train on more shots than they test with (10 and 15), adapting
    # on minibatches of them (learner.inner_batch); meta-validation and meta-test episodes
    # always have `shots`.
    c.episodes = ml_collections.ConfigDict(dict(ways=5, shots=1, queries=5, meta_batch=5,
                                                train_shots=0))
    c.learner = ml_collections.ConfigDict(dict(
        name="metanas", channels=8, num_cells=3, stem_multiplier=1, conv_channels=32,
        # The ops of the DARTS cells (MetaNAS and the random cell): DARTS' by default; the
        # MetaNAS code's few-shot set is spaces.darts.FEWSHOT_PRIMITIVES.
        primitives=PRIMITIVES,
        inner_steps=5, inner_lr_w=1e-3, inner_lr_alpha=1e-3, outer="reptile",
        # Support examples per inner step, drawn at random at each step (0: the whole support
        # set); a support set no larger than this (e.g. a 1-shot test episode's) is used whole.
        inner_batch=0,
        meta_lr_w=1.0, meta_lr_alpha=0.6,
        # How the MetaNAS supernet runs its 14 edges per cell: "scan" (two lax.scans over
        # edges per cell) compiled the 3-cell meta-step program in 98 s vs 505 s "unrolled",
        # at about the same speed per step (1.5 s vs 1.3 s), on 2 CPU cores.
        edge_execution="scan",
        depthwise_impl="auto",  # sep/dil convs' depthwise convs (ops.depthwise_conv2d)
        # Meta learning rates held "constant", or annealed "linear"ly to 0 over c.steps
        # (Reptile's schedule).
        meta_lr_schedule="constant"))
    # Softmax temperature of the architecture mixture, from `start` to `end` (`mode`:
    # exponential or linear), annealed `over` the meta-steps (every task adapts at the
    # current meta-step's temperature) or over each task's inner steps (every adaptation
    # starts at `start` and ends at `end`; the MetaNAS code anneals within the task).
    c.temperature = ml_collections.ConfigDict(dict(start=1.0, end=0.1, mode="exponential",
                                                   over="meta_steps"))
    c.warmup_steps = 0  # first meta-steps with alpha frozen (weights only; MetaNAS' warm-up)
    c.prune_threshold = 0.01  # the MetaNAS code's threshold
    c.baselines = ("conv4", "random_cell")
    c.steps = 200
    c.log_every = 20  # meta-steps per jitted chunk and per metrics line
    c.valid_every = 100
    c.checkpoint_every = 100
    c.max_to_keep = 2
    c.valid = ml_collections.ConfigDict(dict(episodes=100))
    c.test = ml_collections.ConfigDict(dict(episodes=600, chunk=50, inner_steps=0,  # 0: as
                                            cells_to_plot=3))                      # training
    c.runtime = ml_collections.ConfigDict(dict(
        progress_interval_s=10.0, compilation_cache_dir="~/.cache/nas_jax/xla",
        threefry_partitionable=False))  # see nas_jax.runner.setup_runtime
    # XLA backend optimisation level 0 for the meta-step program (small networks only: for the
    # DARTS supernet one 5-step adaptation compiled in 198 s vs 93 s and ran in 30 s vs 2 s,
    # not measured side by side).
    c.fast_compile = False
    return c


def validate_metanas(config: ml_collections.ConfigDict) -> None:
    """Check the config against the schema and ranges; ConfigError names the field."""
    check_schema(config, metanas_config(), "")
    if config.method != "metanas":
        raise ConfigError(f"config.method={config.method!r}: must be 'metanas'")
    if config.dataset.name not in FEW_SHOT_DATASETS:
        raise ConfigError(f"config.dataset.name={config.dataset.name!r}; allowed: "
                          f"{', '.join(FEW_SHOT_DATASETS)}")
    for section, fields in (("", ("steps", "log_every", "valid_every", "checkpoint_every",
                                  "max_to_keep")),
                            ("episodes", ("ways", "shots", "queries", "meta_batch")),
                            ("learner", ("channels", "num_cells", "stem_multiplier",
                                         "conv_channels", "inner_steps")),
                            ("valid", ("episodes",)), ("test", ("episodes", "chunk")),
                            ("dataset", ("valid_classes",))):
        node = config[section] if section else config
        for field in fields:
            if node[field] < 1:
                raise ConfigError(f"config.{section + '.' if section else ''}{field}="
                                  f"{node[field]}: must be >= 1")
    for field in ("valid_every", "checkpoint_every"):
        if config[field] % config.log_every:
            raise ConfigError(f"config.{field}={config[field]}: must be a multiple of "
                              f"config.log_every={config.log_every}")
    if config.steps % config.log_every:
        raise ConfigError(f"config.steps={config.steps}: must be a multiple of "
                          f"config.log_every={config.log_every}")
    names = (config.learner.name, *config.baselines)
    for i, name in enumerate(names):
        if name not in metanas.LEARNERS:
            where = "config.learner.name" if i == 0 else "config.baselines"
            raise ConfigError(f"{where}: {name!r} is not a learner; allowed: "
                              f"{', '.join(metanas.LEARNERS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"config.baselines={tuple(config.baselines)}: repeats a learner "
                          f"(config.learner.name={config.learner.name!r} runs already)")
    for field, allowed in (("learner.outer", metanas.OUTER),
                           ("learner.edge_execution", EDGE_EXECUTIONS),
                           ("learner.depthwise_impl", DEPTHWISE_IMPLS),
                           ("learner.meta_lr_schedule", META_LR_SCHEDULES),
                           ("temperature.mode", metanas.TEMPERATURE_MODES),
                           ("temperature.over", TEMPERATURE_OVER)):
        check_choice(config, field, allowed)
    for field in ("inner_lr_w", "inner_lr_alpha", "meta_lr_w", "meta_lr_alpha"):
        if not config.learner[field] > 0:
            raise ConfigError(f"config.learner.{field}={config.learner[field]}: must be > 0")
    t = config.temperature
    if not 0 < t.end <= t.start:
        raise ConfigError(f"config.temperature: needs 0 < end <= start, got start={t.start}, "
                          f"end={t.end}")
    if not 0 <= config.warmup_steps <= config.steps:
        raise ConfigError(f"config.warmup_steps={config.warmup_steps}: must be in [0, "
                          f"config.steps={config.steps}]")
    if not 0 <= config.prune_threshold < 1:
        raise ConfigError(f"config.prune_threshold={config.prune_threshold}: must be in [0, 1)")
    primitives = tuple(config.learner.primitives)
    try:
        DartsSpace(primitives=primitives)  # the space's own check of its op set
    except ValueError as e:
        raise ConfigError(f"config.learner.primitives={primitives}: {e}") from None
    e = config.episodes
    if e.train_shots < 0:
        raise ConfigError(f"config.episodes.train_shots={e.train_shots}: must be >= 0 (0: "
                          f"config.episodes.shots)")
    support = e.ways * (e.train_shots or e.shots)
    if not 0 <= config.learner.inner_batch <= support:
        raise ConfigError(f"config.learner.inner_batch={config.learner.inner_batch}: must be in "
                          f"[0, {support}] (the meta-training support set: ways x "
                          f"(train_shots or shots)); 0 uses the whole support set")
    if config.test.inner_steps < 0:
        raise ConfigError(f"config.test.inner_steps={config.test.inner_steps}: must be >= 0 "
                          "(0: config.learner.inner_steps)")


def build_samplers(config, splits: FewShotSplits | None = None
                   ) -> tuple[EpisodeSampler, EpisodeSampler, EpisodeSampler, tuple]:
    """(meta-train, meta-valid, meta-test) episode samplers over disjoint classes, and the
    input shape. Meta-valid classes are ``config.dataset.valid_classes`` meta-train classes.
    ``splits`` replaces ``config.dataset``'s data (e.g. a generated dataset in tests)."""
    d, e = config.dataset, config.episodes
    if splits is None:
        splits = few_shot_splits(d.name, data_dir=d.data_dir or None, rotations=d.rotations,
                                 image_size=d.image_size)
    if d.valid_classes >= len(splits.train_classes):
        raise ConfigError(f"config.dataset.valid_classes={d.valid_classes}: must be below the "
                          f"{len(splits.train_classes)} meta-train classes of {d.name}")
    train, valid = split_classes(splits.train_classes, d.valid_classes, config.seed)
    make = functools.partial(EpisodeSampler.create, ways=e.ways, queries=e.queries)
    try:
        samplers = (make(splits.meta_train, train, shots=e.train_shots or e.shots),
                    make(splits.meta_train, valid, shots=e.shots),
                    make(splits.meta_test, splits.test_classes, shots=e.shots))
    except ValueError as err:
        raise ConfigError(f"config.episodes: {err}") from None
    return (*samplers, tuple(splits.input_shape))


def build_learner(config, name: str, input_shape) -> tuple[metanas.Learner, metanas.MetaState]:
    """The learner ``name`` (metanas, conv4 or random_cell) at its meta-initialisation."""
    lc = config.learner
    space = DartsSpace(channels=lc.channels, num_cells=lc.num_cells,
                       stem_multiplier=lc.stem_multiplier, input_shape=tuple(input_shape),
                       num_classes=config.episodes.ways, primitives=tuple(lc.primitives))
    root = jax.random.key(config.seed)
    return metanas.make_learner(
        jax.random.fold_in(root, 10), name, space=space, conv_channels=lc.conv_channels,
        inner_steps=lc.inner_steps, inner_lr_w=lc.inner_lr_w, inner_lr_alpha=lc.inner_lr_alpha,
        outer=lc.outer, meta_lr_w=lc.meta_lr_w, meta_lr_alpha=lc.meta_lr_alpha,
        arch_key=jax.random.fold_in(root, 11), inner_batch=lc.inner_batch,
        network_options=_network_options(lc, name))


def _network_options(lc, name: str) -> dict | None:
    if name == "conv4":
        return None
    options = {"depthwise_impl": lc.depthwise_impl}
    if name == "metanas":
        options["edge_execution"] = lc.edge_execution
    return options


def temperature_schedule(step, *, start: float, end: float, mode: str, over: str,
                         steps: int, inner_steps: int) -> jax.Array:
    """The temperature(s) a task adapts at, at meta-step ``step`` (traceable): a scalar
    annealed over the ``steps`` meta-steps (``over="meta_steps"``), or ``float[inner_steps]``
    from ``start`` at the first inner step to ``end`` at the last (``over="inner_steps"``,
    the same at every meta-step)."""
    if over == "inner_steps":
        return metanas.temperature(jnp.arange(inner_steps), start=start, end=end,
                                   steps=max(inner_steps - 1, 1), mode=mode)
    if over != "meta_steps":
        raise ValueError(f"over={over!r}; allowed: {', '.join(TEMPERATURE_OVER)}")
    return metanas.temperature(step, start=start, end=end, steps=steps, mode=mode)


@functools.lru_cache(maxsize=8)
def _chunk_fn(learner, length: int, meta_batch: int, schedule: tuple, warmup_steps: int,
              anneal_meta_lr: bool, fast_compile: bool):
    """Jitted ``length`` meta-steps; episodes are drawn inside from ``fold_in(key, step)``.
    ``schedule``: ``temperature_schedule``'s keyword arguments, as sorted items."""

    def chunk(state, key, sampler):
        def body(s, _):
            k = jax.random.fold_in(key, s.step)
            episodes = sampler.sample_batch(jax.random.fold_in(k, 0), meta_batch)
            items = dict(schedule)
            temp = temperature_schedule(s.step, **items)
            scale = 1.0 - s.step / items["steps"] if anneal_meta_lr else 1.0
            s, metrics = metanas.meta_step(learner, jax.random.fold_in(k, 1), s, episodes,
                                           temp, arch_frozen=s.step < warmup_steps,
                                           meta_lr_scale=scale)
            return s, metrics

        state, metrics = jax.lax.scan(body, state, None, length=length)
        return state, jax.tree.map(jnp.mean, metrics)

    return jax.jit(chunk, donate_argnums=0,
                   compiler_options=FAST_COMPILE if fast_compile else None)


def _schedule_items(config, inner_steps: int | None = None) -> tuple:
    t = config.temperature
    return tuple(sorted(dict(start=float(t.start), end=float(t.end), mode=t.mode, over=t.over,
                             steps=config.steps,
                             inner_steps=inner_steps or config.learner.inner_steps).items()))


def _temperature_at(config, step: int, inner_steps: int | None = None):
    """The temperature (scalar, or one per inner step) of an adaptation at ``step``."""
    return np.asarray(temperature_schedule(step, **dict(_schedule_items(config, inner_steps))))


def _score(config, learner, state, sampler, key, episodes: int, step: int) -> dict:
    return metanas.evaluate(learner, key, state, sampler, episodes=episodes,
                            chunk=min(config.test.chunk, episodes),
                            temperature=_temperature_at(config, step,
                                                        config.test.inner_steps or None),
                            threshold=config.prune_threshold,
                            inner_steps=config.test.inner_steps or None)


def train_learner(config, name: str, samplers, input_shape, workdir: str) -> dict:
    """Meta-train (or resume) one learner in ``workdir/name``; returns its result dict."""
    out = os.path.join(workdir, name)
    done = os.path.join(out, "result.json")
    check_same_run(out, config)  # a finished or checkpointed learner: the same config only
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    train, valid, test = samplers
    learner, state = build_learner(config, name, input_shape)
    state = jax.device_put(state, jax.devices()[0])
    writer = MetricWriter(out)
    writer.write_config(config)
    ckpt = Checkpointer(os.path.join(out, "checkpoints"), max_to_keep=config.max_to_keep)
    start = ckpt.latest_step() or 0
    meta = {}
    if start:
        state, meta = ckpt.restore(state, start, with_meta=True)
        writer.truncate_after(start)
        print(f"{name}: resuming meta-training from step {start}", file=sys.stderr, flush=True)
    root = jax.random.key(config.seed)
    chunk = _chunk_fn(learner, config.log_every, config.episodes.meta_batch,
                      _schedule_items(config), config.warmup_steps,
                      config.learner.meta_lr_schedule == "linear", config.fast_compile)
    progress = Progress(config.steps, start=start, name=name,
                        interval_s=config.runtime.progress_interval_s)
    seconds, t0, step = float(meta.get("seconds", 0.0)), time.perf_counter(), start
    while step < config.steps:
        state, metrics = chunk(state, jax.random.fold_in(root, 1), train)  # same episodes
        step = int(state.step)
        values = {k: float(v) for k, v in metrics.items()}
        if step % config.valid_every == 0 or step >= config.steps:
            scored = _score(config, learner, state, valid, jax.random.fold_in(root, 2),
                            config.valid.episodes, step)
            values.update(valid_accuracy=scored["accuracy"], valid_ci95=scored["ci95"])
        values["temperature"] = float(np.ravel(_temperature_at(config, step))[-1])
        writer.write(step, values)
        progress.update(step, values)
        if step % config.checkpoint_every == 0 or step >= config.steps:
            elapsed = seconds + time.perf_counter() - t0
            ckpt.save(step, state, meta={"seconds": elapsed}, force=True)
    ckpt.close()
    writer.close()
    scored = _score(config, learner, state, test, jax.random.fold_in(root, 3),
                    config.test.episodes, step)
    result = {"learner": name, "steps": step, "accuracy": scored["accuracy"],
              "ci95": scored["ci95"], "episodes": config.test.episodes,
              "num_params": metanas.num_params(learner, state),
              "train_seconds": seconds + time.perf_counter() - t0,
              "episode_accuracies": [float(a) for a in scored["accuracies"]]}
    if name == "metanas":
        result.update(_architectures(config, learner, state, scored, out))
    elif name == "random_cell":
        result["genotype"] = np.asarray(metanas.genotype(learner, state.alpha)).tolist()
    text = json.dumps(result, indent=2, sort_keys=True)
    atomic_write(done, lambda f: f.write(text + "\n"))
    return result


def _architectures(config, learner, state, scored, out: str) -> dict:
    """The cells MetaNAS adapted to the meta-test tasks: how much they differ, and diagrams
    of the meta-learned cell and of the first few tasks' pruned cells."""
    space = learner.space
    temp = float(np.ravel(_temperature_at(config, int(state.step)))[-1])  # the last one
    alphas = np.asarray(scored["alphas"])
    genotypes = np.stack([np.asarray(metanas.genotype(learner, a)) for a in alphas])
    n = len(genotypes)
    pairs = list(itertools.combinations(range(n), 2))
    if len(pairs) > 20000:
        rng = np.random.default_rng(config.seed)
        pairs = [tuple(rng.choice(n, 2, replace=False)) for _ in range(20000)]
    distance = [float(np.mean(genotypes[i] != genotypes[j])) for i, j in pairs]
    meta_genotype = np.asarray(metanas.genotype(learner, state.alpha))
    differs = np.mean(genotypes != meta_genotype[None], axis=1)
    cells_dir = os.path.join(out, "cells")
    # The derived discrete cells are drawn: the pruned mixture itself can keep every op of
    # every edge (a near-uniform alpha), which makes an unreadable diagram.
    to_plot = [("meta", meta_genotype)] + [
        (f"task{i}", genotypes[i]) for i in range(min(config.test.cells_to_plot, n))]
    for label, arch in to_plot:
        weights = np.asarray(edge_weights(space, space.one_hot(jnp.asarray(arch))))
        for c, cell in enumerate(CELLS):
            what = "meta-learned" if label == "meta" else f"meta-test {label}, adapted"
            plot_cell(os.path.join(cells_dir, f"{label}_{cell}.png"), weights[c],
                      space.primitives,
                      f"MetaNAS {cell} cell ({what}; derived genotype)")
    strongest = np.asarray(jax.nn.softmax(jnp.asarray(alphas) / temp, -1)).max(-1)  # [n, 2, 14]
    return {
        "meta_genotype": space.to_string(meta_genotype),
        "unique_task_genotypes": int(len({tuple(g) for g in genotypes})),
        "mean_pairwise_decision_difference": float(np.mean(distance)) if distance else 0.0,
        "mean_difference_from_meta_genotype": float(np.mean(differs)),
        # How decided the adapted mixtures are: the mean over tasks and edges of the largest
        # op weight of softmax(alpha / T) at the last temperature (1/8: uniform, 1: one-hot).
        "mean_strongest_op_weight": float(np.mean(strongest)),
        "task_genotypes_shown": [space.to_string(g) for g in
                                 genotypes[:config.test.cells_to_plot]],
    }


def paired_difference(a, b) -> dict:
    """Mean and 95% CI (1.96 standard errors) of the per-episode differences ``a - b`` of two
    learners scored on the same episodes."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 1:
        raise ValueError(f"paired_difference needs two equal-length 1-D accuracy lists, got "
                         f"{a.shape} and {b.shape}")
    d = a - b
    return {"mean": float(d.mean()), "ci95": float(1.96 * d.std() / np.sqrt(len(d)))}


def run_metanas(config: ml_collections.ConfigDict, workdir: str,
                splits: FewShotSplits | None = None) -> dict:
    """Meta-train and score MetaNAS and its baselines in ``workdir``; returns the summary.
    ``splits`` replaces the configured dataset (see ``build_samplers``)."""
    validate_metanas(config)
    setup_runtime(config.runtime)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    try:
        *samplers, input_shape = build_samplers(config, splits)
    except DatasetNotPreparedError as e:
        raise ConfigError(f"config.dataset.name={config.dataset.name!r}: {e}") from None
    results = {}
    for name in (config.learner.name, *config.baselines):
        results[name] = train_learner(config, name, samplers, input_shape, workdir)
        r = results[name]
        print(f"{name}: {config.episodes.ways}-way {config.episodes.shots}-shot meta-test "
              f"accuracy {r['accuracy']:.4f} +- {r['ci95']:.4f} ({r['episodes']} episodes, "
              f"{r['num_params']:,} meta-learned weights)", file=sys.stderr, flush=True)
    curves = {}
    for name in results:
        rows = read_jsonl(os.path.join(workdir, name, "metrics.jsonl"))
        rows = [r for r in rows if r.get("valid_accuracy") is not None]
        curves[name] = ([r["step"] for r in rows], [r["valid_accuracy"] for r in rows],
                        [r["valid_ci95"] for r in rows])
    plot_curves(os.path.join(workdir, "curves.png"), curves, xlabel="meta-training step",
                ylabel=f"meta-validation accuracy (+- 95% CI, {config.valid.episodes} episodes)",
                title=f"{config.dataset.name}: {config.episodes.ways}-way "
                      f"{config.episodes.shots}-shot")
    first = config.learner.name
    summary = {"dataset": config.dataset.name, "ways": config.episodes.ways,
               "shots": config.episodes.shots, "learners": results,
               # Every learner is scored on the same episodes: the paired difference is the
               # sharper comparison (its CI excludes the variation between episodes).
               f"{first}_minus": {name: paired_difference(results[first]["episode_accuracies"],
                                                          results[name]["episode_accuracies"])
                                  for name in results if name != first}}
    text = json.dumps(summary, indent=2, sort_keys=True)
    atomic_write(os.path.join(workdir, "results.json"), lambda f: f.write(text + "\n"))
    return summary
