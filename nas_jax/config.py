"""The search config's schema (every field with its default) and its start-up validation.

Configs in ``configs/`` start from ``search_config()`` and override fields. ``validate``
runs before any data is loaded or anything is compiled and raises ``ConfigError`` with one
line that names the field and what is allowed.
"""

from __future__ import annotations

import math

import jax
import ml_collections

from nas_jax import registry
from nas_jax.data.datasets import KNOWN_DATASETS
from nas_jax.evaluators.oneshot import TRAIN_EXECUTIONS as SUPERNET_EXECUTIONS
from nas_jax.evaluators.population import (
    EXECUTIONS,
    has_network,
    network_space_names,
    supports_composed,
    supports_switch,
)
from nas_jax.evaluators.zero_cost import EXECUTIONS as ZERO_COST_EXECUTIONS
from nas_jax.evaluators.zero_cost import has_relu_sites, naswot_space_names
from nas_jax.spaces.darts import PRIMITIVES as DARTS_PRIMITIVES
from nas_jax.spaces.nb201 import OPS as NB201_OPS
from nas_jax.strategies.genetic import ENCODINGS
from nas_jax.train.steps import OPTIMIZERS
from nas_jax.utils.sharding import mesh_shape

NETWORK_EVALUATORS = ("population", "oneshot", "naswot", "synflow")  # need a space's network
# Evaluators with their own execution choices (oneshot always scores in one vmapped call).
EVALUATOR_EXECUTIONS = {"oneshot": ("auto", "vmap"), "naswot": ZERO_COST_EXECUTIONS,
                        "synflow": ZERO_COST_EXECUTIONS}


class ConfigError(ValueError):
    """A config mistake, reported as ``config.<field>=<value>: <what is allowed>``."""


def _recipe(**overrides) -> ml_collections.ConfigDict:
    base = dict(steps=100, batch_size=64, optimizer="sgd", learning_rate=0.05,
                min_learning_rate=0.0, momentum=0.9, weight_decay=5e-4, grad_clip=5.0,
                eval_batch_size=512)
    base.update(overrides)
    return ml_collections.ConfigDict(base)


def search_config() -> ml_collections.ConfigDict:
    """The full schema of a search run, with defaults."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = ml_collections.ConfigDict(
        dict(name="digits", valid_fraction=0.2, data_dir=""))
    c.space = ml_collections.ConfigDict(dict(
        name="nb201",
        channels=8, cells_per_stage=1,  # nb201 (and channels: darts)
        # nb201: the operations every edge chooses from (a subset, in this order)
        ops=NB201_OPS,
        num_cells=8, stem_multiplier=3,  # darts
        # darts: the ops every edge chooses from (distinct names of spaces.darts.OPS, in
        # order), e.g. RobustDARTS' S2 ("skip_connect", "sep_conv_3x3")
        darts_ops=DARTS_PRIMITIVES,
        num_layers=4, filters=(8, 16, 32, 64), kernel_sizes=(3, 5, 7), strides=(1, 2),
        activations=("relu", "gelu", "tanh", "swish"),  # macro_cnn (activations: mlp too)
        max_layers=3, units=(32, 64, 128, 256),  # mlp
    ))
    c.strategy = ml_collections.ConfigDict(dict(
        name="regularized_evolution", population_size=10, sample_size=3, batch_size=5,
        # genetic_algorithm (DEAP eaSimple's settings; one ask = one generation)
        tournament_size=3, crossover_rate=0.5, mutation_rate=0.2, gene_mutation_rate=0.05,
        encoding="binary", elitism=0,
        # reinforce (ENAS defaults)
        hidden_size=64, temperature=5.0, tanh_constant=2.5, entropy_weight=1e-4,
        learning_rate=3.5e-4, baseline_decay=0.99,
        # reinforce: start from the controller meta-trained in this experiments/meta_train.py
        # workdir ("": a fresh controller); it keeps its own policy settings, the ones above
        # except batch_size and learning_rate are not used (nas_jax/meta/transfer.py)
        init_from="",
    ))
    c.evaluator = _recipe(name="population", execution="auto",
                          supernet_steps=500, bn_recalibration_batches=4,  # oneshot
                          # oneshot: how the supernet trains (auto: composed on CPU for nb201)
                          supernet_execution="auto",
                          proxy_batch_size=64,  # naswot minibatch
                          table_path="", allow_partial=False)  # table (a .npz benchmark)
    c.budget = ml_collections.ConfigDict(dict(num_evaluations=40))
    c.retrain = _recipe(steps=500, learning_rate=0.1)
    # Hand-designed architectures retrained beside the search's best with the same recipe and
    # key, as "SPACE:ARCH" in that space's string format (its settings from config.space),
    # e.g. ("mlp:mlp(256,relu|128,relu)", "macro_cnn:conv(32,k5,s1,relu)|...").
    c.baselines = ()
    c.checkpoint = ml_collections.ConfigDict(dict(
        every_rounds=1, max_to_keep=2,
        supernet_every_steps=100))  # oneshot: the supernet's training is checkpointed in chunks
    c.runtime = ml_collections.ConfigDict(
        dict(compilation_cache_dir="~/.cache/nas_jax/xla", progress_interval_s=10.0,
             threefry_partitionable=False,
             mesh_candidates=-1, mesh_data=1))  # device mesh: -1 = all devices (data takes 1)
    return c


def _check_supernet_execution(config, space) -> None:
    value = config.evaluator.supernet_execution
    if value not in SUPERNET_EXECUTIONS:
        raise ConfigError(f"config.evaluator.supernet_execution={value!r}: allowed: "
                          f"{', '.join(SUPERNET_EXECUTIONS)}")
    if value == "composed" and not supports_composed(space):
        raise ConfigError(f"config.evaluator.supernet_execution='composed': the "
                          f"{config.space.name} network has no composed form (nb201 and "
                          "darts only); use auto or jit")


def _type_name(value) -> str:
    return type(value).__name__


def check_schema(config, schema, prefix: str) -> None:
    """Unknown (mistyped) fields and wrong types, against the schema's defaults."""
    for key in config.keys():
        field = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(
                f"config.{field}: unknown field; allowed here: {', '.join(sorted(schema.keys()))}"
            )
        value, default = config[key], schema[key]
        if isinstance(default, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f"config.{field}: must be a section of fields, got {value!r}")
            check_schema(value, default, f"{field}.")
            continue
        ok = isinstance(value, type(default)) and not (
            isinstance(value, bool) and not isinstance(default, bool))
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ConfigError(
                f"config.{field}={value!r}: must be {_type_name(default)} "
                f"(got {_type_name(value)})"
            )


def _positive(config, field: str, *, allow_zero: bool = False) -> None:
    section, name = field.rsplit(".", 1)
    value = config[section][name]
    low_ok = value >= 0 if allow_zero else value > 0
    if not low_ok or (isinstance(value, float) and not math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config.{field}={value!r}: must be {bound}")


def check_choice(config, field: str, allowed) -> None:
    """ConfigError naming ``config.<field>`` (a dotted path) unless its value is allowed."""
    value = config
    for part in field.split("."):
        value = value[part]
    if value not in allowed:
        raise ConfigError(f"config.{field}={value!r}; allowed: {', '.join(allowed)}")


def _check_recipe(config, section: str, *, allow_zero_steps: bool = False) -> None:
    _positive(config, f"{section}.steps", allow_zero=allow_zero_steps)
    for name in ("batch_size", "eval_batch_size", "learning_rate"):
        _positive(config, f"{section}.{name}")
    for name in ("min_learning_rate", "momentum", "weight_decay", "grad_clip"):
        _positive(config, f"{section}.{name}", allow_zero=True)
    opt = config[section].optimizer
    if opt not in OPTIMIZERS:
        raise ConfigError(
            f"config.{section}.optimizer={opt!r}: allowed: {', '.join(OPTIMIZERS)}")


def check_strategy(config) -> None:
    s = config.strategy
    for name in ("crossover_rate", "mutation_rate", "gene_mutation_rate"):
        if not 0.0 <= s[name] <= 1.0:
            raise ConfigError(f"config.strategy.{name}={s[name]!r}: must be in [0, 1]")
    if s.encoding not in ENCODINGS:
        raise ConfigError(f"config.strategy.encoding={s.encoding!r}: allowed: "
                          f"{', '.join(ENCODINGS)}")
    if not 0 <= s.elitism <= s.population_size:
        raise ConfigError(f"config.strategy.elitism={s.elitism}: must be in 0.."
                          f"strategy.population_size ({s.population_size})")
    for name in ("tournament_size", "hidden_size", "temperature", "learning_rate"):
        _positive(config, f"strategy.{name}")
    _positive(config, "strategy.entropy_weight", allow_zero=True)
    if not 0.0 <= s.baseline_decay < 1.0:
        raise ConfigError(f"config.strategy.baseline_decay={s.baseline_decay!r}: must be in "
                          "[0, 1)")
    if s.name == "genetic_algorithm" and s.population_size > config.budget.num_evaluations:
        raise ConfigError(f"config.strategy.population_size={s.population_size}: a generation "
                          f"must fit in budget.num_evaluations ({config.budget.num_evaluations})")


def _check_mesh(runtime) -> None:
    """The mesh must use every device (of every process): candidates x data = device count."""
    try:
        mesh_shape(runtime.mesh_candidates, runtime.mesh_data, jax.device_count())
    except ValueError as e:
        raise ConfigError(f"config.runtime.mesh_candidates={runtime.mesh_candidates}, "
                          f"config.runtime.mesh_data={runtime.mesh_data}: {e}") from None


def validate(config: ml_collections.ConfigDict):
    """Check ``config``; return the search space it describes. Raises ``ConfigError``."""
    check_schema(config, search_config(), "")
    for reg, section in ((registry.SPACES, "space"), (registry.STRATEGIES, "strategy"),
                         (registry.EVALUATORS, "evaluator")):
        try:
            reg.check(config[section].name, f"config.{section}.name")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if config.dataset.name not in KNOWN_DATASETS:
        raise ConfigError(f"config.dataset.name={config.dataset.name!r}: unknown dataset; "
                          f"allowed: {', '.join(KNOWN_DATASETS)}")
    vf = config.dataset.valid_fraction
    if not 0.0 < vf < 1.0:
        raise ConfigError(f"config.dataset.valid_fraction={vf!r}: must be in (0, 1)")
    for field in ("space.channels", "space.cells_per_stage", "strategy.population_size",
                  "strategy.sample_size", "strategy.batch_size", "budget.num_evaluations",
                  "checkpoint.every_rounds", "checkpoint.max_to_keep",
                  "checkpoint.supernet_every_steps"):
        _positive(config, field)
    _positive(config, "runtime.progress_interval_s", allow_zero=True)
    _check_mesh(config.runtime)
    s = config.strategy
    if s.sample_size > s.population_size:
        raise ConfigError(f"config.strategy.sample_size={s.sample_size}: must be <= "
                          f"strategy.population_size ({s.population_size})")
    check_strategy(config)
    if s.init_from and s.name != "reinforce":
        raise ConfigError(f"config.strategy.init_from={s.init_from!r}: only the reinforce "
                          f"strategy starts from a meta-trained controller, not "
                          f"config.strategy.name={s.name!r}")
    space = build_space(config.space.name, config.space)
    if s.population_size > space.size:
        raise ConfigError(f"config.strategy.population_size={s.population_size}: larger than "
                          f"the space ({space.size} architectures)")
    if s.batch_size > config.budget.num_evaluations:
        raise ConfigError(f"config.strategy.batch_size={s.batch_size}: must be <= "
                          f"budget.num_evaluations ({config.budget.num_evaluations})")
    evaluator = config.evaluator.name
    if evaluator in NETWORK_EVALUATORS and not has_network(space):
        raise ConfigError(f"config.space.name={config.space.name!r}: the {evaluator} evaluator "
                          f"has networks for: {', '.join(network_space_names())}")
    if evaluator == "naswot" and not has_relu_sites(space):
        raise ConfigError(f"config.space.name={config.space.name!r}: the naswot evaluator knows "
                          f"the ReLUs of: {', '.join(naswot_space_names())}")
    _positive(config, "evaluator.supernet_steps")
    _positive(config, "evaluator.bn_recalibration_batches", allow_zero=True)
    _positive(config, "evaluator.proxy_batch_size")
    if evaluator == "oneshot":
        _check_supernet_execution(config, space)
    own = EVALUATOR_EXECUTIONS.get(evaluator)
    if own is not None and config.evaluator.execution not in own:
        raise ConfigError(f"config.evaluator.execution={config.evaluator.execution!r}: the "
                          f"{evaluator} evaluator allows: {', '.join(own)}")
    if evaluator == "table":
        from nas_jax.evaluators.table import table_config_problem

        problem = table_config_problem(config.evaluator.table_path, space)
        if problem:
            raise ConfigError(f"config.evaluator.table_path={config.evaluator.table_path!r}: "
                              f"{problem}")
    if config.evaluator.execution == "switch" and not supports_switch(space):
        raise ConfigError(f"config.evaluator.execution='switch': the {config.space.name} "
                          "network has no switch mode; use loop, compiled or vmap")
    if config.evaluator.execution == "composed" and not supports_composed(space):
        raise ConfigError(f"config.evaluator.execution='composed': the {config.space.name} "
                          "network has no composed form (nb201 and darts only); use loop, "
                          "compiled or vmap")
    if config.evaluator.execution not in EXECUTIONS:
        raise ConfigError(f"config.evaluator.execution={config.evaluator.execution!r}: "
                          f"allowed: {', '.join(EXECUTIONS)}")
    _check_recipe(config, "evaluator")
    _check_recipe(config, "retrain", allow_zero_steps=True)
    parse_baselines(config)
    return space


def build_space(name: str, space_config, **kwargs):
    """``registry.SPACES.build`` with a space's own refusal (e.g. NB201's ``ops``) raised as
    a ConfigError on ``config.space``."""
    try:
        return registry.SPACES.build(name, space_config, **kwargs)
    except ValueError as e:
        raise ConfigError(f"config.space (space {name!r}): {e}") from None


def parse_baselines(config) -> list[tuple[str, object, object]]:
    """``config.baselines`` as ``[(space name, space, arch)]``; the spaces are built from
    ``config.space`` with default shapes (the runner rebuilds them for the dataset)."""
    out = []
    for i, entry in enumerate(config.baselines):
        field = f"config.baselines[{i}]={entry!r}"
        if not isinstance(entry, str) or ":" not in entry:
            raise ConfigError(f"{field}: must be 'SPACE:ARCH', e.g. 'mlp:mlp(128,relu)'")
        name, text = (part.strip() for part in entry.split(":", 1))
        try:
            registry.SPACES.check(name, "space")
        except ValueError as e:
            raise ConfigError(f"{field}: {e}") from None
        space = build_space(name, config.space)
        if not has_network(space):
            raise ConfigError(f"{field}: space {name!r} has no standalone network")
        if config.retrain.steps == 0:
            raise ConfigError(f"{field}: baselines are trained with the retrain recipe; set "
                              "config.retrain.steps > 0")
        try:
            arch = space.validate(space.from_string(text))
        except (ValueError, KeyError, IndexError) as e:
            raise ConfigError(f"{field}: not a {name} architecture: {e}") from None
        out.append((name, space, arch))
    return out
