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
- ``ComposedExecutor``: each candidate's network run as a graph of small programs (one per
  kind of unit: stem, edge operation, reduction, head, node sum) composed from Python
  (``supernet.composed``): only the chosen operations run, each outside any branch, and
  no architecture costs a compile (NB201 and DARTS).
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nas_jax import ops
from nas_jax.train.steps import HostLoopTrainer, Recipe


def stack_rows(rows: list[dict]) -> dict:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *rows)


def init_op_by_op(space) -> bool:
    """Whether a supernet init runs op by op rather than compiled (``supernet_init``): for
    the DARTS supernet, whose init XLA:CPU compiles for minutes."""
    from nas_jax.spaces.darts import DartsSpace

    return isinstance(space, DartsSpace)


def supernet_init(space, **options):
    """``init(key, weights) -> (params, stats, data_key)``: a candidate's supernet init
    (``population.init_candidate``) for the host loops, compiled, or run op by op for the
    DARTS supernet: its init has thousands of outputs (1,781 parameters at C=8, 5 cells),
    and XLA:CPU took 164 s to compile it (``xla_backend_optimization_level=0``: 155 s),
    while op by op it takes 4 s the first time (each op kind and shape compiles once) and
    ~1-1.4 s per candidate after: the better trade up to ~100 candidates (docs/benchmarks.md).
    The values are the compiled init's up to float rounding (a few differ in the last bit),
    the same for every call.

    The NB201 supernet's init is compiled as grouped draws (``supernet.grouped_init``: one
    per kind and shape of kernel), with the same values bit for bit: at C=16, N=5 its first
    call took 7.4 s against 24.2 s as one draw per kernel, and 23-26 ms per call after
    either way (2 cores, 2026-12-01)."""
    from nas_jax.evaluators.population import build_network, init_candidate
    from nas_jax.spaces.nb201 import NB201Space
    from nas_jax.supernet.grouped_init import GroupedInit

    if isinstance(space, NB201Space):
        try:
            return GroupedInit(lambda rngs: build_network(space, None, rngs=rngs, **options))
        except ops.DirectKeyError:
            pass  # a network that takes keys around ops.draw (e.g. flax's layers): per kernel
    init = functools.partial(init_candidate, space, None, **options)
    return init if init_op_by_op(space) else jax.jit(init)


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
        from nas_jax.evaluators.population import network_graphdef

        self.space, self.recipe, self.options = space, recipe, options
        self.init = supernet_init(space, **options)
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

        self.space, self.recipe, self.options = space, recipe, options
        self.max_programs = max_programs
        self._init = supernet_init(space, **options)
        self._programs: collections.OrderedDict = collections.OrderedDict()
        self.compiles = 0

    def program(self, canonical: tuple[int, ...]):
        """``(trainer, params_template, stats_template)`` for one canonical architecture."""
        from nas_jax.evaluators.population import build_network

        if canonical in self._programs:
            self._programs.move_to_end(canonical)
            return self._programs[canonical]
        abstract = nnx.eval_shape(
            lambda: build_network(self.space, canonical, rngs=ops.ParamKeys(0), **self.options))
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


def composed_options(space) -> dict:
    """The supernet options of the composed execution (the same weights as the other
    executions' supernet).

    Each unit is a top-level program, so XLA's convolutions keep their speed there; their
    kernel gradients are faster in batch chunks, and as one matmul for 1x1 kernels
    (``ops.conv2d``, ``"mixed"``). NB201: random-path steps of the C=16, N=5 network,
    alternated in one process: 0.57 / 0.62 s with XLA's kernel gradients, 0.44 / 0.51 s with
    these. DARTS (whose full convolutions are the stem and 1x1s): a ``sep_conv_3x3`` unit's
    forward + pullback at 64x32x32x16 28.3 -> 23.4 ms, 64x16x16x32 13.4 -> 10.0 ms.
    """
    from nas_jax.spaces.darts import DartsSpace
    from nas_jax.spaces.nb201 import NB201Space

    return {"conv_impl": "mixed"} if isinstance(space, NB201Space | DartsSpace) else {}


class ComposedExecutor:
    """Candidates one after another, each step composed from per-unit programs (NB201 and
    DARTS).

    The weights are the supernet's (``init`` is the supernet init of ``LoopExecutor``), cut
    to the modules the candidate's plan uses; ``trainer(params, stats, data_key, weights,
    train_xy, valid_xy)`` takes the candidate's one-hot ``weights`` (it reads the arg-max
    per edge) and returns the same row as the other executors' trainers. The results equal
    the supernet loop's up to float rounding (tested).

    Args:
      space: the NB201 search space.
      recipe: the training recipe.
      tx: the weight optimizer (default: the recipe's), e.g. a search's.
      emitters: how the unit programs compile (``supernet.composed.unit_compiler_options``).
    """

    def __init__(self, space, recipe: Recipe, tx: optax.GradientTransformation | None = None,
                 emitters: str = "older"):
        from nas_jax.evaluators.population import build_network
        from nas_jax.supernet.composed import ComposedGraph

        self.space, self.recipe = space, recipe
        self.options = composed_options(space)
        self.network = nnx.eval_shape(lambda: build_network(space, None, rngs=ops.ParamKeys(0),
                                                            **self.options))
        self.graph = ComposedGraph(self.network, emitters)
        self.init = supernet_init(space, **self.options)
        self.trainer = ComposedTrainer(self.graph, self.network, recipe, tx)

    def __call__(self, keys, archs, weights, train_xy, valid_xy) -> dict:
        del archs
        return stack_rows([self.trainer(*self.init(keys[i], weights[i]), weights[i], train_xy,
                                        valid_xy) for i in range(len(keys))])


class ComposedTrainer:
    """``HostLoopTrainer``'s training and scoring, with each step composed from per-unit
    programs (``supernet.composed.ComposedGraph``) for the architecture the one-hot
    ``weights`` select. ``tx``: the weight optimizer (default: the recipe's)."""

    def __init__(self, graph, network, recipe: Recipe,
                 tx: optax.GradientTransformation | None = None):
        from nas_jax.supernet.composed import unit_paths
        from nas_jax.train.steps import (
            batch_scores,
            cross_entropy,
            draw_batch,
            mean_scores,
            padded_batches,
            with_training_scores,
        )

        self.graph, self.network, self.recipe = graph, network, recipe
        self.paths = unit_paths(network)
        self._zeros = None
        tx = recipe.make_optimizer() if tx is None else tx

        def update(params, opt_state, grads):
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        def summary(losses, params, loss_sums, corrects, n):
            scores = mean_scores(jnp.sum(jnp.stack(loss_sums)), jnp.sum(jnp.stack(corrects)), n)
            return with_training_scores(scores, losses, params)

        self._init_opt = jax.jit(tx.init)
        self._update = jax.jit(update, donate_argnums=(0, 1))
        self._draw = jax.jit(draw_batch, static_argnums=4)
        self._loss = jax.jit(jax.value_and_grad(cross_entropy))  # (loss, d loss / d logits)
        self._batches = jax.jit(padded_batches, static_argnums=1)
        self._batch_scores = jax.jit(batch_scores)
        self._summary = jax.jit(summary, static_argnums=4)

    def plan(self, weights) -> list:
        """The plan of the architecture that one-hot ``weights`` select."""
        return self.plan_arch(np.argmax(np.asarray(weights), axis=-1))

    def plan_arch(self, arch) -> list:
        from nas_jax.supernet.composed import plan_for

        return plan_for(self.network, np.asarray(arch))

    def prepare(self, params, stats, opt_state=None) -> tuple[dict, dict, optax.OptState]:
        """A whole supernet's ``(params, stats)`` as the graph's weight dicts, with the
        optimizer state for them: ``opt_state`` (of the whole supernet's params, e.g. a
        jitted trainer's) converted, or a fresh one."""
        full = params
        params, stats = self.graph.split_weights(self.paths, params, stats)
        if self._zeros is None:  # zero gradients for the modules a plan leaves out
            self._zeros = jax.jit(lambda t: jax.tree.map(jnp.zeros_like, t))(params)
        if opt_state is None:
            return params, stats, self._init_opt(params)
        return params, stats, self._map_params_like(
            opt_state, full, lambda t: self.graph.to_units(self.paths, t))

    def restore(self, params: dict, stats: dict, opt_state, template_params,
                template_stats) -> tuple:
        """``prepare``'s inverse: whole-supernet ``(params, stats, opt_state)`` shaped like
        the templates (for checkpoints and the jitted trainers)."""
        def back(units, template):
            return self.graph.from_units(self.paths, units, template)

        return (back(params, template_params), back(stats, template_stats),
                self._map_params_like(opt_state, params,
                                      lambda t: back(t, template_params)))

    @staticmethod
    def _map_params_like(tree, params, fn):
        """``fn`` applied to every subtree of ``tree`` shaped like ``params`` (an optimizer
        state's momentum, moments, ...)."""
        structure = jax.tree.structure(params)

        def like(x):
            try:
                return jax.tree.structure(x) == structure
            except TypeError:
                return False

        return jax.tree.map(lambda x: fn(x) if like(x) else x, tree, is_leaf=like)

    def apply_gradients(self, params: dict, opt_state, grads: dict) -> tuple[dict, object]:
        """One optimizer update from a plan's gradients (zeros for the modules it leaves
        out, so every module's optimizer state advances as in the whole supernet's)."""
        grads = {k: grads[k] if k in grads else self._zeros[k] for k in params}
        return self._update(params, opt_state, grads)

    def step(self, plan, params: dict, stats: dict, opt_state, key, i, train_xy):
        """One training step of ``plan``'s weights: ``(params, stats, opt_state, loss)``."""
        x, y = self._draw(key, i, *train_xy, self.recipe.batch_size)
        logits, stats, tape = self.graph.forward(plan, params, stats, x, train=True)
        loss, g_logits = self._loss(logits, y)
        params, opt_state = self.apply_gradients(params, opt_state,
                                                 self.graph.backward(tape, g_logits))
        return params, stats, opt_state, loss

    def evaluate(self, plan, params: dict, stats: dict, xy) -> tuple[list, list]:
        """Per-batch ``(loss sums, correct counts)`` over ``xy`` in the batches of
        ``train.steps.evaluate`` (``recipe.eval_batch_size``, the last one padded)."""
        xs, ys, masks = self._batches(xy, self.recipe.eval_batch_size)
        sums = [self._batch_scores(self.graph.forward(plan, params, stats, xs[k], train=False),
                                   ys[k], masks[k]) for k in range(xs.shape[0])]
        return [s[0] for s in sums], [s[1] for s in sums]

    def __call__(self, params, stats, key: jax.Array, weights, train_xy,
                 valid_xy) -> dict[str, jax.Array]:
        plan = self.plan(weights)
        params, stats, opt_state = self.prepare(params, stats)
        losses = []
        for i in range(self.recipe.steps):
            params, stats, opt_state, loss = self.step(plan, params, stats, opt_state, key, i,
                                                       train_xy)
            losses.append(loss)
        loss_sums, corrects = self.evaluate(plan, params, stats, valid_xy)
        return self._summary(jnp.stack(losses), params, loss_sums, corrects,
                             valid_xy[0].shape[0])
