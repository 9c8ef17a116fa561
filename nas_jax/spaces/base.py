"""The search-space contract: an architecture is an integer vector ``int32[D]``.

A ``SearchSpace`` is a frozen, hashable dataclass, so it can be a static argument of
``jax.jit``. Sampling, mutation and crossover are jittable; string forms, canonical
forms and cost models are host-side.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Base class. Subclasses set ``num_choices`` and implement the string forms."""

    num_choices: tuple[int, ...]

    # ----------------------------------------------------------------- sizes
    @property
    def num_decisions(self) -> int:
        return len(self.num_choices)

    @property
    def max_choices(self) -> int:
        return max(self.num_choices)

    @property
    def size(self) -> int:
        """Number of distinct integer vectors (before removing isomorphic duplicates)."""
        return math.prod(self.num_choices)

    @property
    def bits_per_decision(self) -> tuple[int, ...]:
        return tuple(max(1, math.ceil(math.log2(n))) for n in self.num_choices)

    @property
    def num_bits(self) -> int:
        return sum(self.bits_per_decision)

    def _choices(self) -> jax.Array:
        return jnp.asarray(self.num_choices, jnp.int32)

    # ------------------------------------------------------- jittable operators
    def sample(self, key: jax.Array) -> jax.Array:
        """A uniformly random architecture, ``int32[D]``."""
        u = jax.random.uniform(key, (self.num_decisions,))
        return jnp.minimum((u * self._choices()).astype(jnp.int32), self._choices() - 1)

    def sample_population(self, key: jax.Array, size: int) -> jax.Array:
        """``size`` independent uniform samples, ``int32[size, D]``."""
        return jax.vmap(self.sample)(jax.random.split(key, size))

    def mutate(self, key: jax.Array, arch: jax.Array) -> jax.Array:
        """Change one decision (among those with more than one choice) to a different value."""
        k_pos, k_val = jax.random.split(key)
        n = self._choices()
        mutable = n > 1
        pos = jax.random.choice(k_pos, self.num_decisions, p=mutable / jnp.sum(mutable))
        # Draw from the n-1 other values: offset in [1, n-1], added modulo n.
        offset = 1 + jnp.floor(jax.random.uniform(k_val) * (n[pos] - 1)).astype(jnp.int32)
        new = (arch[pos] + offset) % n[pos]
        return arch.at[pos].set(new.astype(arch.dtype))

    def crossover(self, key: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
        """Two-point crossover: the child takes ``b`` between two random cut points."""
        cuts = jnp.sort(jax.random.randint(key, (2,), 0, self.num_decisions + 1))
        idx = jnp.arange(self.num_decisions)
        return jnp.where((idx >= cuts[0]) & (idx < cuts[1]), b, a)

    def one_hot(self, arch: jax.Array) -> jax.Array:
        """``float32[D, max_choices]``; invalid (padded) choices are zero."""
        return jax.nn.one_hot(arch, self.max_choices, dtype=jnp.float32)

    def choice_mask(self) -> jax.Array:
        """``bool[D, max_choices]``: True where a choice exists for that decision."""
        return jnp.arange(self.max_choices)[None, :] < self._choices()[:, None]

    def is_valid(self, arch: jax.Array) -> jax.Array:
        return jnp.all((arch >= 0) & (arch < self._choices()))

    # ------------------------------------------------------ binary genomes
    def to_bits(self, arch: jax.Array) -> jax.Array:
        """Binary-string genome (``int32[num_bits]``, most significant bit first per gene)."""
        parts = []
        for d, nb in enumerate(self.bits_per_decision):
            shifts = jnp.arange(nb - 1, -1, -1)
            parts.append((arch[d] >> shifts) & 1)
        return jnp.concatenate(parts).astype(jnp.int32)

    def from_bits(self, bits: jax.Array) -> jax.Array:
        """Decode a binary genome; out-of-range codes wrap modulo the number of choices."""
        out, start = [], 0
        for d, nb in enumerate(self.bits_per_decision):
            weights = 2 ** jnp.arange(nb - 1, -1, -1)
            value = jnp.sum(bits[start : start + nb] * weights)
            out.append(value % self.num_choices[d])
            start += nb
        return jnp.stack(out).astype(jnp.int32)

    # ------------------------------------------------------------- host side
    def validate(self, arch) -> np.ndarray:
        """Host-side check; returns ``np.int32[D]`` or raises ``ValueError`` naming the problem."""
        arr = np.asarray(arch)
        if arr.shape != (self.num_decisions,):
            raise ValueError(
                f"architecture has shape {arr.shape}; {type(self).__name__} expects "
                f"({self.num_decisions},)"
            )
        pairs = enumerate(zip(arr, self.num_choices))
        bad = [(i, int(v), n) for i, (v, n) in pairs if not 0 <= v < n]
        if bad:
            i, v, n = bad[0]
            raise ValueError(f"decision {i} has value {v}; allowed 0..{n - 1}")
        return arr.astype(np.int32)

    def canonical(self, arch) -> np.ndarray:
        """Representative of the architecture's equivalence class (identity by default)."""
        return self.validate(arch)

    def canonical_key(self, arch) -> tuple[int, ...]:
        return tuple(int(v) for v in self.canonical(arch))

    def enumerate(self, limit: int = 1_000_000) -> np.ndarray:
        """All architectures, ``int32[size, D]``, for spaces smaller than ``limit``."""
        if self.size > limit:
            raise ValueError(f"space has {self.size} architectures, more than limit={limit}")
        return np.array(list(itertools.product(*map(range, self.num_choices))), np.int32)

    def to_string(self, arch) -> str:
        return ",".join(str(int(v)) for v in self.validate(arch))

    def from_string(self, text: str) -> np.ndarray:
        return self.validate([int(v) for v in text.split(",")])

    def num_params(self, arch) -> int:
        raise NotImplementedError(f"{type(self).__name__} has no parameter-count model")

    def flops(self, arch) -> int:
        raise NotImplementedError(f"{type(self).__name__} has no FLOPs model")
