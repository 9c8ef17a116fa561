"""Ask/tell strategies over an explicit state pytree (the evosax/optax shape).

``state = strategy.init(key)``; ``archs, state = strategy.ask(key, state)``;
``state, metrics = strategy.tell(state, archs, fitness)``. Strategies are frozen (hashable)
dataclasses, their state a ``flax.struct`` dataclass, and all three calls are jittable, so a
whole search against a jittable evaluator can run in ``lax.scan`` and seeds under ``vmap``.
Fitness is maximised; a non-finite fitness counts as the worst possible (``-inf``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from nas_jax.spaces.base import SearchSpace


@struct.dataclass
class Best:
    """The best architecture told so far and how many evaluations were told."""

    arch: jax.Array  # int32[D]
    fitness: jax.Array  # float32[]
    num_told: jax.Array  # int32[]

    @classmethod
    def empty(cls, num_decisions: int) -> Best:
        return cls(
            arch=jnp.zeros((num_decisions,), jnp.int32),
            fitness=jnp.array(-jnp.inf, jnp.float32),
            num_told=jnp.array(0, jnp.int32),
        )

    def update(self, archs: jax.Array, fitness: jax.Array) -> Best:
        i = jnp.argmax(fitness)
        better = fitness[i] > self.fitness
        return Best(
            arch=jnp.where(better, archs[i], self.arch),
            fitness=jnp.where(better, fitness[i], self.fitness),
            num_told=self.num_told + archs.shape[0],
        )


def clean_fitness(fitness: jax.Array) -> jax.Array:
    """Non-finite fitness (a diverged candidate) becomes ``-inf``, the worst value."""
    fitness = jnp.asarray(fitness, jnp.float32)
    return jnp.where(jnp.isfinite(fitness), fitness, -jnp.inf)


def tell_metrics(best: Best, fitness: jax.Array) -> dict[str, jax.Array]:
    finite = jnp.isfinite(fitness)
    mean = jnp.sum(jnp.where(finite, fitness, 0.0)) / jnp.maximum(jnp.sum(finite), 1)
    return {"best_fitness": best.fitness, "batch_mean_fitness": mean,
            "batch_max_fitness": jnp.max(fitness), "num_evaluated": best.num_told}


@dataclasses.dataclass(frozen=True)
class Strategy:
    """Base: a space and how many architectures one ``ask`` proposes."""

    space: SearchSpace
    batch_size: int = 1

    def init(self, key: jax.Array):
        raise NotImplementedError

    def ask(self, key: jax.Array, state):
        raise NotImplementedError

    def tell(self, state, archs: jax.Array, fitness: jax.Array):
        raise NotImplementedError

    @staticmethod
    def best(state) -> Best:
        return state.best


def scan_search(strategy: Strategy, fitness_fn, key: jax.Array, num_rounds: int):
    """A whole search in one ``lax.scan`` against a jittable ``fitness_fn(archs) -> float[P]``
    (a table lookup, a proxy): ``num_rounds`` ask/evaluate/tell rounds. Jit it with the
    strategy, fitness function and ``num_rounds`` static; ``vmap`` it over keys for many seeds.

    Returns:
      The final state and the per-round ``tell`` metrics, stacked (``[num_rounds]`` each).
    """
    k_init, k_loop = jax.random.split(key)

    def body(state, k):
        archs, state = strategy.ask(k, state)
        return strategy.tell(state, archs, fitness_fn(archs))

    return jax.lax.scan(body, strategy.init(k_init), jax.random.split(k_loop, num_rounds))
