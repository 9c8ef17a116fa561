"""Strategy comparison on a tabular benchmark: many seeds of whole searches at once.

Each strategy's search runs inside one ``lax.scan`` (ask, table lookup, tell) and the seeds
under ``vmap``, jitted once: a table lookup costs a gather, so hundreds of searches take
seconds. Per seed and evaluation we record the architecture chosen so far (the best by the
observed, seed-noisy valid accuracy) and its mean test accuracy; its regret is the table's
best mean test accuracy minus that. The same searches run one seed at a time through jitted
ask/lookup/tell in a Python loop give the speed of the host-driven form for comparison.
``run_compare(config, workdir)`` is what ``experiments/compare.py`` calls.
"""

from __future__ import annotations

import functools
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
from nas_jax.config import ConfigError, check_schema, check_strategy, search_config
from nas_jax.evaluators.table import (
    TableEvaluator,
    table_config_problem,
    table_lookup,
    table_summary,
)
from nas_jax.runner import setup_runtime
from nas_jax.utils.metrics import CONFIG_FILE, to_python
from nas_jax.utils.plots import plot_curves

STRATEGY_NAMES = ("random_search", "regularized_evolution", "reinforce", "genetic_algorithm")
# Settings for budgets of ~100-200 evaluations, picked among a few on 4 synthetic NB201
# tables x 128 seeds, where RE (at 100 evaluations) and the GA (100 and 150) had a lower mean
# regret than random search on every table and REINFORCE on 3 of 4 (about equal on the
# fourth): a small aging population; ENAS' controller taking a step every 5 architectures
# with a larger learning rate; a generational GA of 10 with integer genes, ~1.5 genes
# mutated per child, crossover 0.9 and one elite.
STRATEGY_DEFAULTS = {
    "random_search": dict(batch_size=1),
    "regularized_evolution": dict(batch_size=1, population_size=10, sample_size=5),
    "reinforce": dict(batch_size=5, learning_rate=0.03),
    "genetic_algorithm": dict(population_size=10, batch_size=10, tournament_size=3,
                              crossover_rate=0.9, mutation_rate=1.0, gene_mutation_rate=0.25,
                              encoding="integer", elitism=1),
}


def compare_config() -> ml_collections.ConfigDict:
    """The schema of a comparison (every field with its default)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.table_path = ""
    c.allow_partial = False
    c.num_seeds = 100
    c.num_evaluations = 150
    c.loop_seeds = 3  # seeds also run one at a time in a Python loop, for the speed column
    c.strategies = STRATEGY_NAMES
    # Strategies compiled with XLA's backend optimisations off: ~3x faster compiles on
    # XLA:CPU and the same results, but slower runs (REINFORCE's ~5x), so the reported speeds
    # are of optimised programs unless listed here (the tests list the three cheap ones).
    c.fast_compile = ()
    c.strategy = ml_collections.ConfigDict()
    for name in STRATEGY_NAMES:
        section = search_config().strategy
        section.name = name
        section.update(STRATEGY_DEFAULTS[name])
        c.strategy[name] = section
    c.runtime = search_config().runtime
    return c


def validate_compare(config: ml_collections.ConfigDict, *, check_table: bool = True) -> None:
    """Check a comparison config; raises ``ConfigError`` naming the field."""
    check_schema(config, compare_config(), "")
    for field in ("num_seeds", "num_evaluations"):
        if config[field] < 1:
            raise ConfigError(f"config.{field}={config[field]}: must be >= 1")
    if not 0 <= config.loop_seeds <= config.num_seeds:
        raise ConfigError(f"config.loop_seeds={config.loop_seeds}: must be in 0..num_seeds "
                          f"({config.num_seeds})")
    if not config.strategies:
        raise ConfigError(f"config.strategies: empty; allowed: {', '.join(STRATEGY_NAMES)}")
    for name in config.fast_compile:
        if name not in STRATEGY_NAMES:
            raise ConfigError(f"config.fast_compile: {name!r} is unknown; allowed: "
                              f"{', '.join(STRATEGY_NAMES)}")
    for name in config.strategies:
        if name not in STRATEGY_NAMES:
            raise ConfigError(f"config.strategies: {name!r} is unknown; allowed: "
                              f"{', '.join(STRATEGY_NAMES)}")
        section = config.strategy[name]
        if section.name != name:
            raise ConfigError(f"config.strategy.{name}.name={section.name!r}: must be {name!r}")
        search = search_config()
        search.strategy = section
        search.budget.num_evaluations = config.num_evaluations
        try:
            check_strategy(search)
            for field in ("population_size", "sample_size", "batch_size"):
                if section[field] < 1:
                    raise ConfigError(f"config.strategy.{field}={section[field]}: must be >= 1")
            if section.batch_size > config.num_evaluations:
                raise ConfigError(f"config.strategy.batch_size={section.batch_size}: must be "
                                  f"<= num_evaluations ({config.num_evaluations})")
            if section.sample_size > section.population_size:
                raise ConfigError(f"config.strategy.sample_size={section.sample_size}: must be "
                                  f"<= population_size ({section.population_size})")
        except ConfigError as e:
            message = str(e).replace("config.strategy.", f"config.strategy.{name}.")
            message = message.replace("budget.num_evaluations", "num_evaluations")
            raise ConfigError(message) from None
    if check_table:
        problem = table_config_problem(config.table_path)
        if problem:
            raise ConfigError(f"config.table_path={config.table_path!r}: {problem}")


def build_strategies(config: ml_collections.ConfigDict, space) -> dict:
    """Name -> strategy, built through the registry from ``config.strategy.<name>``."""
    return {name: registry.STRATEGIES.build(name, config.strategy[name], space)
            for name in config.strategies}


# ---------------------------------------------------------------------- searching
def best_so_far(fitness: jax.Array, test: jax.Array) -> jax.Array:
    """Test accuracy of the architecture chosen after each evaluation: the first one with the
    highest fitness so far (NaN before any finite fitness). ``fitness``, ``test``: ``[E]``."""
    e = fitness.shape[0]
    previous = jnp.concatenate([jnp.full((1,), -jnp.inf), jax.lax.cummax(fitness)[:-1]])
    newest = jax.lax.cummax(jnp.where(fitness > previous, jnp.arange(e), -1))
    return jnp.where(newest >= 0, test[jnp.maximum(newest, 0)], jnp.nan)


def _num_rounds(strategy, num_evaluations: int) -> int:
    return math.ceil(num_evaluations / strategy.batch_size)


def search_trace(strategy, num_evaluations: int, arrays: dict, state, key: jax.Array):
    """A search against a table from ``state``, in one ``lax.scan`` of ask/lookup/tell rounds
    (round keys ``split(key, rounds)``, each split into ask and lookup keys). Returns the final
    state and, per evaluation (the first ``num_evaluations`` of the rounds' batches), its
    ``fitness``, ``test_accuracy`` (mean over seeds) and ``chosen_test_accuracy``
    (``best_so_far``)."""

    def body(state, k):
        k_ask, k_eval = jax.random.split(k)
        archs, state = strategy.ask(k_ask, state)
        fitness, metrics = table_lookup(arrays, k_eval, archs)
        state, _ = strategy.tell(state, archs, fitness)
        return state, (fitness, metrics["test_accuracy"])

    keys = jax.random.split(key, _num_rounds(strategy, num_evaluations))
    state, (fitness, test) = jax.lax.scan(body, state, keys)
    fitness, test = fitness.reshape(-1)[:num_evaluations], test.reshape(-1)[:num_evaluations]
    return state, {"fitness": fitness, "test_accuracy": test,
                   "chosen_test_accuracy": best_so_far(fitness, test)}


@functools.partial(jax.jit, static_argnums=0)
def init_states(strategy, keys: jax.Array):
    """Each seed key ``k`` -> (``strategy.init(split(k)[0])``, search key ``split(k)[1]``),
    stacked over seeds."""
    pairs = jax.vmap(jax.random.split)(keys)
    return jax.vmap(strategy.init)(pairs[:, 0]), pairs[:, 1]


def _vmapped_search(strategy, num_evaluations: int, arrays: dict, states, keys: jax.Array):
    return jax.vmap(lambda s, k: search_trace(strategy, num_evaluations, arrays, s, k))(
        states, keys)


vmapped_search = jax.jit(_vmapped_search, static_argnums=(0, 1))
vmapped_search.__doc__ = """``search_trace`` for every seed at once: final states and traces
``[seeds, E]`` (``(strategy, num_evaluations, arrays, states, keys)``; the first two static).
It also continues searches from restored states (same program for the same shapes)."""
FAST_COMPILE = {"xla_backend_optimization_level": 0}
vmapped_search_fast_compile = jax.jit(_vmapped_search, static_argnums=(0, 1),
                                      compiler_options=FAST_COMPILE)


def search_program(fast_compile: bool):
    """``vmapped_search``, or the same compiled without XLA's backend optimisations."""
    return vmapped_search_fast_compile if fast_compile else vmapped_search


@functools.lru_cache(maxsize=32)
def _loop_programs(strategy):
    return (jax.jit(strategy.init), jax.jit(strategy.ask), jax.jit(strategy.tell),
            jax.jit(table_lookup))


def loop_search(strategy, num_evaluations: int, arrays: dict, key: jax.Array) -> dict:
    """The same search as ``search_trace``, driven round by round from Python (one seed)."""
    init, ask, tell, lookup = _loop_programs(strategy)
    k_init, k_loop = jax.random.split(key)
    state = init(k_init)
    fitness, test = [], []
    for k in jax.random.split(k_loop, _num_rounds(strategy, num_evaluations)):
        k_ask, k_eval = jax.random.split(k)
        archs, state = ask(k_ask, state)
        f, metrics = lookup(arrays, k_eval, archs)
        state, _ = tell(state, archs, f)
        fitness.append(f)
        test.append(metrics["test_accuracy"])
    fitness = np.concatenate(fitness)[:num_evaluations]
    test = np.concatenate(test)[:num_evaluations]
    return {"fitness": fitness, "test_accuracy": test,
            "chosen_test_accuracy": np.asarray(best_so_far(jnp.asarray(fitness),
                                                           jnp.asarray(test)))}


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """Search ``i`` uses ``fold_in(key(seed), i)``: a seed's search does not depend on how
    many others run beside it."""
    root = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(num_seeds))


def compare_strategies(strategies: dict, evaluator: TableEvaluator, keys: jax.Array,
                       num_evaluations: int, *, loop_seeds: int = 0, fast_compile=(),
                       log=None) -> dict:
    """Run every strategy's vmapped search over ``keys`` and summarise it (the names in
    ``fast_compile`` through ``vmapped_search_fast_compile``); optionally time the first
    ``loop_seeds`` seeds in the Python loop too. Returns name -> numbers."""
    best = evaluator.best_test_accuracy
    results = {}
    for name, strategy in strategies.items():
        states, search_keys = init_states(strategy, keys)
        args = (strategy, num_evaluations, evaluator.arrays, states, search_keys)
        t0 = time.perf_counter()
        program = search_program(name in fast_compile)
        jax.block_until_ready(program(*args))  # compiles (kept in jit's cache)
        t1 = time.perf_counter()
        _, out = jax.block_until_ready(program(*args))
        seconds = time.perf_counter() - t1
        chosen = np.asarray(out["chosen_test_accuracy"], np.float64)
        regret = best - chosen
        final_test, final_regret = chosen[:, -1], regret[:, -1]
        num_seeds = keys.shape[0]
        row = {
            "final_test_accuracy_mean": float(np.nanmean(final_test)),
            "final_test_accuracy_std": float(np.nanstd(final_test)),
            "final_regret_mean": float(np.nanmean(final_regret)),
            "final_regret_std": float(np.nanstd(final_regret)),
            "regret_mean": np.nanmean(regret, axis=0).tolist(),
            "regret_std": np.nanstd(regret, axis=0).tolist(),
            "final_regret": final_regret.tolist(),
            "compile_seconds": max(t1 - t0 - seconds, 0.0), "vmapped_seconds": seconds,
            "fast_compile": name in fast_compile,
            "vmapped_evals_per_s": num_seeds * num_evaluations / seconds,
        }
        if loop_seeds:
            loop_search(strategy, num_evaluations, evaluator.arrays, keys[0])  # compile
            t2 = time.perf_counter()
            loops = [loop_search(strategy, num_evaluations, evaluator.arrays, keys[i])
                     for i in range(loop_seeds)]
            loop_seconds = time.perf_counter() - t2
            diff = max(float(np.nanmax(np.abs(lp["chosen_test_accuracy"] - chosen[i])))
                       for i, lp in enumerate(loops))
            row.update(loop_seconds=loop_seconds,
                       loop_evals_per_s=loop_seeds * num_evaluations / loop_seconds,
                       speedup=row["vmapped_evals_per_s"] * loop_seconds
                       / (loop_seeds * num_evaluations),
                       loop_max_abs_diff=diff)
        results[name] = row
        if log:
            log(f"{name}: regret {row['final_regret_mean']:.4f} +- {row['final_regret_std']:.4f}"
                f", compile {row['compile_seconds']:.1f} s, {row['vmapped_evals_per_s']:,.0f} "
                "seed-evaluations/s vmapped")
    return results


# ----------------------------------------------------------------------- reporting
def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}"


def markdown_table(summary: dict) -> str:
    """The comparison as a markdown table with a header of what was compared."""
    lines = [f"Table: {summary['table']}", "",
             f"{summary['num_seeds']} seeds x {summary['num_evaluations']} evaluations per "
             f"strategy; regret = best mean test accuracy in the table "
             f"({summary['best_test_accuracy']:.4f}) - mean test accuracy of the architecture "
             f"chosen by valid accuracy; {summary['backend']} backend, speeds in "
             "seed-evaluations/s (Python loop: one seed at a time, jitted ask/lookup/tell, "
             f"{summary['loop_seeds']} seeds); compile: first call minus a run, * without "
             "XLA's backend optimisations (config.fast_compile).", "",
             "| strategy | final test accuracy | final regret | vmapped + scanned | Python loop "
             "| speed-up | compile (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in summary["strategies"].items():
        loop = f"{r['loop_evals_per_s']:,.0f}" if "loop_evals_per_s" in r else "-"
        speedup = f"{r['speedup']:,.0f}x" if "speedup" in r else "-"
        test = _pm(r["final_test_accuracy_mean"], r["final_test_accuracy_std"])
        lines.append(f"| {name} | {test} | {_pm(r['final_regret_mean'], r['final_regret_std'])} | "
                     f"{r['vmapped_evals_per_s']:,.0f} | {loop} | {speedup} | "
                     f"{r['compile_seconds']:.1f}{'*' if r['fast_compile'] else ''} |")
    return "\n".join(lines) + "\n"


def run_compare(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Compare the configured strategies on the configured table; write ``compare.md``,
    ``compare.json`` and ``regret.png`` into ``workdir`` and return the summary."""
    validate_compare(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    setup_runtime(config.runtime)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        json.dump(to_python(config), f, indent=2, sort_keys=True)
    evaluator = TableEvaluator.from_path(config.table_path, allow_partial=config.allow_partial)
    strategies = build_strategies(config, evaluator.space)
    keys = seed_keys(config.seed, config.num_seeds)

    def log(line):
        print(line, file=sys.stderr, flush=True)

    log(f"comparing {', '.join(strategies)} on {table_summary(evaluator.table)}")
    results = compare_strategies(strategies, evaluator, keys, config.num_evaluations,
                                 fast_compile=tuple(config.fast_compile),
                                 loop_seeds=config.loop_seeds, log=log)
    summary = {"table": table_summary(evaluator.table), "table_path": config.table_path,
               "table_metadata": evaluator.table.metadata,
               "best_test_accuracy": evaluator.best_test_accuracy,
               "num_seeds": config.num_seeds, "num_evaluations": config.num_evaluations,
               "loop_seeds": config.loop_seeds, "backend": jax.default_backend(),
               "strategies": results}
    text = markdown_table(summary)
    with open(os.path.join(workdir, "compare.md"), "w") as f:
        f.write(text)
    with open(os.path.join(workdir, "compare.json"), "w") as f:
        json.dump(to_python(summary), f, indent=1)
    x = np.arange(1, config.num_evaluations + 1)
    plot_curves(os.path.join(workdir, "regret.png"),
                {n: (x, r["regret_mean"], r["regret_std"]) for n, r in results.items()},
                xlabel="architectures evaluated",
                ylabel="regret (test accuracy, mean ± std)",
                title=f"{config.num_seeds} seeds on {evaluator.table.metadata['dataset']}")
    print(text, flush=True)
    return summary
