"""A generational genetic algorithm in the classic form (DEAP's ``eaSimple`` with ``varAnd``).

Each ``ask`` proposes a whole generation of ``population_size`` architectures; the matching
``tell`` makes it the parent generation of the next ``ask``. Offspring come from tournament
selection, two-point crossover of consecutive pairs and per-gene mutation, on either the
binary genome (``SearchSpace.to_bits``) or the integer vector itself.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from nas_jax.strategies.base import Best, Strategy, clean_fitness, tell_metrics

ENCODINGS = ("binary", "integer")


@struct.dataclass
class GeneticState:
    population: jax.Array  # int32[P, D]: the last generation told
    fitness: jax.Array  # float32[P]: its fitness (non-finite -> -inf)
    generation: jax.Array  # int32[]: generations told so far (0: the next ask is random)
    best: Best


def two_point(key: jax.Array, a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two-point crossover of pairs of genomes ``[N, L]``: both complementary children.

    The same operator as ``SearchSpace.crossover`` (the child takes ``b`` between two cut
    points), vectorised over pairs and applied to any genome length.
    """
    n, length = a.shape
    cuts = jnp.sort(jax.random.randint(key, (n, 2), 0, length + 1), axis=1)
    idx = jnp.arange(length)[None, :]
    inside = (idx >= cuts[:, :1]) & (idx < cuts[:, 1:])
    return jnp.where(inside, b, a), jnp.where(inside, a, b)


@dataclasses.dataclass(frozen=True)
class GeneticAlgorithm(Strategy):
    """Generational GA: tournament selection, two-point crossover, per-gene mutation, elitism.

    Attributes:
      population_size: P, the size of every generation; ``batch_size`` must equal it (left at
        the base class's default of 1, it is set to P).
      tournament_size: contestants per selection, drawn with replacement (DEAP: ``tournsize``).
      crossover_rate: probability that a consecutive pair is crossed (DEAP: ``cxpb``).
      mutation_rate: probability that an individual is mutated (DEAP: ``mutpb``).
      gene_mutation_rate: per-gene probability of a mutated individual (DEAP: ``indpb``):
        a bit flip (``binary``) or a uniform redraw of the decision (``integer``).
      encoding: ``'binary'`` (crossover and mutation on the bit string) or ``'integer'``.
      elitism: the best ``elitism`` members of the last generation are copied unchanged.
    """

    population_size: int = 100
    tournament_size: int = 3
    crossover_rate: float = 0.5
    mutation_rate: float = 0.2
    gene_mutation_rate: float = 0.05
    encoding: str = "binary"
    elitism: int = 0

    def __post_init__(self):
        name = type(self).__name__
        if self.population_size < 1:
            raise ValueError(f"{name}.population_size={self.population_size}: must be >= 1")
        if self.batch_size == 1 and self.population_size != 1:
            object.__setattr__(self, "batch_size", self.population_size)
        if self.batch_size != self.population_size:
            raise ValueError(f"{name}.batch_size={self.batch_size}: must equal population_size "
                             f"({self.population_size}); one ask is one generation")
        if self.tournament_size < 1:
            raise ValueError(f"{name}.tournament_size={self.tournament_size}: must be >= 1")
        for field in ("crossover_rate", "mutation_rate", "gene_mutation_rate"):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}.{field}={value}: must be in [0, 1]")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"{name}.encoding={self.encoding!r}: allowed: {', '.join(ENCODINGS)}")
        if not 0 <= self.elitism <= self.population_size:
            raise ValueError(f"{name}.elitism={self.elitism}: must be in [0, population_size]")

    # ------------------------------------------------------------- genomes
    def _encode(self, archs: jax.Array) -> jax.Array:
        if self.encoding == "binary":
            return jax.vmap(self.space.to_bits)(archs)
        return archs

    def _decode(self, genomes: jax.Array) -> jax.Array:
        if self.encoding == "binary":
            return jax.vmap(self.space.from_bits)(genomes)
        return genomes.astype(jnp.int32)

    def _mutate(self, key: jax.Array, genomes: jax.Array) -> jax.Array:
        """Each individual with ``mutation_rate``; then each gene with ``gene_mutation_rate``."""
        k_ind, k_gene, k_val = jax.random.split(key, 3)
        chosen = jax.random.uniform(k_ind, (genomes.shape[0], 1)) < self.mutation_rate
        genes = chosen & (jax.random.uniform(k_gene, genomes.shape) < self.gene_mutation_rate)
        if self.encoding == "binary":
            new = 1 - genomes
        else:
            n = self.space._choices()
            u = jax.random.uniform(k_val, genomes.shape)
            new = jnp.minimum((u * n).astype(jnp.int32), n - 1)
        return jnp.where(genes, new, genomes).astype(genomes.dtype)

    # ------------------------------------------------------------- ask/tell
    def init(self, key: jax.Array) -> GeneticState:
        del key
        p, d = self.population_size, self.space.num_decisions
        return GeneticState(
            population=jnp.zeros((p, d), jnp.int32),
            fitness=jnp.full((p,), -jnp.inf, jnp.float32),
            generation=jnp.array(0, jnp.int32),
            best=Best.empty(d),
        )

    def _offspring(self, key: jax.Array, state: GeneticState) -> jax.Array:
        p, k = self.population_size, self.elitism
        k_sel, k_cx, k_cxp, k_mut = jax.random.split(key, 4)
        # Tournament selection with replacement: P winners of `tournament_size` contestants.
        idx = jax.random.randint(k_sel, (p, self.tournament_size), 0, p)
        winners = idx[jnp.arange(p), jnp.argmax(state.fitness[idx], axis=1)]
        genomes = self._encode(state.population[winners])
        # Crossover of consecutive pairs (0, 1), (2, 3), ...; an odd last one passes through.
        half = p // 2
        a, b = genomes[0 : 2 * half : 2], genomes[1 : 2 * half : 2]
        ca, cb = two_point(k_cx, a, b)
        cross = jax.random.uniform(k_cxp, (half, 1)) < self.crossover_rate
        ca, cb = jnp.where(cross, ca, a), jnp.where(cross, cb, b)
        paired = jnp.stack([ca, cb], axis=1).reshape(2 * half, -1)
        genomes = jnp.concatenate([paired, genomes[2 * half :]], axis=0)
        genomes = self._mutate(k_mut, genomes)
        children = self._decode(genomes)
        if k == 0:
            return children
        elites = state.population[jax.lax.top_k(state.fitness, k)[1]]
        return jnp.concatenate([elites, children[: p - k]], axis=0)

    def ask(self, key: jax.Array, state: GeneticState):
        k_rand, k_child = jax.random.split(key)
        randoms = self.space.sample_population(k_rand, self.population_size)
        children = self._offspring(k_child, state)
        return jnp.where(state.generation > 0, children, randoms), state

    def tell(self, state: GeneticState, archs: jax.Array, fitness: jax.Array):
        """Make the told archs the parent generation; a short final batch is padded as -inf."""
        fitness = clean_fitness(fitness)
        archs = archs.astype(jnp.int32)
        best = state.best.update(archs, fitness)
        n = archs.shape[0]
        if n > self.population_size:
            raise ValueError(f"tell got {n} architectures; population_size is "
                             f"{self.population_size}")
        population = state.population.at[:n].set(archs)
        fit = jnp.full((self.population_size,), -jnp.inf, jnp.float32).at[:n].set(fitness)
        new = GeneticState(population=population, fitness=fit,
                           generation=state.generation + 1, best=best)
        return new, tell_metrics(best, fitness)
