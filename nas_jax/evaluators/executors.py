"""How a population is trained on one device, besides the vmapped mixture: host loops.

Each executor maps ``(keys, archs, weights, train_xy, valid_xy)`` to the stacked results
of ``nas_jax.train.steps.summarize`` (one row per candidate, candidate ``i`` from
``keys[i]``). They drive jitted single-candidate programs from Python with asynchronous
dispatch (``HostLoopTrainer``), so nothing waits on the host per step:

- ``LoopExecutor``: the supernet with one-hot weights, one compiled step for every
  architecture. ``select="mixture"`` computes every operation (weighted by 0/1);
  ``select="switch"`` runs only the chosen one per edge under a switch (networks that
  support it; ``ops.remat_switch``), with ``conv_impl="taps"`` convolutions because XLA's
  own kernel-gradient convolution inside a branch is slow on XLA:CPU (``ops.conv2d``).
- ``CompiledExecutor``: one standalone program per distinct architecture, cached by its
  canonical form, so only the chosen operations cost time and isomorphic cells share a
  program; the weights are cut out of one supernet init (one compiled init for all).
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nas_jax.train.steps import HostLoopTrainer, Recipe


def stack_rows(rows: list[dict]) -> dict:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *rows)


def extract_subtree(full: nnx.State, template: nnx.State) -> nnx.State:
    """A standalone network's weights cut out of its supernet's: the entries of ``full`` at
    ``template``'s paths (both share one module-tree layout), cropped to the template's
    shapes where the supernet holds a larger shape (macro spaces: leading channels, centred
    kernel windows)."""
    from nas_jax.supernet.macro import extract_standalone

    return extract_standalone(full, template)


class LoopExecutor:
    """Candidates one after another through one compiled supernet step (one-hot weights).

    Args:
      space: the search space.
      recipe: the training recipe.
      options: network construction options (e.g. ``select="switch"``, ``conv_impl``).
    """

    def __init__(self, space, recipe: Recipe, **options):
        from nas_jax.evaluators.population import init_candidate, network_graphdef

        self.space, self.recipe, self.options = space, recipe, options
        self.init = jax.jit(functools.partial(init_candidate, space, None, **options))
        self.trainer = HostLoopTrainer(network_graphdef(space, None, **options), recipe)

    def __call__(self, keys, archs, weights, train_xy, valid_xy) -> dict:
        del archs
        return stack_rows([self.trainer(*self.init(keys[i], weights[i]), weights[i], train_xy,
                                        valid_xy) for i in range(len(keys))])


class CompiledExecutor:
    """One standalone program per canonical architecture, cached (least recently used out).

    Candidate ``i`` is trained as its canonical representative ``c``, starting from the
    weights ``c``'s operations get in the supernet initialised from ``keys[i]`` for ``c``
    (one compiled init serves every architecture), so an architecture's result equals the
    supernet loop's result for ``c`` up to float rounding.

    Args:
      space: the search space (``canonical_key`` groups isomorphic architectures).
      recipe: the training recipe.
      max_programs: how many compiled standalone programs to keep.
      options: network construction options (e.g. ``conv_impl``).
    """

    def __init__(self, space, recipe: Recipe, max_programs: int = 512, **options):
        from nas_jax.evaluators.population import init_candidate

        self.space, self.recipe, self.options = space, recipe, options
        self.max_programs = max_programs
        self._init = jax.jit(functools.partial(init_candidate, space, None, **options))
        self._programs: collections.OrderedDict = collections.OrderedDict()
        self.compiles = 0

    def program(self, canonical: tuple[int, ...]):
        """``(trainer, params_template, stats_template)`` for one canonical architecture."""
        from nas_jax.evaluators.population import build_network

        if canonical in self._programs:
            self._programs.move_to_end(canonical)
            return self._programs[canonical]
        abstract = nnx.eval_shape(
            lambda: build_network(self.space, canonical, rngs=nnx.Rngs(0), **self.options))
        graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
        entry = (HostLoopTrainer(graphdef, self.recipe), params, stats)
        self._programs[canonical] = entry
        self.compiles += 1
        if len(self._programs) > self.max_programs:
            self._programs.popitem(last=False)
        return entry

    def __call__(self, keys, archs, weights, train_xy, valid_xy) -> dict:
        del weights  # recomputed for the canonical representatives
        rows = []
        for i, arch in enumerate(np.asarray(archs)):
            canonical = self.space.canonical_key(arch)
            trainer, params_t, stats_t = self.program(canonical)
            one_hot = self.space.one_hot(jnp.asarray(canonical, jnp.int32))
            params, stats, k_data = self._init(keys[i], one_hot)
            rows.append(trainer(extract_subtree(params, params_t),
                                extract_subtree(stats, stats_t), k_data, None, train_xy,
                                valid_xy))
        return stack_rows(rows)
