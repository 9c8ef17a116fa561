"""GDAS on the NAS-Bench-201 and DARTS supernets with each step composed from per-unit programs.

``ComposedGDAS(search).step`` computes GDAS with only the sampled op of each edge run,
scaled by its straight-through weight (AutoDL's GDAS; on NB201 what ``search.step``
computes on the switch supernet, ``network_options=(("select", "switch"),)``), but as
``supernet.composed`` runs a network: the host walks the sampled architecture's graph and
calls one small compiled program per unit, shared by every architecture. On XLA:CPU a
unit's convolutions run at the speed they have as top-level programs, which inside the
switch's branches they do not (docs/benchmarks.md). The DARTS space has no switch
supernet: there this is the only GDAS step that computes the sampled ops alone (the
mixture step computes every op of all 14 edges per cell and multiplies them by the
one-hot sample); it equals the mixture step given ``one_hot(arg max) * sample`` as weights
(tested), so the other ops' logits get gradients only through the softmax.

One step, as ``GradientSearch.step``:

1. architecture step on the valid batch: draw the Gumbel sample ``h`` (``k_arch``), run the
   sampled architecture with each edge's output scaled by ``h[e, arch[e]]``, and take the
   gradient of the valid loss with respect to those scales only (the units' VJPs with
   respect to their inputs, no weight gradients); ``alpha``'s gradient is the VJP of the
   straight-through sample, plus the beta regulariser's; Adam updates ``alpha``;
2. weight step on the train batch: a new sample (``k_weight``) from the updated ``alpha``,
   forward and backward through its architecture, the search's weight optimizer. The
   edges' outputs are not scaled here: the sample's weights are held fixed in this step
   and equal 1 up to the last bit (``hard - soft + soft``), and the scaled sums cost
   ~0.1 s per step of the C=16, N=5 network on 2 CPU cores. The switch supernet's step
   also marks its training loss NaN unless the weights' gradient is finite; this one
   does not compute that gradient, so its loss is the loss.

What differs from the switch supernet (NB201): the edges whose output cannot reach the
loss are not run, so the batch statistics of their convolution blocks are not updated
(their weights get zero gradients in both). Each step reads the two sampled architectures
back to the host (12 integers on NB201, 28 on DARTS): the walk needs them.

The state is a ``GradientState`` whose ``params``/``stats`` are the composed graph's weight
dicts: ``prepare`` converts a search's state, ``restore`` converts back (for checkpoints and
for the derived cell, which reads ``alpha`` only).
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nas_jax import ops
from nas_jax.evaluators.executors import ComposedTrainer, composed_options
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.strategies.collapse import beta_regularization
from nas_jax.strategies.gradient import GradientSearch, GradientState, gumbel_straight_through
from nas_jax.train.steps import Recipe, cross_entropy


def network_options(search: GradientSearch) -> dict:
    """The composed network's constructor options: the search supernet's module layout
    (DARTS: affine-free BN, BN after pooling), computed as the composed execution computes
    (``composed_options``). Options of the whole-supernet step only (NB201's ``select``,
    DARTS' ``edge_execution``) change no weight and are left out."""
    options = {k: v for k, v in search.options.items()
               if k not in ("select", "edge_execution", "conv_impl")}
    return {**options, **composed_options(search.space)}


class ComposedGDAS:
    """GDAS steps of ``search`` (``method="gdas"`` on an ``NB201Space`` or ``DartsSpace``)
    through the composed execution. ``prepare(state)``, then ``step(state, train_batch,
    valid_batch) -> (state, metrics)`` as ``search.step``, then ``restore(state, template)``.
    ``plan_cache``: how many sampled architectures' plans are kept (DARTS samples a new one
    almost every step). ``emitters``: how the unit programs compile
    (``supernet.composed.unit_compiler_options``)."""

    def __init__(self, search: GradientSearch, plan_cache: int = 4096, emitters: str = "older"):
        from nas_jax.evaluators.population import build_network
        from nas_jax.supernet.composed import ComposedGraph

        if search.method != "gdas":
            raise ValueError(f"ComposedGDAS needs GradientSearch(method='gdas'), got "
                             f"method={search.method!r}; DARTS mixes every op of every edge, "
                             "which the composed execution does not run")
        self.search = search
        self.network = nnx.eval_shape(lambda: build_network(
            search.space, None, rngs=ops.ParamKeys(0), **network_options(search)))
        self.graph = ComposedGraph(self.network, emitters)
        self.trainer = ComposedTrainer(self.graph, self.network, Recipe(),
                                       tx=search.weight_optimizer())
        arch_tx = search.arch_optimizer()
        self._plans: collections.OrderedDict = collections.OrderedDict()
        self._plan_cache = plan_cache

        def sample(key, alpha, step):
            """The straight-through sample, its architecture (the arg-max op per edge) and
            each edge's weight, flat (``edge_scales``)."""
            h = gumbel_straight_through(key, alpha, search.tau_at(step))
            arch = jnp.argmax(h, -1)
            return arch, jnp.take_along_axis(h, arch[..., None], -1).reshape(-1)

        def keys(key, step):
            return tuple(jax.random.split(jax.random.fold_in(key, step)))

        def arch_update(alpha, a_opt, key, step, d_scales):
            _, vjp = jax.vjp(lambda a: sample(key, a, step)[1], alpha)
            grad, = vjp(d_scales)
            if search.beta_weight > 0:
                ramp = jnp.clip(step / search.total_steps, 0.0, 1.0)
                grad = grad + search.beta_weight * ramp * jax.grad(beta_regularization)(alpha)
            updates, a_opt = arch_tx.update(grad, a_opt, alpha)
            return optax.apply_updates(alpha, updates), a_opt

        def loss_and_grad(logits, y):
            loss, g = jax.value_and_grad(cross_entropy)(logits, y)
            return loss, jnp.mean(jnp.argmax(logits, -1) == y), g

        def metrics(arch_loss, valid_acc, train_loss, train_acc, step):
            return {"arch_loss": arch_loss, "valid_accuracy": valid_acc,
                    "train_loss": train_loss, "train_accuracy": train_acc,
                    "learning_rate": search.learning_rate_at(step), "tau": search.tau_at(step)}

        self._sample = jax.jit(sample)
        self._keys = jax.jit(keys)
        self._arch_update = jax.jit(arch_update)
        self._loss_and_grad = jax.jit(loss_and_grad)
        self._metrics = jax.jit(metrics)

    # NB201 cells that together hold every unit and every scaled-sum arity of an NB201 cell
    # (node 3's seven subsets of its three edges, node 2's three, every op kind).
    NB201_WARM_UP = ((3, 2, 4, 3, 1, 3), (2, 3, 3, 4, 0, 0), (3, 0, 0, 0, 2, 0),
                     (0, 2, 0, 0, 0, 3), (4, 0, 0, 3, 2, 0), (3, 0, 2, 1, 0, 4),
                     (1, 3, 4, 0, 2, 3))

    def warm_up_archs(self) -> list[np.ndarray]:
        """Architectures whose steps compile every program a step can need: NB201's
        ``NB201_WARM_UP``; in the DARTS space, every op on every edge (one architecture per
        op: each op at each stride and width, sums of 2 to 5 edges), one edge per node (sums
        of one edge) and all ``none`` (zero nodes)."""
        if isinstance(self.search.space, NB201Space):
            return [np.asarray(a) for a in self.NB201_WARM_UP]
        from nas_jax.supernet.darts import NUM_EDGES, edge_index

        primitives = self.search.space.primitives
        none = primitives.index("none") if "none" in primitives else None
        ops = [i for i in range(len(primitives)) if i != none]
        archs = [np.full((2, NUM_EDGES), o) for o in ops]
        if none is not None:
            single = np.full((2, NUM_EDGES), none)
            for node in range(4):
                single[:, edge_index(node, node + 1)] = ops[0]
            archs += [single, np.full((2, NUM_EDGES), none)]
        return archs

    def warm_up(self, state: GradientState, train_batch, valid_batch) -> None:
        """Compile every program a step can need (the architecture step's and the weight
        step's passes for ``warm_up_archs``), leaving ``state`` as it is: the steps after it
        run at their steady speed (the benchmark's timed steps)."""
        scales = jnp.ones((int(np.prod(state.alpha.shape[:-1])),), state.alpha.dtype)
        for arch in self.warm_up_archs():
            plan = self._plan(arch)
            for batch, scaled in ((valid_batch, True), (train_batch, False)):
                logits, _, tape = self.graph.forward(
                    plan, state.params, state.stats, batch[0], train=True,
                    edge_scales=scales if scaled else None, weight_grads=not scaled)
                jax.block_until_ready(self.graph.backward(
                    tape, self._loss_and_grad(logits, batch[1])[2]))

    def _plan(self, arch) -> list:
        """The scaled plan of an architecture (the arg-max op per edge, read back to the
        host); the last ``plan_cache`` plans are kept."""
        from nas_jax.supernet.composed import darts_edge_plan, nb201_plan

        arch = np.asarray(jax.device_get(arch))
        key = tuple(int(a) for a in arch.reshape(-1))
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        if isinstance(self.search.space, NB201Space):
            plan = nb201_plan(self.network, arch, scaled=True)
        else:
            plan = darts_edge_plan(self.network, arch, scaled=True)
        self._plans[key] = plan
        if len(self._plans) > self._plan_cache:
            self._plans.popitem(last=False)
        return plan

    def prepare(self, state: GradientState) -> GradientState:
        """A search state (whole-supernet weights) as the composed graph's."""
        params, stats, w_opt = self.trainer.prepare(state.params, state.stats, state.w_opt)
        return state.replace(params=params, stats=stats, w_opt=w_opt)

    def restore(self, state: GradientState, template: GradientState) -> GradientState:
        """``prepare``'s inverse, shaped like ``template`` (a search state)."""
        params, stats, w_opt = self.trainer.restore(state.params, state.stats, state.w_opt,
                                                    template.params, template.stats)
        return state.replace(params=params, stats=stats, w_opt=w_opt)

    def arch_gradient(self, state: GradientState, valid_batch, key: jax.Array):
        """``(d valid loss / d scales, loss, accuracy, arch)`` for the sample drawn with
        ``key`` from ``state.alpha`` (the architecture step's backward pass)."""
        x, y = valid_batch
        arch, scales = self._sample(key, state.alpha, state.step)
        logits, _, tape = self.graph.forward(self._plan(arch), state.params, state.stats, x,
                                             train=True, edge_scales=scales,
                                             weight_grads=False)
        loss, accuracy, g_logits = self._loss_and_grad(logits, y)
        _, d_scales = self.graph.backward(tape, g_logits)
        return d_scales, loss, accuracy, arch

    def step(self, state: GradientState, train_batch, valid_batch):
        """One architecture step on ``valid_batch``, then one weight step on ``train_batch``:
        ``(state, metrics)`` as ``GradientSearch.step``."""
        k_arch, k_weight = self._keys(state.key, state.step)
        d_scales, arch_loss, valid_acc, _ = self.arch_gradient(state, valid_batch, k_arch)
        alpha, a_opt = self._arch_update(state.alpha, state.a_opt, k_arch, state.step,
                                         d_scales)

        x, y = train_batch
        arch, _ = self._sample(k_weight, alpha, state.step)
        logits, stats, tape = self.graph.forward(self._plan(arch), state.params, state.stats,
                                                 x, train=True)
        train_loss, train_acc, g_logits = self._loss_and_grad(logits, y)
        params, w_opt = self.trainer.apply_gradients(state.params, state.w_opt,
                                                     self.graph.backward(tape, g_logits))
        metrics = self._metrics(arch_loss, valid_acc, train_loss, train_acc, state.step)
        return state.replace(params=params, stats=stats, alpha=alpha, w_opt=w_opt,
                             a_opt=a_opt, step=state.step + 1), metrics
