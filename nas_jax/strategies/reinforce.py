"""An LSTM controller trained with REINFORCE (Zoph & Le, ICLR 2017; Pham et al., ENAS 2018).

The policy samples an architecture decision by decision: step ``t`` is fed the embedding of
the choice made at step ``t - 1`` (a learned start token at step 0), optionally concatenated
with a fixed context vector (e.g. a task embedding for meta-learning), and a per-decision head
turns the LSTM output into logits over that decision's choices. The LSTM is written as pure
functions over a params dict, so params and Adam state live in the strategy state and
``init/ask/tell`` are jittable.

Defaults follow the ENAS paper (Sec. 3, controller training): parameters uniform in
[-0.1, 0.1], Adam with learning rate 3.5e-4, logits ``2.5 * tanh(logits / 5.0)``, entropy
weight 1e-4, and a moving-average baseline with decay 0.99 (``controller_bl_dec`` in the ENAS
code). The hidden size is 64 (ENAS' CIFAR scripts; the paper's controller has 100).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import optax
from flax import struct

from nas_jax.strategies.base import Best, Strategy, clean_fitness, tell_metrics

Params = dict[str, jax.Array]


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves))


@struct.dataclass
class ReinforceState:
    params: Params  # the controller (see ``ReinforceController.init_params``)
    opt_state: optax.OptState
    baseline: jax.Array  # float32[]: moving average of the batch-mean reward
    best: Best


@dataclasses.dataclass(frozen=True)
class ReinforceController(Strategy):
    """REINFORCE with a moving-average baseline over an autoregressive LSTM policy.

    Attributes:
      hidden_size: LSTM width; the choice embeddings have the same width.
      temperature: logits are divided by it before the tanh clipping.
      tanh_constant: logits become ``tanh_constant * tanh(logits / temperature)``; ``<= 0``
        turns the clipping off (plain ``logits / temperature``).
      entropy_weight: weight of the policy entropy bonus in the loss.
      learning_rate: Adam step size.
      baseline_decay: ``baseline <- decay * baseline + (1 - decay) * mean reward``; the first
        tell sets the baseline to its batch mean (starting at 0 would make every first
        advantage as large as the reward itself).
      init_scale: parameters start uniform in ``[-init_scale, init_scale]``.
      context_size: K, the length of an extra input vector concatenated to every step's input
        (``context`` in ``sample``/``log_prob``; zeros when not given). 0: none.
    """

    hidden_size: int = 64
    temperature: float = 5.0
    tanh_constant: float = 2.5
    entropy_weight: float = 1e-4
    learning_rate: float = 3.5e-4
    baseline_decay: float = 0.99
    init_scale: float = 0.1
    context_size: int = 0

    def __post_init__(self):
        name = type(self).__name__
        for field in ("hidden_size", "batch_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{name}.{field}={getattr(self, field)}: must be >= 1")
        for field in ("temperature", "learning_rate"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{name}.{field}={getattr(self, field)}: must be > 0")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError(f"{name}.baseline_decay={self.baseline_decay}: must be in [0, 1)")
        if self.context_size < 0:
            raise ValueError(f"{name}.context_size={self.context_size}: must be >= 0")

    @property
    def optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.learning_rate)

    # ------------------------------------------------------------- the policy
    def init_params(self, key: jax.Array) -> Params:
        """``start[H]``, ``embed[D, C, H]`` (choice at decision d -> input of step d + 1), the
        LSTM ``w_x[H + K, 4H]``, ``w_h[H, 4H]``, ``b[4H]`` and heads ``head_w[D, H, C]``,
        ``head_b[D, C]`` (C = max_choices; padded choices are masked)."""
        d, c, h, k = (self.space.num_decisions, self.space.max_choices, self.hidden_size,
                      self.context_size)
        shapes = dict(start=(h,), embed=(d, c, h), w_x=(h + k, 4 * h), w_h=(h, 4 * h),
                      b=(4 * h,), head_w=(d, h, c), head_b=(d, c))
        # One draw for all parameters (fewer PRNG calls compile faster), then cut and shape.
        sizes = [math.prod(shape) for shape in shapes.values()]
        flat = jax.random.uniform(key, (sum(sizes),), jnp.float32, -self.init_scale,
                                  self.init_scale)
        parts = jnp.split(flat, list(itertools.accumulate(sizes))[:-1])
        return {name: part.reshape(shape) for (name, shape), part in zip(shapes.items(), parts)}

    def _context(self, context) -> jax.Array:
        if context is None:
            return jnp.zeros((self.context_size,), jnp.float32)
        context = jnp.asarray(context, jnp.float32)
        if context.shape != (self.context_size,):
            raise ValueError(f"context has shape {context.shape}; context_size is "
                             f"{self.context_size}")
        return context

    def _step(self, params: Params, carry, x, context, head_w, head_b, mask):
        """One LSTM step and its head: returns the new carry and masked log-probabilities."""
        h, c = carry
        gates = jnp.concatenate([x, context]) @ params["w_x"] + h @ params["w_h"] + params["b"]
        i, f, g, o = jnp.split(gates, 4)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        logits = (h @ head_w + head_b) / self.temperature
        if self.tanh_constant > 0:
            logits = self.tanh_constant * jnp.tanh(logits)
        logp = jax.nn.log_softmax(jnp.where(mask, logits, -jnp.inf))
        return (h, c), logp

    @staticmethod
    def _entropy(logp: jax.Array, mask: jax.Array) -> jax.Array:
        safe = jnp.where(mask, logp, 0.0)  # no 0 * -inf, in value or gradient
        return -jnp.sum(jnp.exp(safe) * safe * mask)

    def _zeros(self):
        return (jnp.zeros((self.hidden_size,)), jnp.zeros((self.hidden_size,)))

    def sample(self, params: Params, key: jax.Array, context=None):
        """One architecture from the policy: ``(int32[D], log_prob float[], entropy float[])``.

        The entropy is that of the per-step distributions along the sampled path, summed.
        """
        context = self._context(context)
        d = self.space.num_decisions

        def body(carry, xs):
            state, x = carry
            k, embed, head_w, head_b, mask = xs
            state, logp = self._step(params, state, x, context, head_w, head_b, mask)
            a = jax.random.categorical(k, logp)
            return (state, embed[a]), (a, logp[a], self._entropy(logp, mask))

        xs = (jax.random.split(key, d), params["embed"], params["head_w"], params["head_b"],
              self.space.choice_mask())
        _, (arch, logps, ents) = jax.lax.scan(body, (self._zeros(), params["start"]), xs)
        return arch.astype(jnp.int32), jnp.sum(logps), jnp.sum(ents)

    def log_prob_and_entropy(self, params: Params, arch: jax.Array, context=None):
        """Teacher-forced ``(log_prob, entropy)`` of ``arch`` (int32[D]) under ``params``."""
        context = self._context(context)
        arch = jnp.asarray(arch, jnp.int32)
        d = self.space.num_decisions
        prev = params["embed"][jnp.arange(d - 1), arch[:-1]]
        inputs = jnp.concatenate([params["start"][None], prev], axis=0)
        mask = self.space.choice_mask()

        def body(state, xs):
            x, head_w, head_b, m, a = xs
            state, logp = self._step(params, state, x, context, head_w, head_b, m)
            return state, (logp[a], self._entropy(logp, m))

        xs = (inputs, params["head_w"], params["head_b"], mask, arch)
        _, (logps, ents) = jax.lax.scan(body, self._zeros(), xs)
        return jnp.sum(logps), jnp.sum(ents)

    def log_prob(self, params: Params, arch: jax.Array, context=None) -> jax.Array:
        """``log pi(arch)`` under ``params``, float[]."""
        return self.log_prob_and_entropy(params, arch, context)[0]

    def loss(self, params: Params, archs: jax.Array, advantages: jax.Array, context=None):
        """REINFORCE loss ``mean(-advantage * log_prob - entropy_weight * entropy)``."""
        logp, ent = jax.vmap(self.log_prob_and_entropy, in_axes=(None, 0, None))(
            params, archs, context)
        return jnp.mean(-jax.lax.stop_gradient(advantages) * logp - self.entropy_weight * ent)

    # ------------------------------------------------------------- ask/tell
    def init(self, key: jax.Array) -> ReinforceState:
        params = self.init_params(key)
        return ReinforceState(params=params, opt_state=self.optimizer.init(params),
                              baseline=jnp.array(0.0, jnp.float32),
                              best=Best.empty(self.space.num_decisions))

    def ask(self, key: jax.Array, state: ReinforceState):
        keys = jax.random.split(key, self.batch_size)
        archs, _, _ = jax.vmap(self.sample, in_axes=(None, 0))(state.params, keys)
        return archs, state

    @staticmethod
    def rewards(fitness: jax.Array, fallback: jax.Array) -> jax.Array:
        """Non-finite fitness becomes the batch's smallest finite value (``fallback`` if none)."""
        fitness = jnp.asarray(fitness, jnp.float32)
        finite = jnp.isfinite(fitness)
        low = jnp.min(jnp.where(finite, fitness, jnp.inf))
        low = jnp.where(jnp.any(finite), low, fallback)
        return jnp.where(finite, fitness, low)

    def tell(self, state: ReinforceState, archs: jax.Array, fitness: jax.Array):
        """One Adam step on the REINFORCE loss (advantage = reward - baseline), then the
        baseline moves towards the batch mean. Any batch size may be told."""
        archs = archs.astype(jnp.int32)
        first = state.best.num_told == 0
        reward = self.rewards(fitness, state.baseline)
        mean = jnp.mean(reward)
        baseline = jnp.where(first, mean, state.baseline)
        loss, grads = jax.value_and_grad(self.loss)(state.params, archs, reward - baseline)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A step that overflows (absurdly large rewards) is skipped rather than poisoning the
        # params or Adam's moments.
        ok = _all_finite((grads, params, opt_state))
        params, opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                                         (params, opt_state), (state.params, state.opt_state))
        decay = self.baseline_decay
        new_baseline = decay * baseline + (1.0 - decay) * mean
        new_baseline = jnp.where(jnp.isfinite(new_baseline), new_baseline, state.baseline)
        best = state.best.update(archs, clean_fitness(fitness))
        new = ReinforceState(params=params, opt_state=opt_state, baseline=new_baseline,
                             best=best)
        metrics = tell_metrics(best, clean_fitness(fitness))
        metrics.update(loss=loss, baseline=new_baseline)
        return new, metrics
