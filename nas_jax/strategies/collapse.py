"""Diagnostics and remedies for the collapse of differentiable search (cells full of skips
and pools, a sharp valid loss in ``alpha``).

- ``dominant_hessian_eigenvalue``: RobustDARTS' indicator (Zela et al., ICLR 2020), the
  largest-magnitude eigenvalue of the valid loss's Hessian w.r.t. ``alpha``, by power
  iteration on Hessian-vector products.
- ``robust_darts_should_stop``: RobustDARTS' early stopping (DARTS-ES) on that eigenvalue.
- ``beta_regularization``: beta-DARTS' regulariser (Ye et al., CVPR 2022) on the softmax's
  normaliser, ``mean_e logsumexp(alpha_e)``, which keeps ``alpha`` from growing apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def hvp(loss_fn: Callable[[jax.Array], jax.Array], alpha: jax.Array,
        v: jax.Array) -> jax.Array:
    """Hessian-vector product ``H(alpha) v`` of a scalar ``loss_fn`` (forward over reverse)."""
    return jax.jvp(jax.grad(loss_fn), (alpha,), (v,))[1]


def dominant_hessian_eigenvalue(loss_fn: Callable[[jax.Array], jax.Array], alpha: jax.Array,
                                key: jax.Array, iters: int = 20) -> jax.Array:
    """The Hessian's eigenvalue of largest magnitude at ``alpha`` (sign kept).

    Power iteration from a random unit vector for a fixed ``iters`` (jittable with ``iters``
    static); the estimate is the Rayleigh quotient ``v.Hv`` of the last iterate.
    """
    v = jax.random.normal(key, alpha.shape, alpha.dtype)
    v = v / jnp.linalg.norm(v)

    def body(_, carry):
        v, _ = carry
        hv = hvp(loss_fn, alpha, v)
        return hv / jnp.maximum(jnp.linalg.norm(hv), 1e-30), jnp.vdot(v, hv)

    v, _ = jax.lax.fori_loop(0, iters, body, (v, jnp.zeros((), alpha.dtype)))
    return jnp.vdot(v, hvp(loss_fn, alpha, v))


def beta_regularization(alpha: jax.Array) -> jax.Array:
    """beta-DARTS' Beta-Decay term: the mean over edges of ``logsumexp(alpha_e)``.

    Its gradient is ``softmax(alpha_e) / num_edges``: it lowers every logit in proportion to
    its weight, so no op's weight runs away from the others.
    """
    return jnp.mean(jax.nn.logsumexp(alpha, axis=-1))


def robust_darts_should_stop(eigenvalues: Sequence[float], window: int = 5,
                             threshold: float = 0.75) -> bool:
    """RobustDARTS' DARTS-ES rule: stop when ``mean(last window) / mean(window before it)``
    reaches ``1 / threshold`` (the eigenvalue grew by a third over ``window`` evaluations).

    The paper's form compares ``mean(lambda[i-k]) / mean(lambda[i]) < 0.75``, each mean over
    a window of ``k`` epochs; ``eigenvalues`` holds one value per evaluation, oldest first.
    Host-side; False until ``2 * window`` values exist.
    """
    if window < 1 or not 0 < threshold < 1:
        raise ValueError(f"window must be >= 1 and 0 < threshold < 1, got {window}, "
                         f"{threshold}")
    if len(eigenvalues) < 2 * window:
        return False
    recent = sum(eigenvalues[-window:]) / window
    before = sum(eigenvalues[-2 * window:-window]) / window
    return recent > 0 and before / recent < threshold
