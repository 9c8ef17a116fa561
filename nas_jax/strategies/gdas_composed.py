"""GDAS on the NAS-Bench-201 supernet with each step composed from per-unit programs.

``ComposedGDAS(search).step`` computes what ``search.step`` computes for GDAS on the switch
supernet (``network_options=(("select", "switch"),)``: only the sampled op of each edge
runs, scaled by its straight-through weight), but as ``supernet.composed`` runs a network:
the host walks the sampled architecture's graph and calls one small compiled program per
unit, shared by every architecture. On XLA:CPU a unit's convolutions run at the speed they
have as top-level programs, which inside the switch's branches they do not
(docs/benchmarks.md).

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

What differs from the switch supernet: the edges whose output cannot reach the loss are
not run, so the batch statistics of their convolution blocks are not updated (their weights
get zero gradients in both). Each step reads the two sampled architectures back to the host
(12 integers): the walk needs them.

The state is a ``GradientState`` whose ``params``/``stats`` are the composed graph's weight
dicts: ``prepare`` converts a search's state, ``restore`` converts back (for checkpoints and
for the derived cell, which reads ``alpha`` only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from nas_jax.evaluators.executors import ComposedTrainer, composed_options
from nas_jax.spaces.nb201 import EDGES, NB201Space
from nas_jax.strategies.collapse import beta_regularization
from nas_jax.strategies.gradient import GradientSearch, GradientState, gumbel_straight_through
from nas_jax.train.steps import Recipe, cross_entropy


class ComposedGDAS:
    """GDAS steps of ``search`` (``method="gdas"`` on an ``NB201Space``) through the composed
    execution. ``prepare(state)``, then ``step(state, train_batch, valid_batch) -> (state,
    metrics)`` as ``search.step``, then ``restore(state, template)``."""

    def __init__(self, search: GradientSearch):
        from nas_jax.evaluators.population import build_network
        from nas_jax.supernet.composed import ComposedGraph

        if search.method != "gdas":
            raise ValueError(f"ComposedGDAS needs GradientSearch(method='gdas'), got "
                             f"method={search.method!r}; DARTS mixes every op of every edge, "
                             "which the composed execution does not run")
        if not isinstance(search.space, NB201Space):
            raise ValueError(f"ComposedGDAS runs on the NB201 space, got "
                             f"{type(search.space).__name__}")
        self.search = search
        self.network = nnx.eval_shape(lambda: build_network(
            search.space, None, rngs=nnx.Rngs(0), **composed_options(search.space)))
        self.graph = ComposedGraph(self.network)
        self.trainer = ComposedTrainer(self.graph, self.network, Recipe(),
                                       tx=search.weight_optimizer())
        arch_tx = search.arch_optimizer()
        edges = jnp.arange(len(EDGES))
        self._plans: dict = {}

        def sample(key, alpha, step):
            """The straight-through sample, its architecture and each edge's weight."""
            h = gumbel_straight_through(key, alpha, search.tau_at(step))
            arch = jnp.argmax(h, -1)
            return arch, h[edges, arch]

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

    # Cells that together hold every unit and every scaled-sum pattern of an NB201 cell
    # (node 3's seven subsets of its three edges, node 2's three, every op kind): a search
    # step then compiles nothing new, whatever it samples.
    WARM_UP_ARCHS = ((3, 2, 4, 3, 1, 3), (2, 3, 3, 4, 0, 0), (3, 0, 0, 0, 2, 0),
                     (0, 2, 0, 0, 0, 3), (4, 0, 0, 3, 2, 0), (3, 0, 2, 1, 0, 4),
                     (1, 3, 4, 0, 2, 3))

    def warm_up(self, state: GradientState, train_batch, valid_batch) -> None:
        """Compile every program a step can need (the architecture step's and the weight
        step's passes for ``WARM_UP_ARCHS``), leaving ``state`` as it is: the steps after it
        run at their steady speed (the benchmark's timed steps)."""
        scales = jnp.ones((len(EDGES),), state.alpha.dtype)
        for arch in self.WARM_UP_ARCHS:
            plan = self._plan(jnp.asarray(arch))
            for batch, scaled in ((valid_batch, True), (train_batch, False)):
                logits, _, tape = self.graph.forward(
                    plan, state.params, state.stats, batch[0], train=True,
                    edge_scales=scales if scaled else None, weight_grads=not scaled)
                jax.block_until_ready(self.graph.backward(
                    tape, self._loss_and_grad(logits, batch[1])[2]))

    def _plan(self, arch) -> list:
        """The scaled plan of an architecture (``int[6]``, read back to the host), cached."""
        from nas_jax.supernet.composed import nb201_plan

        key = tuple(int(a) for a in jax.device_get(arch))
        if key not in self._plans:
            self._plans[key] = nb201_plan(self.network, key, scaled=True)
        return self._plans[key]

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
