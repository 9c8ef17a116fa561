"""Parts chosen by name from the config: a new space or strategy is one file plus one line here.

Each builder takes the config section (an ``ml_collections.ConfigDict``) and what it needs
from other parts, and returns the part. Tests loop over these registries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry:
    """Name -> builder, with errors that list what is known."""

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, builder: Callable[..., Any]) -> None:
        if name in self._builders:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._builders[name] = builder

    def names(self) -> tuple[str, ...]:
        return tuple(self._builders)

    def check(self, name: str, field: str) -> None:
        if name not in self._builders:
            raise ValueError(
                f"{field}={name!r}: unknown {self.kind}; allowed: {', '.join(self.names())}"
            )

    def build(self, name: str, *args, **kwargs):
        self.check(name, f"{self.kind}.name")
        return self._builders[name](*args, **kwargs)


SPACES = Registry("space")
STRATEGIES = Registry("strategy")
EVALUATORS = Registry("evaluator")


def _nb201(cfg, input_shape=(32, 32, 3), num_classes=10):
    from nas_jax.spaces.nb201 import OPS, NB201Space

    return NB201Space(channels=cfg.channels, cells_per_stage=cfg.cells_per_stage,
                      input_shape=tuple(input_shape), num_classes=num_classes,
                      ops=tuple(cfg.get("ops", OPS)))


def _darts(cfg, input_shape=(32, 32, 3), num_classes=10):
    from nas_jax.spaces.darts import PRIMITIVES, DartsSpace

    return DartsSpace(channels=cfg.channels, num_cells=cfg.num_cells,
                      stem_multiplier=cfg.stem_multiplier, input_shape=tuple(input_shape),
                      num_classes=num_classes,
                      primitives=tuple(cfg.get("darts_ops", PRIMITIVES)))


def _macro_cnn(cfg, input_shape=(32, 32, 3), num_classes=10):
    from nas_jax.spaces.macro import MacroCNNSpace

    return MacroCNNSpace(num_layers=cfg.num_layers, filters=tuple(cfg.filters),
                         kernel_sizes=tuple(cfg.kernel_sizes), strides=tuple(cfg.strides),
                         activations=tuple(cfg.activations), ndim=len(input_shape) - 1,
                         input_shape=tuple(input_shape), num_classes=num_classes)


def _mlp(cfg, input_shape=(28, 28, 1), num_classes=10):
    from nas_jax.spaces.macro import MLPSpace

    return MLPSpace(max_layers=cfg.max_layers, units=tuple(cfg.units),
                    activations=tuple(cfg.activations), input_shape=tuple(input_shape),
                    num_classes=num_classes)


def _random_search(cfg, space):
    from nas_jax.strategies.evolution import RandomSearch

    return RandomSearch(space=space, batch_size=cfg.batch_size)


def _regularized_evolution(cfg, space):
    from nas_jax.strategies.evolution import RegularizedEvolution

    return RegularizedEvolution(space=space, batch_size=cfg.batch_size,
                                population_size=cfg.population_size,
                                sample_size=cfg.sample_size)


def _genetic_algorithm(cfg, space):
    from nas_jax.strategies.genetic import GeneticAlgorithm

    # One ask is one generation: the batch is the population.
    return GeneticAlgorithm(space=space, batch_size=cfg.population_size,
                            population_size=cfg.population_size,
                            tournament_size=cfg.tournament_size,
                            crossover_rate=cfg.crossover_rate, mutation_rate=cfg.mutation_rate,
                            gene_mutation_rate=cfg.gene_mutation_rate, encoding=cfg.encoding,
                            elitism=cfg.elitism)


def _reinforce(cfg, space):
    from nas_jax.strategies.reinforce import ReinforceController

    return ReinforceController(space=space, batch_size=cfg.batch_size,
                               hidden_size=cfg.hidden_size, temperature=cfg.temperature,
                               tanh_constant=cfg.tanh_constant,
                               entropy_weight=cfg.entropy_weight,
                               learning_rate=cfg.learning_rate,
                               baseline_decay=cfg.baseline_decay)


def _population(cfg, space, dataset):
    from nas_jax.evaluators.population import PopulationEvaluator
    from nas_jax.train.steps import recipe_from_config

    return PopulationEvaluator(
        space=space,
        train=(dataset.train.x, dataset.train.y),
        valid=(dataset.valid.x, dataset.valid.y),
        recipe=recipe_from_config(cfg),
        execution=cfg.execution,
    )


def _oneshot(cfg, space, dataset):
    import dataclasses

    from nas_jax.evaluators.oneshot import OneShotEvaluator
    from nas_jax.train.steps import recipe_from_config

    return OneShotEvaluator(
        space=space,
        train=(dataset.train.x, dataset.train.y),
        valid=(dataset.valid.x, dataset.valid.y),
        recipe=dataclasses.replace(recipe_from_config(cfg), steps=cfg.supernet_steps),
        bn_recalibration_batches=cfg.bn_recalibration_batches,
        train_execution=cfg.get("supernet_execution", "auto"),
    )


def _zero_cost(proxy):
    def build(cfg, space, dataset):
        from nas_jax.evaluators.zero_cost import ZeroCostEvaluator

        return ZeroCostEvaluator(space=space, train=(dataset.train.x, dataset.train.y),
                                 proxy=proxy, batch_size=cfg.proxy_batch_size,
                                 execution=cfg.execution)

    return build


def _table(cfg, space, dataset):
    from nas_jax.evaluators.table import TableEvaluator

    del dataset  # the table holds every architecture's results
    return TableEvaluator.from_path(cfg.table_path, space=space, allow_partial=cfg.allow_partial)


SPACES.register("nb201", _nb201)
SPACES.register("darts", _darts)
SPACES.register("macro_cnn", _macro_cnn)
SPACES.register("mlp", _mlp)
STRATEGIES.register("random_search", _random_search)
STRATEGIES.register("regularized_evolution", _regularized_evolution)
STRATEGIES.register("genetic_algorithm", _genetic_algorithm)
STRATEGIES.register("reinforce", _reinforce)
EVALUATORS.register("population", _population)
EVALUATORS.register("table", _table)
EVALUATORS.register("oneshot", _oneshot)
EVALUATORS.register("naswot", _zero_cost("naswot"))
EVALUATORS.register("synflow", _zero_cost("synflow"))
