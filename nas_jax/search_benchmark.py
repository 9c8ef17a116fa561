"""Seconds per search step of the gradient-based and one-shot methods, side by side.

``run_search_benchmark(config)`` builds one NB201 supernet (the gradient-search issue's
setting: C=16, N=5, 32x32x3, batch 64) and times, in one process on the same synthetic
batches, one jitted step of each listed method from a cold start: the first call (trace +
compile + run) and the mean of ``config.steps`` further calls. ``config.space="darts"``
builds DARTS' search supernet instead (``config.channels``, ``config.num_cells``; methods
``DARTS_METHODS``). Methods:

- ``darts1`` / ``darts2``: DARTS, first order / exact second order (``GradientSearch``).
- ``gdas``: GDAS with the mixture supernet (every op computed, times the one-hot sample).
- ``gdas_switch``: GDAS with the switch supernet (only the sampled op per edge runs).
- ``random_path``: one SPOS / random-single-path weight step on the switch supernet (a
  uniformly sampled architecture, only its ops computed).
- ``random_path_composed``: the same step composed from per-unit programs on the host
  (``supernet.composed``; the architectures drawn as ``random_path`` draws them). Its
  first call is a step of a cell with every operation kind, so the timed steps compile
  nothing (a new sum arity or zero node at most).
- ``gdas_composed``: GDAS composed from per-unit programs (``strategies.gdas_composed``):
  the switch supernet's step (DARTS: the mixture step restricted to the sampled ops), each
  unit a top-level program. Its first call is ``ComposedGDAS.warm_up`` (every unit and sum
  arity compiled) and one step, so the timed steps compile nothing. Their time depends on
  the sampled cells (how many convolutions): use more steps than for the compiled methods.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections

from nas_jax.evaluators.population import EXECUTION_OPTIONS
from nas_jax.spaces.darts import DartsSpace
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.strategies.gradient import GradientSearch

METHODS = ("darts1", "darts2", "gdas", "gdas_switch", "gdas_composed", "random_path",
           "random_path_composed")
DARTS_METHODS = ("darts1", "darts2", "gdas", "gdas_composed")  # the DARTS space has no switch
SPACES = ("nb201", "darts")
ALL_OP_KINDS = (3, 2, 4, 3, 1, 3)  # NB201 cell with conv 3x3 / 1x1, pool, skip; 1-3-input nodes
SWITCH = tuple(EXECUTION_OPTIONS["switch"].items())  # the switch execution's supernet
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def default_methods() -> tuple[str, ...]:
    """Every method, but on CPU without ``gdas`` on the mixture supernet: that step computes
    every operation of every edge (the whole DARTS mixture, 83 s to its first step and 2.7 s
    per step on 2 cores, against GDAS's 0.7-1.1 s single-path forms), and the run must fit in
    10 minutes on 2 cores (it took 10 min 21 s with it, 2026-12-01). Force it with
    ``methods=...``."""
    if jax.default_backend() == "cpu":
        return tuple(m for m in METHODS if m != "gdas")
    return METHODS


def search_benchmark_config() -> ml_collections.ConfigDict:
    """Defaults: NB201 C=16, N=5 on 32x32x3 at batch 64, ``default_methods()``, 3 timed steps
    (1 for DARTS' exact second order, whose step takes ~24 s on 2 CPU cores)."""
    c = ml_collections.ConfigDict()
    c.kind = "search"
    c.seed = 0
    c.space = "nb201"  # or "darts": DARTS' search supernet (channels, num_cells)
    c.channels = 16
    c.cells_per_stage = 5  # nb201
    c.num_cells = 8  # darts
    c.input_shape = (32, 32, 3)
    c.batch_size = 64
    c.steps = 3
    c.steps_of = ml_collections.ConfigDict({"darts2": 1})  # per-method timed steps
    c.methods = default_methods()
    c.fast_compile = False  # XLA backend optimisation level 0 (quick checks; slower steps)
    return c


def _method(space, name: str) -> GradientSearch:
    allowed = DARTS_METHODS if isinstance(space, DartsSpace) else METHODS
    if name not in allowed:
        raise ValueError(f"config.methods: {name!r}; allowed in the {type(space).__name__}: "
                         f"{', '.join(allowed)}")
    if name in ("darts1", "darts2"):
        return GradientSearch(space, method="darts", order=int(name[-1]))
    options = SWITCH if name in ("gdas_switch", "random_path") else ()  # composed: mixture
    return GradientSearch(space, method="gdas", network_options=options)


def _random_path_step(search: GradientSearch):
    """A SPOS weight step: a uniformly sampled architecture's one-hot path, weights only."""

    def step(state, train_batch, valid_batch):
        del valid_batch
        arch = search.space.sample(jax.random.fold_in(state.key, state.step))
        params, stats, w_opt, loss, _ = search.weight_step(
            state.params, state.stats, state.w_opt, search.space.one_hot(arch), train_batch)
        return state.replace(params=params, stats=stats, w_opt=w_opt,
                             step=state.step + 1), {"train_loss": loss}

    return step


def _timed(name: str, first, step, carry, steps: int) -> dict:
    """The benchmark row of one method: ``first(carry)`` timed as the cold call, then the mean
    of ``steps`` calls ``step(carry, i)`` (``i`` from 1); each returns ``(carry, loss)``."""
    t0 = time.perf_counter()
    carry, loss = first(carry)
    jax.block_until_ready(loss)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        carry, loss = step(carry, i)
    jax.block_until_ready(loss)
    per_step = (time.perf_counter() - t0) / max(steps, 1)
    return {"method": name, "first_call_s": first_s, "seconds_per_step": per_step,
            "finite": bool(jnp.isfinite(loss))}


def _time_random_path_composed(search: GradientSearch, key: jax.Array, train_batch,
                               steps: int) -> dict:
    """``random_path`` through ``ComposedExecutor``'s trainer, with the search's weight
    optimizer and initial weights."""
    from nas_jax.evaluators.executors import ComposedExecutor
    from nas_jax.evaluators.oneshot import sampled_paths
    from nas_jax.train.steps import Recipe

    space = search.space
    trainer = ComposedExecutor(space, Recipe(batch_size=train_batch[0].shape[0]),
                               tx=search.weight_optimizer()).trainer
    state = search.init(key)
    archs = sampled_paths(space, state.key, 0, steps + 1)  # random_path's, step by step

    def step(carry, i, arch=None):
        *carry, loss = trainer.step(trainer.plan_arch(archs[i] if arch is None else arch),
                                    *carry, state.key, i, train_batch)
        return tuple(carry), loss

    return _timed("random_path_composed", lambda c: step(c, 0, ALL_OP_KINDS), step,
                  trainer.prepare(state.params, state.stats), steps)


def _time_gdas_composed(search: GradientSearch, key: jax.Array, train_batch, valid_batch,
                        steps: int) -> dict:
    """GDAS through ``ComposedGDAS``, from the search's initial state; the cold call is
    ``warm_up`` and one step."""
    from nas_jax.strategies.gdas_composed import ComposedGDAS

    composed = ComposedGDAS(search)
    state = composed.prepare(search.init(key))
    jax.block_until_ready(state)

    def step(state, i=0):
        state, metrics = composed.step(state, train_batch, valid_batch)
        return state, metrics["train_loss"]

    def first(state):
        composed.warm_up(state, train_batch, valid_batch)
        return step(state)

    return _timed("gdas_composed", first, step, state, steps)


def compiled_step(space, name: str, key: jax.Array, compiler_options: dict | None = None):
    """``(jitted step, initial state)`` of a method that runs as one jitted program (all but
    the ``*_composed`` ones): ``jitted(state, train_batch, valid_batch) -> (state,
    metrics)``, its state argument donated. Also what ``experiments/profile_step.py``
    profiles."""
    if name.endswith("_composed"):
        raise ValueError(f"method {name!r} runs as many programs composed on the host, not "
                         "one jitted step; profile one of "
                         f"{', '.join(m for m in METHODS if not m.endswith('_composed'))}")
    search = _method(space, name)
    state = search.init(key)
    jax.block_until_ready(state)
    jitted = jax.jit(_random_path_step(search) if name == "random_path" else search.step,
                     donate_argnums=0, compiler_options=compiler_options)
    return jitted, state


def benchmark_space(config: ml_collections.ConfigDict):
    """``(space, description)`` of a search benchmark config."""
    if config.space not in SPACES:
        raise ValueError(f"config.space={config.space!r}; allowed: {', '.join(SPACES)}")
    if config.space == "darts":
        space = DartsSpace(channels=config.channels, num_cells=config.num_cells,
                           input_shape=tuple(config.input_shape), num_classes=10)
        return space, f"DARTS C={config.channels} cells={config.num_cells}"
    space = NB201Space(channels=config.channels, cells_per_stage=config.cells_per_stage,
                       input_shape=tuple(config.input_shape), num_classes=10)
    return space, f"NB201 C={config.channels} N={config.cells_per_stage}"


def benchmark_batches(config: ml_collections.ConfigDict):
    """``(init key, train batch, valid batch)``: the benchmark's synthetic batches."""
    k1, k2, k3, k4, k_init = jax.random.split(jax.random.key(config.seed), 5)
    shape = (config.batch_size, *config.input_shape)
    train = (jax.random.normal(k1, shape), jax.random.randint(k2, shape[:1], 0, 10))
    valid = (jax.random.normal(k3, shape), jax.random.randint(k4, shape[:1], 0, 10))
    return k_init, train, valid


def time_method(space, name: str, key: jax.Array, train_batch, valid_batch,
                steps: int, compiler_options: dict | None = None) -> dict:
    """``{method, first_call_s, seconds_per_step, finite}`` for one method from a cold
    start."""
    if name == "random_path_composed":
        return _time_random_path_composed(_method(space, name), key, train_batch, steps)
    if name == "gdas_composed":
        return _time_gdas_composed(_method(space, name), key, train_batch, valid_batch, steps)
    jitted, state = compiled_step(space, name, key, compiler_options)

    def step(state, i=0):
        state, metrics = jitted(state, train_batch, valid_batch)
        return state, metrics["train_loss"]

    return _timed(name, step, step, state, steps)


def run_search_benchmark(config: ml_collections.ConfigDict, workdir: str | None = None,
                         log=print) -> dict:
    """Time every method of ``config.methods``; print a table; write ``search_benchmark.json``."""
    space, described = benchmark_space(config)
    for name in config.methods:
        _method(space, name)  # names checked up front
    steps_of = dict(config.get("steps_of") or {})
    for name, n in steps_of.items():
        if name not in METHODS or not isinstance(n, int) or n < 1:
            raise ValueError(f"config.steps_of.{name}: {n!r}; give a method of "
                             f"{', '.join(METHODS)} a number of timed steps >= 1")
    k_init, train, valid = benchmark_batches(config)
    log(f"backend {jax.default_backend()}, {described}, input {tuple(config.input_shape)}, "
        f"batch {config.batch_size}")
    log(f"{'method':20s} {'first call s':>12s} {'s / step':>9s} {'steps':>5s}")
    rows = []
    for name in config.methods:
        # The runs' PRNG setting (runner.setup_runtime): XLA:CPU compiles inits much faster.
        with jax.threefry_partitionable(False):
            steps = steps_of.get(name, config.steps)
            row = time_method(space, name, k_init, train, valid, steps,
                              FAST_COMPILE if config.fast_compile else None)
        row["timed_steps"] = steps
        rows.append(row)
        log(f"{name:20s} {row['first_call_s']:12.1f} {row['seconds_per_step']:9.3f} "
            f"{steps:5d}")
    out = {"backend": jax.default_backend(), "config": config.to_dict(), "rows": rows}
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "search_benchmark.json"), "w") as f:
            json.dump(out, f, indent=1, default=str)
    return out
