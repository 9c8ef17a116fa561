"""Meta-test protocol for meta-trained controllers (Wong et al., NeurIPS 2018, Sec. 4).

On every held-out (meta-test) task of the family the controllers were meta-trained on, six
kinds of search run for ``num_seeds`` seeds and ``budget`` evaluations each, looked up in the
task's fitness table: per meta-trained controller, ``zero_shot`` (samples from the
meta-trained policy, never updated), ``ranked`` (the meta-trained policy's architectures in
order of decreasing probability for the task, each evaluated once: the zero-shot search that
never repeats; deterministic, so the same for every seed) and ``finetune`` (REINFORCE from the
meta-trained params, ``ConditionedController.finetune``); then ``scratch`` (the same LSTM
policy freshly initialised, trained by REINFORCE with the fine-tuning settings),
``regularized_evolution`` and ``random_search``. Each method is one jitted program: a
``lax.scan`` of ask/lookup/tell rounds, ``vmap``-ed over seeds and over tasks (``ranked``: the
policy's log-probability of every architecture of the space, ``vmap``-ed over tasks).

Per method and task we record the regret curve (task's best fitness minus the best fitness
found so far, mean over seeds) and the number of evaluations until the best found is within
``tolerance`` of the task's best (a seed that never gets there counts as ``budget + 1``).
``run_meta_test(config, workdir)`` writes ``meta_test.json``, ``meta_test.md`` and
``regret.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nas_jax.config import ConfigError, check_schema
from nas_jax.meta.controller import FinetuneController, FrozenParams, load_controller
from nas_jax.meta.meta_train import (
    FAST_COMPILE,
    build_family,
    meta_train_config,
    zero_shot_results,
)
from nas_jax.meta.tasks import TaskPool, table_fitness
from nas_jax.strategies.base import Best, clean_fitness, tell_metrics
from nas_jax.strategies.evolution import RandomSearch, RegularizedEvolution
from nas_jax.strategies.reinforce import ReinforceController, ReinforceState
from nas_jax.utils.metrics import CONFIG_FILE, atomic_write, to_python
from nas_jax.utils.plots import plot_curves

BASELINES = ("scratch", "regularized_evolution", "random_search")
# Every fine-tuned / zero-shot strategy gets its start params from the state, not from
# ``FinetuneController.start``; one shared placeholder keeps equal strategies equal (and
# hashed alike), so jit reuses one compiled program across tasks and calls.
_NO_START = FrozenParams({})


def meta_test_config() -> ml_collections.ConfigDict:
    """The schema of a meta-test run, with defaults."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # name -> meta_train workdir (it holds config.json and controller/); all the same family.
    c.controllers = ml_collections.ConfigDict()
    c.num_seeds = 32
    c.budget = 60  # evaluations per search
    c.tolerance = 0.01  # "reached": best found >= task's best - tolerance (absolute)
    # Fine-tuned and from-scratch controllers (and the zero-shot sampler's batch).
    c.finetune = ml_collections.ConfigDict(dict(batch_size=4, learning_rate=0.02))
    c.evolution = ml_collections.ConfigDict(dict(population_size=10, sample_size=5))
    # XLA backend optimisations off: much faster compiles on CPU for these small programs.
    c.fast_compile = True
    return c


def validate_meta_test(config: ml_collections.ConfigDict) -> None:
    """Check the config against the schema and ranges; ConfigError names the field."""
    schema = meta_test_config()
    if isinstance(config.get("controllers"), ml_collections.ConfigDict):
        schema.controllers = ml_collections.ConfigDict({k: "" for k in config.controllers})
    check_schema(config, schema, "")
    if not config.controllers:
        raise ConfigError("config.controllers: empty; give name -> meta_train workdir, e.g. "
                          "configs/meta_test_synthetic.py's data / learned / none")
    for name, path in config.controllers.items():
        if not path:
            raise ConfigError(f"config.controllers.{name}: empty; set it to a meta_train "
                              "workdir (experiments/meta_train.py --workdir)")
    for field in ("num_seeds", "budget"):
        if config[field] < 1:
            raise ConfigError(f"config.{field}={config[field]}: must be >= 1")
    if not config.tolerance >= 0:
        raise ConfigError(f"config.tolerance={config.tolerance}: must be >= 0")
    ft, evo = config.finetune, config.evolution
    if not 1 <= ft.batch_size <= config.budget:
        raise ConfigError(f"config.finetune.batch_size={ft.batch_size}: must be in [1, "
                          f"config.budget={config.budget}]")
    if not ft.learning_rate > 0:
        raise ConfigError(f"config.finetune.learning_rate={ft.learning_rate}: must be > 0")
    if evo.population_size < 1:
        raise ConfigError(f"config.evolution.population_size={evo.population_size}: must be "
                          ">= 1")
    if not 1 <= evo.sample_size <= evo.population_size:
        raise ConfigError(f"config.evolution.sample_size={evo.sample_size}: must be in [1, "
                          f"config.evolution.population_size={evo.population_size}]")


@dataclasses.dataclass(frozen=True)
class ZeroShotPolicy(FinetuneController):
    """Samples from the given policy and never updates it (``tell`` only tracks the best)."""

    def tell(self, state: ReinforceState, archs: jax.Array, fitness: jax.Array):
        fitness = clean_fitness(fitness)
        best = state.best.update(archs, fitness)
        return state.replace(best=best), tell_metrics(best, fitness)


# ---------------------------------------------------------------------- searching
def search_trace(strategy, budget: int, task, state, key: jax.Array):
    """One search on ``task``'s table from ``state``: ``ceil(budget / batch_size)`` rounds
    of ask/lookup/tell in a ``lax.scan``. Returns the first ``budget`` evaluations' fitness
    float32[E] and architectures int32[E, D]."""

    def body(state, k):
        archs, state = strategy.ask(k, state)
        fitness = table_fitness(task, archs, strategy.space)
        state, _ = strategy.tell(state, archs, fitness)
        return state, (fitness, archs)

    rounds = math.ceil(budget / strategy.batch_size)
    _, (fitness, archs) = jax.lax.scan(body, state, jax.random.split(key, rounds))
    d = strategy.space.num_decisions
    return fitness.reshape(-1)[:budget], archs.reshape(-1, d)[:budget]


def _searches(strategy, budget: int, tasks, states, keys):
    def per_task(task, task_states, task_keys):
        return jax.vmap(lambda s, k: search_trace(strategy, budget, task, s, k))(
            task_states, task_keys)

    return jax.vmap(per_task)(tasks, states, keys)


_PROGRAMS = {fast: jax.jit(_searches, static_argnums=(0, 1),
                           compiler_options=FAST_COMPILE if fast else None)
             for fast in (False, True)}


def run_searches(strategy, budget: int, tasks, states, keys, *, fast_compile: bool = False):
    """``search_trace`` for every task (leading axis T of the stacked ``tasks``) and seed
    (``states``/``keys`` [T, S]), jitted once per strategy: fitness [T, S, E], archs
    [T, S, E, D]."""
    return _PROGRAMS[bool(fast_compile)](strategy, budget, tasks, states, keys)


@functools.partial(jax.jit, static_argnums=(0, 4), compiler_options=FAST_COMPILE)
def _ranked_traces(controller, params, tasks, archs: jax.Array, budget: int):
    """Per task, ``archs`` in the policy's order for that task, the first ``budget`` of them
    (cycling if ``budget`` exceeds the space: by then the best has been evaluated) and their
    table fitness: fitness float32[T, E], archs int32[T, E, D]."""

    def one(task):
        order = controller.rank(params, task, archs)
        picked = archs[order[jnp.arange(budget) % archs.shape[0]]]
        return table_fitness(task, picked, controller.space), picked

    return jax.vmap(one)(tasks)


def ranked_runs(controller, params, tasks, archs, budget: int, num_seeds: int):
    """``ranked:<name>``'s traces in ``method_runs``' layout: the deterministic order,
    repeated for every seed (fitness [T, S, E], archs [T, S, E, D], numpy)."""
    fitness, picked = (np.asarray(x) for x in _ranked_traces(
        controller, params, tasks, jnp.asarray(archs, jnp.int32), budget))
    return (np.repeat(fitness[:, None], num_seeds, axis=1),
            np.repeat(picked[:, None], num_seeds, axis=1))


def evals_to_target(fitness: np.ndarray, best: np.ndarray, tolerance: float) -> np.ndarray:
    """1-based index of the first evaluation whose best-so-far fitness is within
    ``tolerance`` of ``best`` (broadcast over the leading axes); ``E + 1`` if none is.
    ``fitness`` [..., E]."""
    fitness = np.asarray(fitness, np.float64)
    so_far = np.maximum.accumulate(np.where(np.isfinite(fitness), fitness, -np.inf), axis=-1)
    hit = so_far >= np.asarray(best, np.float64)[..., None] - tolerance
    return np.where(hit.any(-1), np.argmax(hit, axis=-1) + 1, fitness.shape[-1] + 1)


def regret_curves(fitness: np.ndarray, best: np.ndarray) -> np.ndarray:
    """``best - max(fitness[..., :e+1])`` for every e (inf before any finite fitness)."""
    fitness = np.asarray(fitness, np.float64)
    so_far = np.maximum.accumulate(np.where(np.isfinite(fitness), fitness, -np.inf), axis=-1)
    return np.asarray(best, np.float64)[..., None] - so_far


def _policy_state(strategy: ReinforceController, params, context) -> ReinforceState:
    """A fresh REINFORCE state whose policy is ``params``' and trainable context ``context``."""
    policy = {k: v for k, v in params.items()
              if k in ("start", "embed", "w_x", "w_h", "b", "head_w", "head_b")}
    params = dict(policy, context=jnp.asarray(context, jnp.float32))
    return ReinforceState(params=params, opt_state=strategy.optimizer.init(params),
                          baseline=jnp.array(0.0, jnp.float32),
                          best=Best.empty(strategy.space.num_decisions))


@functools.partial(jax.jit, static_argnums=(0, 1, 5), compiler_options=FAST_COMPILE)
def _meta_states(controller, strategy, params, tasks, key, num_seeds: int):
    """Zero-shot and fine-tuning start states [T, S] from the meta-trained ``params``. The
    contexts follow ``ConditionedController.finetune``: the task's embedding, except that in
    learned mode an unseen task fine-tunes from a fresh row (from ``fold_in(key, 1_000_003 +
    task_id)``; the zero-shot sampler keeps the mean row)."""
    contexts = jax.vmap(lambda t: controller.embed(params, t))(tasks)
    tuned = contexts
    if controller.mode == "learned":
        known = (tasks.task_id >= 0) & (tasks.task_id < controller.num_tasks)
        fresh = jax.vmap(lambda t: jax.random.uniform(
            jax.random.fold_in(key, 1_000_003 + t), (controller.embed_size,), jnp.float32,
            -controller.init_scale, controller.init_scale))(tasks.task_id)
        tuned = jnp.where(known[:, None], contexts, fresh)

    def states(ctx):
        one = jax.vmap(lambda c: _policy_state(strategy, params, c))(ctx)
        return jax.tree.map(lambda x: jnp.broadcast_to(
            x[:, None], (x.shape[0], num_seeds) + x.shape[1:]), one)

    return states(contexts), states(tuned)


@functools.partial(jax.jit, static_argnums=(0, 1), compiler_options=FAST_COMPILE)
def _scratch_states(controller, strategy, tasks, keys: jax.Array):
    """From-scratch start states [T, S]: the same controller freshly initialised from
    ``keys[t, s]``, its context the fresh embedding of task t (what ``finetune`` would start
    from with untrained params)."""

    def one(task, key):
        fresh = controller.init_params(key)
        return _policy_state(strategy, fresh, controller.embed(fresh, task))

    return jax.vmap(lambda t, ks: jax.vmap(lambda k: one(t, k))(ks))(tasks, keys)


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def _init_states(strategy, keys: jax.Array):
    return jax.vmap(jax.vmap(strategy.init))(keys)


def method_runs(key: jax.Array, controllers: dict, family: TaskPool, config) -> dict:
    """Every method's fitness traces on the family's meta-test tasks.

    Args:
      key: the root key; task t, seed s uses ``fold_in(fold_in(key, task_id), s)`` (split
        into init and search keys), the same for every method.
      controllers: name -> (ConditionedController, meta-trained params).
      family: the task family (its meta-test tasks carry fitness tables).
      config: a validated meta-test config (``num_seeds``, ``budget``, ``finetune``,
        ``evolution``, ``fast_compile``).

    Returns:
      method name -> (fitness float[T, S, E], archs int32[T, S, E, D]) (numpy), in run
      order: ``zero_shot:<name>``, ``ranked:<name>`` and ``finetune:<name>`` per controller
      (``ranked`` only where the space can be enumerated), then ``scratch``
      (the first controller's class and settings), ``regularized_evolution``,
      ``random_search``.
    """
    tasks = family.stacked("test")
    ids = jnp.asarray(family.ids("test"))
    s, budget, fast = config.num_seeds, config.budget, config.fast_compile
    seed_keys = jax.vmap(lambda t: jax.vmap(lambda i: jax.random.fold_in(
        jax.random.fold_in(key, t), i))(jnp.arange(s)))(ids)
    pairs = jax.vmap(jax.vmap(jax.random.split))(seed_keys)
    init_keys, search_keys = pairs[:, :, 0], pairs[:, :, 1]
    overrides = dict(batch_size=config.finetune.batch_size,
                     learning_rate=config.finetune.learning_rate)
    runs = {}

    def search(name, strategy, states):
        fitness, archs = run_searches(strategy, budget, tasks, states, search_keys,
                                      fast_compile=fast)
        runs[name] = (np.asarray(fitness), np.asarray(archs))

    def strategies(controller, params):
        # The library's fine-tuning strategy; its start params travel in the state instead.
        ft = controller.finetune(params, family.task(int(ids[0])), key, **overrides)
        ft = dataclasses.replace(ft, start=_NO_START)
        zs = ZeroShotPolicy(**{f.name: getattr(ft, f.name) for f in dataclasses.fields(ft)})
        return zs, ft

    try:
        space_archs = family.space.enumerate()
    except ValueError:  # too large to enumerate: no exact ranking
        space_archs = None
    first = None
    for name, (controller, params) in controllers.items():
        zs, ft = strategies(controller, params)
        first = first or (controller, ft)
        zero, tuned = _meta_states(controller, zs, params, tasks, key, s)
        search(f"zero_shot:{name}", zs, zero)
        if space_archs is not None:
            runs[f"ranked:{name}"] = ranked_runs(controller, params, tasks, space_archs,
                                                 budget, s)
        search(f"finetune:{name}", ft, tuned)
    controller, ft = first
    search("scratch", ft, _scratch_states(controller, ft, tasks, init_keys))
    evolution = RegularizedEvolution(space=family.space, batch_size=1,
                                     population_size=config.evolution.population_size,
                                     sample_size=config.evolution.sample_size)
    random_search = RandomSearch(space=family.space, batch_size=1)
    for name, strategy in (("regularized_evolution", evolution),
                           ("random_search", random_search)):
        search(name, strategy, _init_states(strategy, init_keys))
    return runs


# ---------------------------------------------------------------------- summarising
def summarise(runs: dict, family: TaskPool, controllers: dict, config) -> dict:
    """Per method and task: seed-mean regret curve and evaluations to within tolerance (per
    seed, their median and mean); medians over tasks; the zero-shot greedy proposal's
    fitness vs the median fitness of the space per task; factors scratch / meta-trained."""
    tables = np.asarray(family.stacked("test").fitness, np.float64)
    finite = np.where(np.isfinite(tables), tables, np.nan)
    best, median = np.nanmax(finite, axis=1), np.nanmedian(finite, axis=1)
    methods = {}
    for name, (fitness, _) in runs.items():
        regret = regret_curves(fitness, best[:, None])  # [T, S, E]
        evals = evals_to_target(fitness, best[:, None], config.tolerance)  # [T, S]
        per_task_median = np.median(evals, axis=1)
        curve = regret.mean(axis=1)  # [T, E]
        methods[name] = {
            "regret_mean": curve.tolist(),
            "median_regret_curve": np.median(curve, axis=0).tolist(),
            "evals_to_target": evals.tolist(),
            "evals_median_per_task": per_task_median.tolist(),
            "evals_mean_per_task": evals.mean(axis=1).tolist(),
            "median_evals": float(np.median(per_task_median)),
            "reached_fraction": float(np.mean(evals <= config.budget)),
            "final_regret_mean": float(regret[..., -1].mean()),
        }
    greedy = {}
    for name, (controller, params) in controllers.items():
        zs = zero_shot_results(controller, params, family, config.fast_compile)
        got = best - np.asarray(zs["regret"], np.float64)
        beats = got > median
        greedy[name] = {"archs": zs["archs"], "fitness": got.tolist(),
                        "arch_strings": [family.space.to_string(a) for a in zs["archs"]],
                        "beats_median": beats.tolist(), "share_beats_median": float(beats.mean())}
    scratch = methods["scratch"]["median_evals"]
    factors = {name: scratch / m["median_evals"] for name, m in methods.items()
               if name.startswith(("zero_shot:", "ranked:", "finetune:"))}
    archs = family.space.enumerate()
    task_ids = family.ids("test").tolist()
    # The one architecture with the best mean fitness over the held-out tasks: the least
    # regret a proposer that ignores the task can reach, so the room left for conditioning.
    fixed_regret = best[:, None] - finite  # [T, A]
    fixed = int(np.nanargmin(np.nanmean(fixed_regret, axis=0)))
    best_fixed = {"arch": family.space.to_string(archs[fixed]),
                  "mean_regret": float(np.nanmean(fixed_regret[:, fixed])),
                  "max_regret": float(np.nanmax(fixed_regret[:, fixed])),
                  "tasks_where_best": int(np.sum(fixed_regret[:, fixed] <= 0.0))}
    settings = getattr(family, "settings", None)  # the generator settings of a data family
    return {"task_ids": task_ids, "task_best": best.tolist(),
            "task_best_arch": [family.space.to_string(archs[int(np.nanargmax(row))])
                               for row in finite],
            "task_settings": (None if settings is None else
                              [_drawn(settings[i], family) for i in task_ids]),
            "task_median": median.tolist(), "num_seeds": config.num_seeds,
            "budget": config.budget, "tolerance": config.tolerance,
            "not_reached_counts_as": config.budget + 1, "methods": methods,
            "zero_shot_greedy": greedy, "factor_scratch_over": factors,
            "best_fixed_arch": best_fixed}


def _drawn(settings: dict, family) -> dict:
    """A task's generator settings that vary across the family (its drawn ones)."""
    drawn = getattr(family, "ranges", None) or settings
    return {k: v for k, v in settings.items() if k in drawn}


def markdown_table(summary: dict) -> str:
    """The table: method x {median evals to within tolerance, share of seeds that got there,
    mean final regret, zero-shot greedy beats the median, factor scratch / method}."""
    tol, budget = summary["tolerance"], summary["budget"]
    lines = [f"{len(summary['task_ids'])} held-out tasks x {summary['num_seeds']} seeds x "
             f"{budget} evaluations. Evals to within {tol:g}: per seed, the first evaluation "
             f"whose best-so-far fitness is within {tol:g} of the task's best ({budget + 1} "
             "if never); median over seeds, then median over tasks. Regret: task's best "
             "minus best found, mean over seeds and tasks after the last evaluation. Greedy > "
             "median: share of tasks where the controller's greedy zero-shot architecture "
             "beats the median architecture of the space. Factor: scratch's median evals / "
             "the method's.", "",
             f"| method | median evals to within {tol:g} | seeds reached | final regret | "
             "greedy > median | factor scratch / method |",
             "|---|---|---|---|---|---|"]
    for name, m in summary["methods"].items():
        owner = name.split(":", 1)[1] if ":" in name else None
        greedy = summary["zero_shot_greedy"].get(owner) if name.startswith("zero_shot:") else None
        share = f"{greedy['share_beats_median']:.0%}" if greedy else "-"
        factor = summary["factor_scratch_over"].get(name)
        lines.append(f"| {name} | {m['median_evals']:g} | {m['reached_fraction']:.0%} | "
                     f"{m['final_regret_mean']:.4f} | {share} | "
                     f"{'-' if factor is None else f'{factor:.1f}x'} |")
    return "\n".join(lines + ["", per_task_table(summary)]) + "\n"


def per_task_table(summary: dict) -> str:
    """Per held-out task: its drawn generator settings (data families), its best architecture
    and each controller's zero-shot greedy proposal with that proposal's regret."""
    owners = list(summary["zero_shot_greedy"])
    settings = summary.get("task_settings")
    head = ["task", *(["settings"] if settings else []), "best architecture (fitness)",
            *(f"zero-shot {o} (regret)" for o in owners)]
    lines = ["Per held-out task: the best architecture of its table, and each controller's "
             "greedy zero-shot proposal with its regret (0: it is the best).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t, task in enumerate(summary["task_ids"]):
        row = [str(task)]
        if settings:
            row.append(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in sorted(settings[t].items())))
        row.append(f"`{summary['task_best_arch'][t]}` ({summary['task_best'][t]:.3f})")
        for o in owners:
            g = summary["zero_shot_greedy"][o]
            regret = summary["task_best"][t] - g["fitness"][t]
            row.append(f"`{g['arch_strings'][t]}` ({regret:.3f})")
        lines.append("| " + " | ".join(row) + " |")
    fixed = summary["best_fixed_arch"]
    lines += ["", f"One architecture for every held-out task, the best on average: "
              f"`{fixed['arch']}`, mean regret {fixed['mean_regret']:.4f} (max "
              f"{fixed['max_regret']:.4f}; the best of {fixed['tasks_where_best']} of "
              f"{len(summary['task_ids'])} tasks). A proposer that ignores the task can do no "
              "better zero-shot; this is the room task conditioning has."]
    return "\n".join(lines)


# ---------------------------------------------------------------------- the command
def _with_defaults(saved: dict, defaults: dict) -> dict:
    """``saved`` (a run's recorded family config) with the fields it lacks taken from
    ``defaults``: a run recorded before a field existed ran with that field's default."""
    out = dict(saved)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _with_defaults(out[k], v)
    return out


def load_meta_trained(config) -> tuple[dict, TaskPool, dict]:
    """The controllers named in ``config.controllers`` and the family their meta_train
    config describes (all must agree on it). Returns controllers, family, family config."""
    controllers, family_cfg, family_owner, family_workdir = {}, None, None, None
    for name, path in config.controllers.items():
        workdir = os.path.abspath(os.path.expanduser(path))
        cfg_path = os.path.join(workdir, CONFIG_FILE)
        if not os.path.isfile(cfg_path):
            raise ConfigError(f"config.controllers.{name}={path!r}: no {CONFIG_FILE} there; "
                              "run experiments/meta_train.py with this --workdir first")
        with open(cfg_path, encoding="utf-8") as f:
            fam = _with_defaults(json.load(f)["family"], meta_train_config().family.to_dict())
        if family_cfg is not None and fam != family_cfg:
            raise ConfigError(f"config.controllers.{name}: meta-trained on another family than "
                              f"config.controllers.{family_owner} ({fam} vs {family_cfg})")
        family_cfg, family_owner, family_workdir = fam, name, workdir
        try:
            controllers[name] = load_controller(os.path.join(workdir, "controller"))
        except FileNotFoundError as e:
            raise ConfigError(f"config.controllers.{name}={path!r}: {e}") from None
    # Table-backed families reuse the tables their meta-training built (never rebuilt here).
    family = build_family(ml_collections.ConfigDict(family_cfg), family_workdir,
                          build_tables=False)
    for name, (controller, _) in controllers.items():
        if controller.space != family.space:
            raise ConfigError(f"config.controllers.{name}: the controller's space does not "
                              "match its family's (config.json and controller/ disagree)")
    return controllers, family, family_cfg


def write_outputs(workdir: str, summary: dict) -> str:
    """``meta_test.json``, ``meta_test.md`` and ``regret.png`` (median over tasks of the
    seed-mean regret, one line per method); returns the markdown."""
    text = markdown_table(summary)
    atomic_write(os.path.join(workdir, "meta_test.md"), lambda f: f.write(text))
    body = json.dumps(to_python(summary), indent=1)
    atomic_write(os.path.join(workdir, "meta_test.json"), lambda f: f.write(body + "\n"))
    x = np.arange(1, summary["budget"] + 1)
    plot_curves(os.path.join(workdir, "regret.png"),
                {n: (x, m["median_regret_curve"], None) for n, m in summary["methods"].items()},
                xlabel="architectures evaluated",
                ylabel="regret (median over tasks of the seed mean)",
                title=f"{len(summary['task_ids'])} held-out tasks, "
                      f"{summary['num_seeds']} seeds each", logx=True,
                styles=curve_styles(summary["methods"]))
    return text


_KIND_LINESTYLE = {"zero_shot": "--", "ranked": "-", "finetune": ":"}
_BASELINE_STYLE = {"scratch": dict(color="black", linestyle="-."),
                   "regularized_evolution": dict(color="dimgray", linestyle="-"),
                   "random_search": dict(color="darkgray", linestyle="--")}


def curve_styles(methods) -> dict:
    """Line styles for the regret plot: one colour per controller, the line style by kind
    (zero-shot dashed, ranked solid, fine-tuned dotted); the baselines in greys."""
    owners = list(dict.fromkeys(n.split(":", 1)[1] for n in methods if ":" in n))
    styles = {}
    for name in methods:
        if ":" in name:
            kind, owner = name.split(":", 1)
            styles[name] = dict(color=f"C{owners.index(owner) % 10}",
                                linestyle=_KIND_LINESTYLE.get(kind, "-"), linewidth=1.6)
        else:
            styles[name] = _BASELINE_STYLE.get(name, {})
    return styles


def run_meta_test(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run the protocol on the held-out tasks of the controllers' family; write the outputs
    into ``workdir`` and return the summary."""
    validate_meta_test(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    atomic_write(os.path.join(workdir, CONFIG_FILE),
                 lambda f: f.write(json.dumps(to_python(config), indent=2, sort_keys=True)))
    controllers, family, family_cfg = load_meta_trained(config)
    print(f"meta-test: {', '.join(controllers)} on {len(family.ids('test'))} held-out tasks "
          f"of {family_cfg.get('name')}, {config.num_seeds} seeds x {config.budget} evals",
          file=sys.stderr, flush=True)
    runs = method_runs(jax.random.key(config.seed), controllers, family, config)
    summary = summarise(runs, family, controllers, config)
    summary["family"] = family_cfg
    summary["controllers"] = {k: os.path.abspath(v) for k, v in config.controllers.items()}
    print(write_outputs(workdir, summary), flush=True)
    return summary
