"""Gradient-based architecture search: DARTS (first order, exact second order) and GDAS.

Architecture parameters ``alpha`` (NB201: ``float[6, 5]``; DARTS: ``float[2, 14, 8]`` with
``none`` inside the softmax, as in DARTS) live in the search state next to the supernet's
weights. ``GradientSearch.step`` keeps the outer contract of every strategy here: state in,
state out, jittable. One step is one architecture update on a valid batch, then one weight
update on a train batch (DARTS' order).

- DARTS (Liu et al., ICLR 2019): the supernet mixes ops by ``softmax(alpha)``.
- Second order: the valid loss is taken after one unrolled weight step, and its gradient
  w.r.t. ``alpha`` is computed exactly by autodiff (Hessian-vector products), not by the
  paper's finite-difference approximation (see ``GradientSearch.unrolled_weights``).
- GDAS (Dong & Yang, CVPR 2019): a straight-through Gumbel-softmax sample per edge (one-hot
  forward, soft gradients), temperature annealed linearly from ``tau_max`` to ``tau_min``.
  The default supernet computes every op and multiplies by the one-hot sample, so each op's
  weight gets its exact straight-through gradient; on NB201, ``network_options=(("select",
  "switch"),)`` computes only the sampled op (GDAS' speed-up; gradients reach the other ops'
  logits only through the softmax).

Batch norm runs on batch statistics (training mode) in both steps, as in DARTS' search; the
running statistics follow the weight steps only and are never differentiated.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from nas_jax.evaluators.population import init_candidate, network_graphdef
from nas_jax.spaces.darts import DartsSpace
from nas_jax.spaces.nb201 import EDGES as NB201_EDGES
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.strategies.collapse import beta_regularization
from nas_jax.train.steps import cross_entropy, value_and_grad_params

METHODS = ("darts", "gdas")
# DARTS' search supernet: affine-free BN in the cells, BN after pooling (model_search.py).
DARTS_SEARCH_OPTIONS = {"affine": False, "pool_bn": True}


def alpha_shape(space) -> tuple[int, ...]:
    """The shape of ``alpha`` for a space: NB201 ``(6, len(space.ops))`` (``(6, 5)``),
    DARTS ``(2, 14, len(space.primitives))`` (``(2, 14, 8)``)."""
    if isinstance(space, NB201Space):
        return (len(NB201_EDGES), len(space.ops))
    if isinstance(space, DartsSpace):
        return space.alpha_shape
    raise ValueError(f"gradient search supports the nb201 and darts spaces, got "
                     f"{type(space).__name__}")


def gumbel_straight_through(key: jax.Array, alpha: jax.Array, tau: jax.Array) -> jax.Array:
    """GDAS' sample: one-hot ``argmax(softmax((log_softmax(alpha) + g) / tau))`` per row in
    the forward pass, the gradient of the soft sample in the backward pass."""
    gumbel = jax.random.gumbel(key, alpha.shape, alpha.dtype)
    soft = jax.nn.softmax((jax.nn.log_softmax(alpha, -1) + gumbel) / tau, -1)
    hard = jax.nn.one_hot(jnp.argmax(soft, -1), alpha.shape[-1], dtype=alpha.dtype)
    return hard - jax.lax.stop_gradient(soft) + soft


@struct.dataclass
class GradientState:
    """Everything a search step needs and a resume restores."""

    params: nnx.State  # supernet weights
    stats: nnx.State  # BN running statistics
    alpha: jax.Array  # architecture parameters
    w_opt: optax.OptState  # weight optimizer (SGD momentum)
    a_opt: optax.OptState  # architecture optimizer (Adam)
    step: jax.Array  # int32[], steps done
    key: jax.Array  # PRNG key (Gumbel noise)


@dataclasses.dataclass(frozen=True)
class GradientSearch:
    """DARTS / GDAS search over a space's supernet (hashable: close over it in ``jax.jit``).

    Attributes:
      space: an ``NB201Space`` or ``DartsSpace``.
      method: ``darts`` (softmax mixture) or ``gdas`` (straight-through Gumbel sample).
      order: 1 (first order) or 2 (exact unrolled hypergradient; DARTS only).
      total_steps: steps of the whole search (cosine learning rate, GDAS temperature, the
        beta-regulariser ramp).
      learning_rate, min_learning_rate, momentum, nesterov, weight_decay, grad_clip: the
        weight SGD (DARTS: 0.025 cosine to 0.001, heavy-ball momentum 0.9, L2 3e-4 added to
        the gradient, clip 5; NAS-Bench-201's runs: Nesterov, L2 5e-4).
      arch_learning_rate, arch_beta1, arch_beta2, arch_weight_decay: the architecture Adam
        (DARTS: 3e-4, betas (0.5, 0.999), L2 1e-3 added to the gradient, as torch's Adam).
      tau_max, tau_min: GDAS' temperature, annealed linearly over ``total_steps``.
      beta_weight: weight of beta-DARTS' regulariser (``collapse.beta_regularization``) on
        the architecture loss, ramped linearly from 0; 0 turns it off.
      alpha_init_scale: ``alpha`` starts as ``scale * normal`` (DARTS: 1e-3).
      network_options: extra ``(name, value)`` constructor options of the supernet.
    """

    space: object
    method: str = "darts"
    order: int = 1
    total_steps: int = 1000
    learning_rate: float = 0.025
    min_learning_rate: float = 0.001
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_learning_rate: float = 3e-4
    arch_beta1: float = 0.5
    arch_beta2: float = 0.999
    arch_weight_decay: float = 1e-3
    tau_max: float = 10.0
    tau_min: float = 0.1
    beta_weight: float = 0.0
    alpha_init_scale: float = 1e-3
    network_options: tuple = ()

    def __post_init__(self):
        alpha_shape(self.space)
        if self.method not in METHODS:
            raise ValueError(f"GradientSearch.method={self.method!r}; allowed: "
                             f"{', '.join(METHODS)}")
        if self.order not in (1, 2):
            raise ValueError(f"GradientSearch.order={self.order!r}; allowed: 1, 2")
        if self.order == 2 and self.method != "darts":
            raise ValueError("GradientSearch.order=2 is defined for method='darts' only; "
                             "use order=1 with gdas")
        if self.total_steps < 1:
            raise ValueError(f"GradientSearch.total_steps must be >= 1, got {self.total_steps}")
        if not 0 < self.tau_min <= self.tau_max:
            raise ValueError(f"GradientSearch needs 0 < tau_min <= tau_max, got "
                             f"{self.tau_min}, {self.tau_max}")

    # ------------------------------------------------------------ pieces
    @property
    def options(self) -> dict:
        """The supernet's constructor options (DARTS: the search form, affine-free BN)."""
        base = DARTS_SEARCH_OPTIONS if isinstance(self.space, DartsSpace) else {}
        return {**base, **dict(self.network_options)}

    @property
    def weight_options(self) -> dict:
        """The supernet's options in the weight step: ``options``, and on CPU for NB201's
        mixture supernet (no ``conv_impl`` or ``select`` among ``network_options``) the
        convolutions' kernel gradients summed over batch chunks (``ops.conv2d``'s
        ``chunked``; the same numbers up to rounding).

        The weight step is the only pass that computes kernel gradients, and XLA:CPU's are
        slow at NB201's sizes. Measured side by side (docs/benchmarks.md, "Latest run
        (2026-12-01): separable pools, ..."): a DARTS first-order step 2.51-2.70 s against
        2.75-2.98 s, its first call 72 s against 54 s. The architecture pass keeps XLA's
        convolutions: it needs no kernel gradient, and forward-mode derivatives (the Hessian
        eigenvalue's Hessian-vector products) do not pass ``chunked``'s custom VJP.
        """
        opts = self.options
        if (isinstance(self.space, NB201Space) and jax.default_backend() == "cpu"
                and not {"conv_impl", "select"} & set(opts)):
            return {**opts, "conv_impl": "chunked"}
        return opts

    def learning_rate_at(self, step: jax.Array) -> jax.Array:
        """The weight learning rate at ``step`` (cosine from ``learning_rate`` to the min)."""
        t = jnp.clip(step / self.total_steps, 0.0, 1.0)
        lo, hi = self.min_learning_rate, self.learning_rate
        return lo + 0.5 * (hi - lo) * (1.0 + jnp.cos(jnp.pi * t))

    def tau_at(self, step: jax.Array) -> jax.Array:
        """GDAS' temperature at ``step``: linear from ``tau_max`` to ``tau_min``."""
        t = jnp.clip(step / max(self.total_steps - 1, 1), 0.0, 1.0)
        return self.tau_max - (self.tau_max - self.tau_min) * t

    def weight_optimizer(self) -> optax.GradientTransformation:
        """Clip, add L2 to the gradient, momentum, cosine rate (torch SGD's order)."""
        chain = []
        if self.grad_clip > 0:
            chain.append(optax.clip_by_global_norm(self.grad_clip))
        chain += [optax.add_decayed_weights(self.weight_decay),
                  optax.trace(decay=self.momentum, nesterov=self.nesterov),
                  optax.scale_by_schedule(lambda count: -self.learning_rate_at(count))]
        return optax.chain(*chain)

    def arch_optimizer(self) -> optax.GradientTransformation:
        """Adam with L2 added to the gradient (torch's ``Adam(weight_decay=...)``)."""
        return optax.chain(optax.add_decayed_weights(self.arch_weight_decay),
                           optax.adam(self.arch_learning_rate, b1=self.arch_beta1,
                                      b2=self.arch_beta2))

    def mixture(self, key: jax.Array, alpha: jax.Array, step: jax.Array) -> jax.Array:
        """The supernet's op weights: ``softmax(alpha)`` (DARTS) or a Gumbel sample (GDAS)."""
        if self.method == "gdas":
            return gumbel_straight_through(key, alpha, self.tau_at(step))
        return jax.nn.softmax(alpha, -1)

    @functools.cached_property
    def graphdef(self) -> nnx.GraphDef:
        """The supernet's graph definition (built once, abstractly)."""
        return network_graphdef(self.space, None, **self.options)

    @functools.cached_property
    def weight_graphdef(self) -> nnx.GraphDef:
        """The weight step's graph definition (``weight_options``; the same parameters)."""
        if self.weight_options == self.options:
            return self.graphdef
        return network_graphdef(self.space, None, **self.weight_options)

    def apply(self, params, stats, weights: jax.Array, x: jax.Array, train: bool = True,
              graphdef: nnx.GraphDef | None = None):
        """``(logits, new_stats)`` of the supernet; ``train``: batch statistics (the search),
        else the running ones (evaluation); ``graphdef``: ``self.graphdef`` unless given."""
        model = nnx.merge(self.graphdef if graphdef is None else graphdef, params, stats,
                          copy=True)
        if isinstance(self.space, DartsSpace):
            logits = model(x, edge_weights=weights, train=train)
        else:
            logits = model(x, weights, train=train)
        return logits, nnx.state(model, nnx.BatchStat)

    def loss(self, params, stats, weights: jax.Array, batch,
             graphdef: nnx.GraphDef | None = None) -> tuple[jax.Array, tuple]:
        """Cross-entropy on ``batch``; aux: ``(new_stats, accuracy)``."""
        x, y = batch
        logits, new_stats = self.apply(params, stats, weights, x, graphdef=graphdef)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return cross_entropy(logits, y), (new_stats, accuracy)

    def unrolled_weights(self, params, stats, alpha: jax.Array, w_opt, step: jax.Array,
                         train_batch):
        """One virtual SGD step ``w' = w - xi * (mu * m + d)``, ``d = grad L_train(w, alpha)
        + wd * w`` (Nesterov: ``w - xi * (d + mu * (mu * m + d))``).

        As in DARTS' ``_compute_unrolled_model``: ``xi`` is the current weight learning rate
        and ``m`` the optimizer's momentum buffer (a constant w.r.t. ``alpha``), so ``w'`` is
        exactly the next real weight step's result when gradients are not clipped (with
        Nesterov too, which NAS-Bench-201's DARTS-V2 code leaves out of its unrolled step).
        Clipping is left out of the unrolled step, as DARTS does; ``w'`` depends on
        ``alpha`` through the train gradient, which is what the hypergradient needs. (It is
        computed with the architecture pass's network, ``graphdef``, which reverse-over-reverse
        and forward-mode derivatives pass; where ``weight_options`` differ, the real step's
        gradient equals it up to float rounding.)
        """
        weights = self.mixture(None, alpha, step)
        grads = jax.grad(lambda p: self.loss(p, stats, weights, train_batch)[0])(params)
        buf = optax.tree_utils.tree_get(w_opt, "trace")
        xi = self.learning_rate_at(step)
        mu = self.momentum

        def update(w, g, m):
            d = g + self.weight_decay * w
            return w - xi * (d + mu * (mu * m + d) if self.nesterov else mu * m + d)

        return jax.tree.map(update, params, grads, buf)

    def arch_loss(self, alpha: jax.Array, params, stats, key: jax.Array, step: jax.Array,
                  w_opt, train_batch, valid_batch) -> tuple[jax.Array, tuple]:
        """The architecture objective: valid loss at ``w`` (order 1) or at the unrolled
        ``w'(alpha)`` (order 2), plus the beta regulariser when on. Aux: ``(loss, accuracy)``
        without the regulariser."""
        if self.order == 2:
            params = self.unrolled_weights(params, stats, alpha, w_opt, step, train_batch)
        weights = self.mixture(key, alpha, step)
        loss, (_, accuracy) = self.loss(params, stats, weights, valid_batch)
        total = loss
        if self.beta_weight > 0:
            ramp = jnp.clip(step / self.total_steps, 0.0, 1.0)
            total = total + self.beta_weight * ramp * beta_regularization(alpha)
        return total, (loss, accuracy)

    # ------------------------------------------------------------ contract
    def init(self, key: jax.Array, network: tuple | None = None) -> GradientState:
        """Fresh supernet weights (or the given ``(params, stats)``), ``alpha ~
        alpha_init_scale * N(0, 1)``, both optimizers' states. Jittable.

        Runs call it op by op, not jitted: each op kind and shape then compiles once (cached
        for the process), where XLA:CPU compiles the whole init, with its hundreds of
        outputs, for seconds to minutes. Measured on 2 cores: NB201 C=16, N=5 4.5 s op by op
        against 13.6 s compiled at ``xla_backend_optimization_level=0`` and 17-18 s at the
        default level (0.3 s op by op again in the same process); C=2, N=1 2.0 s against
        2.4 s (0.08 s again); the DARTS supernet's init took minutes to compile. The values
        are the compiled init's up to float rounding (a few differ in the last bit)."""
        k_net, k_alpha, k_state = jax.random.split(key, 3)
        if network is None:
            params, stats, _ = init_candidate(self.space, None, k_net, **self.options)
        else:
            params, stats = network
        alpha = self.alpha_init_scale * jax.random.normal(k_alpha, alpha_shape(self.space))
        return GradientState(params=params, stats=stats, alpha=alpha,
                             w_opt=self.weight_optimizer().init(params),
                             a_opt=self.arch_optimizer().init(alpha),
                             step=jnp.zeros((), jnp.int32), key=k_state)

    def weight_step(self, params, stats, w_opt, weights: jax.Array, train_batch):
        """One optimizer step of the supernet weights on ``train_batch`` with the op weights
        ``weights`` held fixed: ``(params, stats, w_opt, train_loss, train_accuracy)``."""
        (loss, (stats, accuracy)), grads = value_and_grad_params(
            lambda p, w, s: self.loss(p, s, w, train_batch, self.weight_graphdef), params,
            weights, stats)
        updates, w_opt = self.weight_optimizer().update(grads, w_opt, params)
        return optax.apply_updates(params, updates), stats, w_opt, loss, accuracy

    def step(self, state: GradientState, train_batch, valid_batch):
        """One architecture step on ``valid_batch``, then one weight step on ``train_batch``.

        Returns the new state and metrics: ``arch_loss``/``valid_accuracy`` (valid batch,
        before the update), ``train_loss``/``train_accuracy`` (train batch, with the updated
        ``alpha``), ``learning_rate`` and ``tau`` (GDAS' temperature; 0 for DARTS).
        """
        k_arch, k_weight = jax.random.split(jax.random.fold_in(state.key, state.step))
        a_grad, (arch_loss, valid_acc) = jax.grad(self.arch_loss, has_aux=True)(
            state.alpha, state.params, state.stats, k_arch, state.step, state.w_opt,
            train_batch, valid_batch)
        a_updates, a_opt = self.arch_optimizer().update(a_grad, state.a_opt, state.alpha)
        alpha = optax.apply_updates(state.alpha, a_updates)

        weights = jax.lax.stop_gradient(self.mixture(k_weight, alpha, state.step))
        params, stats, w_opt, train_loss, train_acc = self.weight_step(
            state.params, state.stats, state.w_opt, weights, train_batch)
        metrics = {"arch_loss": arch_loss, "valid_accuracy": valid_acc,
                   "train_loss": train_loss, "train_accuracy": train_acc,
                   "learning_rate": self.learning_rate_at(state.step),
                   "tau": self.tau_at(state.step) if self.method == "gdas" else jnp.zeros(())}
        new_state = state.replace(params=params, stats=stats, alpha=alpha, w_opt=w_opt,
                                  a_opt=a_opt, step=state.step + 1)
        return new_state, metrics

    def arch_weights(self, state: GradientState) -> jax.Array:
        """``softmax(alpha)``: the mixture the derived cell is read from (both methods)."""
        return jax.nn.softmax(state.alpha, -1)
