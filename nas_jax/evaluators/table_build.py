"""Make tabular benchmarks: by training every canonical architecture of a space (resumably),
or synthetically (``synthetic_table``: a table with structure, for tests and demos).

Each canonical class (``table.canonical_archs``) is trained for ``num_seeds`` seeds the way
``PopulationEvaluator`` trains a candidate (same supernet with one-hot weights, same
initialisation, batches and steps), and scored on both the valid and the test split. Row
``r`` with seed ``j`` uses the key ``fold_in(fold_in(key(seed), j), r)``, so a row's result
does not depend on chunking, sharding or resuming. Work goes in chunks of ``chunk_size`` rows;
each finished chunk is appended to ``<out>.parts/part-<i>-of-<n>.jsonl`` (one JSON line per
row, after a header line holding the config's fingerprint), so a killed build resumes without
redoing finished rows, shards (``shard=(i, n)``: chunks ``c`` with ``c % n == i``) can run in
separate processes or machines, and ``merge_parts`` writes the final table.
"""

from __future__ import annotations

import functools
import glob
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nas_jax import registry
from nas_jax.config import ConfigError, check_schema, search_config, validate
from nas_jax.data.datasets import load_dataset
from nas_jax.evaluators.population import (
    EXECUTION_OPTIONS,
    init_candidate,
    network_graphdef,
    resolve_execution,
)
from nas_jax.evaluators.table import (
    Table,
    canonical_archs,
    git_commit,
    make_table,
    space_from_metadata,
    space_metadata,
    utc_now,
)
from nas_jax.runner import setup_runtime
from nas_jax.spaces.base import SearchSpace
from nas_jax.train.steps import (
    RECIPE_FIELDS,
    evaluate,
    make_apply,
    recipe_from_config,
    summarize,
    train_step,
)
from nas_jax.utils.metrics import Progress, read_jsonl

RESULTS = ("valid_accuracy", "test_accuracy", "valid_loss", "train_loss", "train_seconds")


def table_build_config() -> ml_collections.ConfigDict:
    """The schema of a table build: the search config's data, space, recipe and runtime."""
    base = search_config()
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_seeds = 3  # training runs per architecture
    c.chunk_size = 16  # rows per chunk (the unit of resumption and of sharding)
    c.dataset, c.space, c.evaluator, c.runtime = (base.dataset, base.space, base.evaluator,
                                                  base.runtime)
    return c


def validate_build(config: ml_collections.ConfigDict) -> None:
    """Check a build config (ConfigError naming the field), reusing the search checks."""
    check_schema(config, table_build_config(), "")
    for field in ("num_seeds", "chunk_size"):
        if config[field] < 1:
            raise ConfigError(f"config.{field}={config[field]}: must be >= 1")
    if config.evaluator.name != "population":
        raise ConfigError(f"config.evaluator.name={config.evaluator.name!r}: a table is built "
                          "by training each architecture; must be 'population'")
    if config.evaluator.execution == "compiled":
        raise ConfigError("config.evaluator.execution='compiled': a table build trains with "
                          "auto, loop, switch or vmap")
    search = search_config()
    search.seed, search.dataset, search.space, search.evaluator = (
        config.seed, config.dataset, config.space, config.evaluator)
    # A build has no strategy: keep the default one's sizes from refusing a tiny space.
    search.strategy.population_size = search.strategy.sample_size = 1
    validate(search)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard={text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard={text!r}: needs 0 <= i < n")
    return i, n


class CandidateTrainer:
    """Trains candidates like ``PopulationEvaluator`` and scores each on valid and test.

    ``loop``: one jitted step driven from Python per candidate (the evaluator's
    ``HostLoopTrainer`` sequence), timed per candidate. ``switch`` (``auto``'s choice on CPU
    where the space has it): the same loop on the supernet that computes only each edge's
    chosen op (``EXECUTION_OPTIONS``; NB201 on digits, C=8, N=1: ~11 ms per step against
    ~20 ms for the mixture on 2 CPU cores; ``loop`` elsewhere on CPU).
    ``vmap``: a whole batch in one program (``lax.scan`` over steps), its time shared equally
    by the batch.
    """

    def __init__(self, space, recipe, execution: str = "auto"):
        self.execution = resolve_execution(execution, space)  # CPU: switch where it exists
        if self.execution not in ("loop", "switch", "vmap"):
            raise ValueError(f"a table build trains with execution loop, switch or vmap, not "
                             f"{self.execution!r}")
        self.recipe = recipe
        options = EXECUTION_OPTIONS.get(self.execution, {})
        graphdef = network_graphdef(space, **options)
        tx = recipe.make_optimizer()

        def init(key, weights):
            return init_candidate(space, None, key, weights, **options)

        def step(params, stats, opt_state, key, i, weights, train_xy):
            return train_step(make_apply(graphdef, weights), tx, recipe, params, stats,
                              opt_state, key, i, train_xy)

        def score(params, stats, losses, weights, valid_xy, test_xy):
            apply = make_apply(graphdef, weights)
            out = summarize(apply, params, stats, losses, valid_xy, recipe)
            test = evaluate(apply, params, stats, test_xy, recipe.eval_batch_size)
            return {**out, "test_accuracy": test["valid_accuracy"]}

        def one(key, weights, train_xy, valid_xy, test_xy):
            params, stats, k_data = init(key, weights)

            def body(carry, i):
                p, s, o, loss = step(*carry, k_data, i, weights, train_xy)
                return (p, s, o), loss

            carry = (params, stats, tx.init(params))
            (params, stats, _), losses = jax.lax.scan(body, carry, jnp.arange(recipe.steps))
            return score(params, stats, losses, weights, valid_xy, test_xy)

        self._init, self._init_opt = jax.jit(init), jax.jit(tx.init)
        self._step = jax.jit(step, donate_argnums=(0, 1, 2))
        self._score = jax.jit(score)
        self._batched = jax.jit(jax.vmap(one, in_axes=(0, 0, None, None, None)))

    def _one_in_loop(self, key, weights, train_xy, valid_xy, test_xy, steps: int):
        params, stats, k_data = self._init(key, weights)
        opt_state = self._init_opt(params)
        losses = []
        for i in range(steps):
            params, stats, opt_state, loss = self._step(params, stats, opt_state, k_data, i,
                                                        weights, train_xy)
            losses.append(loss)
        return self._score(params, stats, jnp.stack(losses), weights, valid_xy, test_xy)

    def warm_up(self, batch: int, weights, data) -> None:
        """Compile outside the timed region: loop: init, one step and score; vmap: the
        program for batches of ``batch`` candidates (smaller batches are padded to it)."""
        if self.execution != "vmap":
            jax.block_until_ready(self._one_in_loop(jax.random.key(0), weights[0], *data,
                                                    steps=1))
            return
        keys = jax.random.split(jax.random.key(0), batch)
        weights = jnp.repeat(weights[:1], batch, axis=0)
        self._compiled = self._batched.lower(keys, weights, *data).compile()
        self._batch = batch

    def __call__(self, keys, weights, data) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Train candidates ``keys[i], weights[i]`` on ``data = (train, valid, test)``; returns
        numpy results ``[P]`` and seconds per candidate."""
        n = len(keys)
        if self.execution == "vmap":
            run, batch = getattr(self, "_compiled", None), getattr(self, "_batch", n)
            if n > batch:
                raise ValueError(f"{n} candidates; warm_up compiled batches of {batch}")
            pad = batch - n
            keys = jnp.concatenate([keys, jnp.repeat(keys[:1], pad, 0)]) if pad else keys
            weights = jnp.concatenate([weights, jnp.repeat(weights[:1], pad, 0)]) if pad \
                else weights
            t0 = time.perf_counter()
            out = jax.block_until_ready((run or self._batched)(keys, weights, *data))
            seconds = np.full(n, (time.perf_counter() - t0) / n)
            return jax.tree.map(lambda x: np.asarray(x)[:n], out), seconds
        rows, seconds = [], []
        for key, w in zip(keys, weights):
            t0 = time.perf_counter()
            rows.append(jax.block_until_ready(self._one_in_loop(key, w, *data,
                                                                steps=self.recipe.steps)))
            seconds.append(time.perf_counter() - t0)
        stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *rows)
        return stacked, np.asarray(seconds)


@functools.lru_cache(maxsize=4)
def _trainer(space, recipe, execution: str) -> CandidateTrainer:
    """One trainer (and its compiled programs) per space, recipe and execution per process."""
    return CandidateTrainer(space, recipe, execution)


def _fingerprint(config, space) -> dict:
    """What a row's result depends on; parts written under another fingerprint are refused."""
    recipe = {name: config.evaluator[name] for name in RECIPE_FIELDS}
    return {"space": space_metadata(space, config.space.name),
            "dataset": config.dataset.to_dict(), "recipe": recipe, "seed": config.seed,
            "num_seeds": config.num_seeds}


def _parts_dir(out: str) -> str:
    return os.path.abspath(os.path.expanduser(out)) + ".parts"


def read_parts(out: str, fingerprint: dict | None = None) -> tuple[dict, dict, list[dict]]:
    """Rows finished so far under ``<out>.parts``: ``(row -> record, fingerprint, headers)``.
    Raises ValueError when a part was written under a different fingerprint."""
    done, headers = {}, []
    for path in sorted(glob.glob(os.path.join(_parts_dir(out), "part-*.jsonl"))):
        for record in read_jsonl(path):
            if "header" not in record:
                done.setdefault(int(record["row"]), record)
                continue
            header = record["header"]
            if fingerprint is None:
                fingerprint = header["fingerprint"]
            if json.loads(json.dumps(fingerprint)) != header["fingerprint"]:
                raise ValueError(f"{path} was written by a build with another config "
                                 "(space/dataset/recipe/seed/num_seeds); use another --out or "
                                 "remove that .parts folder")
            headers.append(header)
    return done, fingerprint, headers


def _open_part(path: str, header: dict):
    """Append to a part file after a header line for this session (commit, date, execution);
    a line cut short by a kill is dropped first."""
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb+") as f:
            data = f.read()
            f.truncate(data.rfind(b"\n") + 1)
    f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by the caller)
    f.write(json.dumps({"header": header}) + "\n")
    return f


def build_table(config: ml_collections.ConfigDict, out: str, *, limit: int | None = None,
                shard: tuple[int, int] = (0, 1), dataset=None, merge: bool | None = None):
    """Train this shard's missing rows, appending them to ``<out>.parts``; then (unsharded, or
    ``merge=True``) write the table to ``out`` and return it (else None).

    Args:
      limit: only the first ``limit`` canonical architectures (a partial table).
      shard: ``(i, n)``: this process trains chunks ``c`` with ``c % n == i``.
      dataset: a loaded ``Dataset`` to use instead of ``config.dataset`` (tests).
    """
    validate_build(config)
    setup_runtime(config.runtime)
    if dataset is None:
        dataset = load_dataset(config.dataset.name, data_dir=config.dataset.data_dir or None,
                               valid_fraction=config.dataset.valid_fraction, seed=config.seed)
    space = registry.SPACES.build(config.space.name, config.space,
                                  input_shape=dataset.input_shape,
                                  num_classes=dataset.num_classes)
    archs = canonical_archs(space)
    total = len(archs) if limit is None else min(int(limit), len(archs))
    fingerprint = _fingerprint(config, space)
    done, _, _ = read_parts(out, fingerprint)
    index, count = shard
    chunk = config.chunk_size
    chunks = [c for c in range(math.ceil(total / chunk)) if c % count == index]
    mine = [r for c in chunks for r in range(c * chunk, min((c + 1) * chunk, total))]
    todo = [r for r in mine if r not in done]
    os.makedirs(_parts_dir(out), exist_ok=True)
    recipe = recipe_from_config(config.evaluator)
    trainer = _trainer(space, recipe, config.evaluator.execution)
    header = {"fingerprint": fingerprint, "commit": git_commit(), "date": utc_now(),
              "execution": trainer.execution, "backend": jax.default_backend(),
              "shard": [index, count]}
    data = tuple((split.x, split.y) for split in (dataset.train, dataset.valid, dataset.test))
    seeds = config.num_seeds
    print(f"building {out}: {len(todo)} of this shard's {len(mine)} rows to train ({total} "
          f"of {len(archs)} canonical architectures, {seeds} seeds each, "
          f"{recipe.steps} steps, execution={trainer.execution})", file=sys.stderr, flush=True)
    progress = Progress(len(mine), start=len(mine) - len(todo), name="build",
                        interval_s=config.runtime.progress_interval_s)
    if todo:
        _train_rows(trainer, todo, archs, space, config, data, header,
                    os.path.join(_parts_dir(out), f"part-{index}-of-{count}.jsonl"),
                    progress, len(mine) - len(todo))
    if (count == 1) if merge is None else merge:
        return merge_parts(out, limit=limit)
    return None


def _train_rows(trainer, todo, archs, space, config, data, header, path, progress, before):
    """Train ``todo`` rows chunk by chunk, appending each finished chunk to the part file."""
    chunk, seeds = config.chunk_size, config.num_seeds
    root = jax.random.key(config.seed)
    trainer.warm_up(chunk * seeds, jax.vmap(space.one_hot)(jnp.asarray(archs[:1])), data)
    with _open_part(path, header) as f:
        for start in range(0, len(todo), chunk):
            rows = todo[start : start + chunk]
            keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(root, j), r)
                              for r in rows for j in range(seeds)])
            weights = jax.vmap(space.one_hot)(jnp.asarray(np.repeat(archs[rows], seeds, 0)))
            results, secs = trainer(keys, weights, data)
            results["train_seconds"] = secs
            for i, r in enumerate(rows):
                part = slice(i * seeds, (i + 1) * seeds)
                record = {name: results[name][part].astype(float).tolist() for name in RESULTS}
                record.update(row=r, arch=archs[r].tolist(),
                              finite=results["finite"][part].astype(bool).tolist())
                f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
            progress.update(before + start + len(rows),
                            {"valid_acc": float(np.mean(results["valid_accuracy"]))})


def merge_parts(out: str, *, limit: int | None = None) -> Table:
    """Collect every part under ``<out>.parts`` into the table at ``out`` (complete when every
    canonical architecture is present) and return it."""
    done, fingerprint, headers = read_parts(out)
    if not done:
        raise FileNotFoundError(f"no finished rows under {_parts_dir(out)}; run the build first")
    space = space_from_metadata(fingerprint["space"])
    archs = canonical_archs(space)
    rows = sorted(done)
    for r in rows:
        if done[r]["arch"] != archs[r].tolist():
            raise ValueError(f"row {r} of {_parts_dir(out)} is {done[r]['arch']}, but canonical "
                             f"architecture {r} is {archs[r].tolist()}")
    arrays = {name: np.array([done[r][name] for r in rows], np.float32) for name in RESULTS}
    diverged = int(sum(not all(done[r]["finite"]) for r in rows))
    metadata = {"source": "build_table", "dataset": fingerprint["dataset"]["name"],
                "dataset_config": fingerprint["dataset"], "recipe": fingerprint["recipe"],
                "seed": fingerprint["seed"], "seeds": list(range(fingerprint["num_seeds"])),
                "commit": git_commit(), "date": utc_now(), "limit": limit,
                "diverged_rows": diverged,
                "builds": [{k: h[k] for k in ("commit", "date", "execution", "backend", "shard")}
                           for h in headers]}
    table = make_table(space, archs[rows], metadata=metadata, rows="canonical",
                       space_name=fingerprint["space"].get("name", ""), **arrays)
    table.save(os.path.expanduser(out))
    state = "complete" if table.complete else "partial"
    print(f"wrote {out}: {table.num_rows} of {table.metadata['num_total']} canonical "
          f"architectures x {table.num_seeds} seeds ({state})", file=sys.stderr, flush=True)
    return table


# ------------------------------------------------------------------ synthetic tables
def synthetic_table(space: SearchSpace, key: jax.Array, *, num_seeds: int = 3,
                    mean_accuracy: float = 0.7, spread: float = 0.08, interaction: float = 0.5,
                    seed_noise: float = 0.01, test_noise: float = 0.005) -> Table:
    """A table with structure: standardised additive per-decision effects plus ``interaction``
    times standardised pairwise effects, scaled to accuracies around ``mean_accuracy``; each
    seed adds Gaussian ``seed_noise``, and the test accuracy differs from the valid one by an
    architecture's own ``test_noise``. Defined on canonical representatives, so isomorphic
    architectures share their results; local search finds good rows. Losses and times: NaN."""
    archs = canonical_archs(space)
    n, d, c = len(archs), space.num_decisions, space.max_choices
    rng = np.random.default_rng(key_seed(key))  # numpy: no compile per shape on the host
    additive = rng.standard_normal((d, c))
    pair = rng.standard_normal((d, c, d, c))
    add_score = additive[np.arange(d), archs].sum(1)
    pair_score = np.zeros(n)
    for i in range(d):
        for j in range(i + 1, d):
            pair_score += pair[i, archs[:, i], j, archs[:, j]]

    def standard(x):
        return (x - x.mean()) / max(x.std(), 1e-12)

    z = standard(standard(add_score) + interaction * standard(pair_score))
    valid_mean = mean_accuracy + spread * z
    test_mean = valid_mean + test_noise * rng.standard_normal(n)
    noise_v = rng.standard_normal((n, num_seeds))
    noise_t = rng.standard_normal((n, num_seeds))
    valid = np.clip(valid_mean[:, None] + seed_noise * noise_v, 0.0, 1.0)
    test = np.clip(test_mean[:, None] + seed_noise * noise_t, 0.0, 1.0)
    meta = {"source": "synthetic", "dataset": "synthetic", "recipe": None,
            "seeds": list(range(num_seeds)), "commit": git_commit(),
            "synthetic": dict(key=key_seed(key),
                              mean_accuracy=mean_accuracy, spread=spread,
                              interaction=interaction, seed_noise=seed_noise,
                              test_noise=test_noise)}
    meta["date"] = utc_now()
    return make_table(space, archs, valid_accuracy=valid, test_accuracy=test, metadata=meta)


def key_seed(key: jax.Array) -> list[int]:
    """The integers of a PRNG key (typed or raw ``uint32[2]``), to seed host-side numpy."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).ravel().tolist()


def synthetic_from_config(config: ml_collections.ConfigDict, seed: int = 0) -> Table:
    """``synthetic_table`` over the config's space (its costs use the space builder's default
    input shape and classes: nothing is loaded)."""
    validate_build(config)
    space = registry.SPACES.build(config.space.name, config.space)
    return synthetic_table(space, jax.random.key(seed))
