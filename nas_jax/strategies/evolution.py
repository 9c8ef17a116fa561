"""Random search and regularized (aging) evolution (Real et al., AAAI 2019)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from nas_jax.strategies.base import Best, Strategy, clean_fitness, tell_metrics


@struct.dataclass
class RandomSearchState:
    best: Best


@dataclasses.dataclass(frozen=True)
class RandomSearch(Strategy):
    """Uniform samples from the space; keeps the best."""

    def init(self, key: jax.Array) -> RandomSearchState:
        del key
        return RandomSearchState(best=Best.empty(self.space.num_decisions))

    def ask(self, key: jax.Array, state: RandomSearchState):
        return self.space.sample_population(key, self.batch_size), state

    def tell(self, state: RandomSearchState, archs: jax.Array, fitness: jax.Array):
        fitness = clean_fitness(fitness)
        best = state.best.update(archs, fitness)
        return RandomSearchState(best=best), tell_metrics(best, fitness)


@struct.dataclass
class EvolutionState:
    population: jax.Array  # int32[P, D]
    fitness: jax.Array  # float32[P]
    birth: jax.Array  # int32[P]: order of arrival; the smallest is the oldest
    size: jax.Array  # int32[]: filled slots (< P during warm-up)
    best: Best


@dataclasses.dataclass(frozen=True)
class RegularizedEvolution(Strategy):
    """Aging evolution: tournament of ``sample_size``, mutate the winner, remove the oldest.

    The first ``population_size`` architectures are uniform samples (warm-up). Each ``ask``
    proposes ``batch_size`` children, each from its own tournament over the current population,
    so a batch can be evaluated in parallel (``batch_size=1`` is the paper's sequential form).
    """

    population_size: int = 100
    sample_size: int = 25

    def init(self, key: jax.Array) -> EvolutionState:
        del key
        p, d = self.population_size, self.space.num_decisions
        return EvolutionState(
            population=jnp.zeros((p, d), jnp.int32),
            fitness=jnp.full((p,), -jnp.inf, jnp.float32),
            birth=jnp.zeros((p,), jnp.int32),
            size=jnp.array(0, jnp.int32),
            best=Best.empty(d),
        )

    def _child(self, key: jax.Array, state: EvolutionState) -> jax.Array:
        k_sample, k_mutate = jax.random.split(key)
        # Tournament over the filled slots, with replacement (as in the paper's sampling).
        idx = jax.random.randint(k_sample, (self.sample_size,), 0, jnp.maximum(state.size, 1))
        parent = state.population[idx[jnp.argmax(state.fitness[idx])]]
        return self.space.mutate(k_mutate, parent)

    def ask(self, key: jax.Array, state: EvolutionState):
        k_rand, k_child = jax.random.split(key)
        randoms = self.space.sample_population(k_rand, self.batch_size)
        children = jax.vmap(self._child, in_axes=(0, None))(
            jax.random.split(k_child, self.batch_size), state
        )
        # Slot i of the batch is random while the population (with earlier slots) is not full.
        warm = state.size + jnp.arange(self.batch_size) < self.population_size
        return jnp.where(warm[:, None], randoms, children), state

    def tell(self, state: EvolutionState, archs: jax.Array, fitness: jax.Array):
        fitness = clean_fitness(fitness)
        first_birth = state.best.num_told

        def insert(s, item):
            pop, fit, birth, size = s
            arch, f, i = item
            slot = jnp.where(size < self.population_size, size, jnp.argmin(birth))
            return (pop.at[slot].set(arch), fit.at[slot].set(f),
                    birth.at[slot].set(first_birth + i),
                    jnp.minimum(size + 1, self.population_size)), None

        (pop, fit, birth, size), _ = jax.lax.scan(
            insert,
            (state.population, state.fitness, state.birth, state.size),
            (archs.astype(jnp.int32), fitness, jnp.arange(archs.shape[0], dtype=jnp.int32)),
        )
        best = state.best.update(archs, fitness)
        new = EvolutionState(population=pop, fitness=fit, birth=birth, size=size, best=best)
        return new, tell_metrics(best, fitness)
