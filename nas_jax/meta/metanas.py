"""MetaNAS (Elsken et al., CVPR 2020): meta-learn a DARTS supernet's weights and architecture.

Each task adapts the meta-learned weights ``w`` and architecture ``alpha`` together for
``inner_steps`` steps of Adam on its support set (first-order DARTS, single level: the same
support batch for both); the meta-update moves ``(w, alpha)`` towards the adapted ones
(Reptile) or along the mean query-loss gradient at the adapted ones (first-order MAML, outer
Adam). The supernet mixes ops by ``softmax(alpha / T)``; annealing ``T`` towards 0 during
task training makes the mixture nearly one-hot, so pruning it after adaptation (``prune``)
changes the network little (the paper's "soft pruning"). Baselines with the same loops:
Conv-4 (``conv4``, MAML's network) and a fixed random DARTS cell (``random_cell``).

Defaults follow the MetaNAS code's miniImageNet setting (``in_metanas``): 5 inner steps,
inner Adam with betas (0, 0.999) at lr 1e-3 for weights and architecture, L2 1e-3 on alpha,
Reptile meta learning rates 1.0 (weights) and 0.6 (alpha), alpha initialised as DARTS does.

Everything here is a pure function of a static ``Learner`` and pytrees; ``meta_step`` is
jitted with the learner static. Tasks of a meta-batch (and meta-test episodes) adapt in
parallel under ``jax.vmap`` off CPU; on CPU ``lax.map`` runs them one after another, which
measured 2.6x faster there (each task's adapted weights make vmapped convolutions grouped
convolutions, slow on XLA:CPU; see ``Learner.task_batching``).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.flatten_util import ravel_pytree

from nas_jax import ops
from nas_jax.data.tasks import Episode, EpisodeSampler
from nas_jax.meta.fewshot_models import Conv4
from nas_jax.spaces.darts import DartsSpace
from nas_jax.strategies.derive import derive
from nas_jax.strategies.gradient import DARTS_SEARCH_OPTIONS
from nas_jax.supernet.darts import EDGES, DartsNetwork
from nas_jax.train.steps import cross_entropy

LEARNERS = ("metanas", "conv4", "random_cell")
OUTER = ("reptile", "fomaml")
TEMPERATURE_MODES = ("exponential", "linear")
TASK_BATCHING = ("auto", "vmap", "map")
# Node of each of the 14 edges, as a [4 nodes, 14 edges] membership mask.
_NODE_OF_EDGE = np.array([[node == n for n, _ in EDGES] for node in range(4)])


@struct.dataclass
class Learner:
    """Static description of a meta-learner (hashable: a static argument of ``jax.jit``).

    ``kind``: one of ``LEARNERS``; ``graphdef``: the network's NNX graph definition;
    ``space``: the DARTS space (None for conv4); ``arch``: random_cell's fixed genotype (a
    tuple); inner loop: ``inner_steps`` Adam steps (``inner_beta1``, lr ``inner_lr_w`` on the
    weights, ``inner_lr_alpha`` on alpha with L2 ``alpha_weight_decay`` added to its
    gradient), on minibatches of ``inner_batch`` support examples (0: the whole support set);
    outer loop: ``outer`` in ``OUTER`` with ``meta_lr_w`` / ``meta_lr_alpha``;
    ``task_batching``: how tasks run side by side (``TASK_BATCHING``; ``auto``: ``lax.map``
    on CPU, ``vmap`` elsewhere; the same numbers either way).
    """

    kind: str = struct.field(pytree_node=False)
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    space: DartsSpace | None = struct.field(pytree_node=False)
    arch: tuple | None = struct.field(pytree_node=False)
    inner_steps: int = struct.field(pytree_node=False)
    inner_lr_w: float = struct.field(pytree_node=False)
    inner_lr_alpha: float = struct.field(pytree_node=False)
    outer: str = struct.field(pytree_node=False)
    meta_lr_w: float = struct.field(pytree_node=False)
    meta_lr_alpha: float = struct.field(pytree_node=False)
    inner_beta1: float = struct.field(pytree_node=False, default=0.0)
    alpha_weight_decay: float = struct.field(pytree_node=False, default=1e-3)
    inner_batch: int = struct.field(pytree_node=False, default=0)
    task_batching: str = struct.field(pytree_node=False, default="auto")

    @property
    def searches(self) -> bool:
        """Whether the architecture ``alpha`` is learned (metanas)."""
        return self.kind == "metanas"


@struct.dataclass
class MetaState:
    """Meta-learned state: weights, carried non-parameter state, alpha, outer optimizer."""

    params: nnx.State  # meta-learned weights (nnx.Param)
    rest: nnx.State  # everything else (BatchStat), carried, not meta-learned
    alpha: jax.Array  # float[space.alpha_shape] for metanas; float[0] for the baselines
    outer_opt: Any  # (weights Adam, alpha Adam) states for fomaml; () for reptile
    step: jax.Array  # int32[], meta-iterations done


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; allowed: {', '.join(allowed)}")


def _outer_optimizers(learner: Learner):
    return optax.adam(learner.meta_lr_w), optax.adam(learner.meta_lr_alpha)


def make_learner(key: jax.Array, kind: str, *, space: DartsSpace, conv_channels: int = 32,
                 inner_steps: int = 5, inner_lr_w: float = 1e-3, inner_lr_alpha: float = 1e-3,
                 outer: str = "reptile", meta_lr_w: float = 1.0, meta_lr_alpha: float = 0.6,
                 arch_key: jax.Array | None = None, inner_beta1: float = 0.0,
                 alpha_weight_decay: float = 1e-3, inner_batch: int = 0,
                 alpha_init_scale: float = 1e-3,
                 network_options: dict | None = None,
                 task_batching: str = "auto") -> tuple[Learner, MetaState]:
    """Build a learner and its initial meta-state.

    metanas: DARTS' search supernet (affine-free BN in the cells) over ``space`` with
    ``alpha = alpha_init_scale * normal``; random_cell: the standalone network of
    ``space.sample(arch_key)`` (default: a key folded from ``key``); conv4: ``Conv4`` with
    ``conv_channels`` filters on ``space.input_shape``, ``space.num_classes`` outputs.
    ``network_options`` go to ``DartsNetwork``: e.g. ``{"edge_execution": "scan"}`` (the
    experiment runner's default: two scans over edges per cell, compiled ~5x faster on CPU
    at about the same speed) or ``{"depthwise_impl": "xla"}`` (on CPU: compiles faster than
    the default ``slices`` and ran ~3x slower inside the adaptation loop).
    """
    _choice("kind", kind, LEARNERS)
    _choice("outer", outer, OUTER)
    _choice("task_batching", task_batching, TASK_BATCHING)
    if not isinstance(space, DartsSpace):
        raise ValueError(f"make_learner needs space=DartsSpace(...) (its input_shape and "
                         f"num_classes size every learner), got {type(space).__name__}")
    if inner_steps < 1:
        raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
    if inner_batch < 0:
        raise ValueError(f"inner_batch must be >= 0 (0: the whole support set), got "
                         f"{inner_batch}")
    options = dict(network_options or {})
    if kind == "conv4" and options:
        raise ValueError(f"network_options {sorted(options)} are DartsNetwork options; a conv4 "
                         "learner takes none")
    k_init, k_alpha = jax.random.split(key)
    rngs = ops.ParamKeys(k_init)
    arch = None
    if kind == "metanas":
        model = DartsNetwork(space, None, **{**DARTS_SEARCH_OPTIONS, **options}, rngs=rngs)
        alpha = alpha_init_scale * jax.random.normal(k_alpha, space.alpha_shape, jnp.float32)
    elif kind == "random_cell":
        arch_key = jax.random.fold_in(key, 1) if arch_key is None else arch_key
        arch = tuple(int(a) for a in np.asarray(space.sample(arch_key)))
        model = DartsNetwork(space, np.asarray(arch, np.int32), **options, rngs=rngs)
        alpha = jnp.zeros((0,), jnp.float32)
    else:
        model = Conv4(tuple(space.input_shape), conv_channels, space.num_classes, rngs=rngs)
        alpha = jnp.zeros((0,), jnp.float32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    learner = Learner(kind=kind, graphdef=graphdef, space=None if kind == "conv4" else space,
                      arch=arch, inner_steps=int(inner_steps), inner_lr_w=float(inner_lr_w),
                      inner_lr_alpha=float(inner_lr_alpha), outer=outer,
                      meta_lr_w=float(meta_lr_w), meta_lr_alpha=float(meta_lr_alpha),
                      inner_beta1=float(inner_beta1),
                      alpha_weight_decay=float(alpha_weight_decay),
                      inner_batch=int(inner_batch), task_batching=task_batching)
    if outer == "fomaml":
        tx_w, tx_a = _outer_optimizers(learner)
        outer_opt = (tx_w.init(params), tx_a.init(alpha))
    else:
        outer_opt = ()
    state = MetaState(params=params, rest=rest, alpha=alpha, outer_opt=outer_opt,
                      step=jnp.zeros((), jnp.int32))
    return learner, state


def num_params(learner: Learner, state: MetaState) -> int:
    """Number of meta-learned weights (alpha not counted)."""
    del learner
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(state.params)))


def temperature(step, *, start: float, end: float, steps: int,
                mode: str = "exponential") -> jax.Array:
    """Softmax temperature at ``step``: ``start`` at 0, ``end`` at ``steps`` and after.

    ``exponential``: geometric interpolation ``start * (end / start) ** (step / steps)``;
    ``linear`` (the MetaNAS code's in-task schedule): ``start + (end - start) * step / steps``.
    Jittable on a traced ``step``.
    """
    _choice("mode", mode, TEMPERATURE_MODES)
    if start <= 0 or end <= 0:
        raise ValueError(f"temperatures must be > 0, got start={start}, end={end}")
    t = jnp.clip(jnp.asarray(step, jnp.float32) / max(steps, 1), 0.0, 1.0)
    if mode == "linear":
        return start + (end - start) * t
    return start * (end / start) ** t


def _forward(learner: Learner, params, rest, edge_weights, x):
    """``(logits, new_rest)``; batch-statistics BN; ``edge_weights`` only for metanas."""
    model = nnx.merge(learner.graphdef, params, rest, copy=True)
    if learner.kind == "metanas":
        out = model(x, edge_weights=edge_weights, train=True)
    else:
        out = model(x, train=True)
    return out, nnx.split(model, nnx.Param, ...)[2]


def logits(learner: Learner, params, rest, alpha, x, temperature):
    """``(logits, new_rest)`` of the network; metanas mixes ops by ``softmax(alpha / T)``.

    BN uses batch statistics (transductive, as in MAML/Reptile few-shot practice).
    """
    weights = jax.nn.softmax(alpha / temperature, -1) if learner.searches else None
    return _forward(learner, params, rest, weights, x)


def _schedule(temperature, steps: int) -> jax.Array:
    """A scalar temperature, or a per-step ``float[steps]`` schedule, as ``float[steps]``."""
    t = jnp.asarray(temperature, jnp.float32)
    if t.ndim == 0:
        return jnp.full((steps,), t)
    if t.shape != (steps,):
        raise ValueError(f"temperature must be a scalar or float[{steps}] (one per inner "
                         f"step), got shape {t.shape}")
    return t


def _inner_optimizers(learner: Learner):
    b = (learner.inner_beta1, 0.999)
    tx_w = optax.adam(learner.inner_lr_w, b1=b[0], b2=b[1])
    tx_a = optax.chain(optax.add_decayed_weights(learner.alpha_weight_decay),
                       optax.adam(learner.inner_lr_alpha, b1=b[0], b2=b[1]))
    return tx_w, tx_a


def adapt(learner: Learner, key: jax.Array, params, rest, alpha, support_x, support_y,
          temperature, *, arch_frozen=False):
    """Task adaptation: ``inner_steps`` Adam steps on the support loss, on the weights and
    (metanas, unless ``arch_frozen``) alpha together, from a fresh Adam state.

    ``temperature``: a scalar, or ``float[inner_steps]`` (one per step, e.g. the MetaNAS
    code's linear anneal within a task). ``key`` draws the support minibatches when
    ``learner.inner_batch`` is set. ``arch_frozen`` (traceable bool): keep alpha fixed (the
    paper's warm-up). Returns ``(params, alpha, rest, losses[inner_steps])``, the support
    loss before each step.
    """
    temps = _schedule(temperature, learner.inner_steps)
    tx_w, tx_a = _inner_optimizers(learner)
    keys = jax.random.split(key, learner.inner_steps)
    n = support_x.shape[0]
    batch = learner.inner_batch
    if batch > n:
        raise ValueError(f"inner_batch={batch} exceeds the {n} support examples; use 0 for the "
                         "whole support set")
    keep = 1.0 - jnp.asarray(arch_frozen, jnp.float32)
    # The weights adapt as one flat vector: Adam is elementwise, so the numbers are those of
    # the pytree, and the program holds one optimizer update instead of one per leaf (the
    # DARTS supernet has ~550 weight arrays; its adaptation program shrank by ~40%).
    flat, unravel = ravel_pytree(params)

    def loss_fn(p, a, r, x, y, t):
        out, new_r = logits(learner, unravel(p), r, a, x, t)
        return cross_entropy(out, y), new_r

    def step(carry, inputs):
        p, a, r, ow, oa = carry
        k, t = inputs
        x, y = support_x, support_y
        if 0 < batch < n:
            idx = jax.random.permutation(k, n)[:batch]
            x, y = x[idx], y[idx]
        (loss, r), (gp, ga) = jax.value_and_grad(loss_fn, (0, 1), has_aux=True)(p, a, r, x, y, t)
        uw, ow = tx_w.update(gp, ow, p)
        p = optax.apply_updates(p, uw)
        if learner.searches:
            ua, oa = tx_a.update(ga, oa, a)
            a = a + keep * ua
        return (p, a, r, ow, oa), loss

    init = (flat, alpha, rest, tx_w.init(flat), tx_a.init(alpha))
    (flat, alpha, rest, _, _), losses = jax.lax.scan(step, init, (keys, temps))
    return unravel(flat), alpha, rest, losses


def _over_tasks(learner: Learner, fn):
    """``fn`` mapped over a leading task axis of its arguments, by ``learner.task_batching``."""
    mode = learner.task_batching
    if mode == "auto":
        mode = "map" if jax.default_backend() == "cpu" else "vmap"
    if mode == "vmap":
        return jax.vmap(fn)
    return lambda *xs: jax.lax.map(lambda args: fn(*args), xs)


def _mean(tree):
    return jax.tree.map(lambda v: jnp.mean(v, 0), tree)


@functools.partial(jax.jit, static_argnums=0)
def meta_step(learner: Learner, key: jax.Array, state: MetaState, episodes: Episode,
              temperature, arch_frozen=False, meta_lr_scale=1.0) -> tuple[MetaState, dict]:
    """One meta-iteration over a meta-batch (``episodes`` with a leading task axis).

    Reptile: ``w <- w + meta_lr_w * (mean_t w_t - w)``, the same for alpha with
    ``meta_lr_alpha``. fomaml: the query-loss gradient at each task's adapted
    ``(w_t, alpha_t)`` (at the last inner temperature), averaged over tasks, through an
    outer Adam. BN statistics become the tasks' mean. ``arch_frozen``: no alpha updates
    (warm-up). ``meta_lr_scale`` (traceable) multiplies both meta learning rates (Reptile
    anneals it linearly to 0 over meta-training). Metrics: mean support loss before and
    after adaptation, mean query loss and accuracy of the adapted, unpruned network.
    """
    n_tasks = episodes.support_x.shape[0]
    t_last = _schedule(temperature, learner.inner_steps)[-1]

    def task(k, sx, sy, qx, qy):
        p, a, r, losses = adapt(learner, k, state.params, state.rest, state.alpha, sx, sy,
                                temperature, arch_frozen=arch_frozen)

        def query_loss(p, a):
            out, _ = logits(learner, p, r, a, qx, t_last)
            return cross_entropy(out, qy), out

        if learner.outer == "fomaml":
            (q_loss, out), grads = jax.value_and_grad(query_loss, (0, 1), has_aux=True)(p, a)
        else:
            (q_loss, out), grads = query_loss(p, a), ()
        after = cross_entropy(logits(learner, p, r, a, sx, t_last)[0], sy)
        accuracy = jnp.mean(jnp.argmax(out, -1) == qy)
        return p, a, r, grads, losses[0], after, q_loss, accuracy

    keys = jax.random.split(key, n_tasks)
    p_t, a_t, r_t, grads, before, after, q_loss, accuracy = _over_tasks(learner, task)(
        keys, episodes.support_x, episodes.support_y, episodes.query_x, episodes.query_y)
    keep = 1.0 - jnp.asarray(arch_frozen, jnp.float32)
    if learner.outer == "reptile":
        lr_w = meta_lr_scale * learner.meta_lr_w
        params = jax.tree.map(lambda w, wt: w + lr_w * (jnp.mean(wt, 0) - w), state.params, p_t)
        alpha = state.alpha + meta_lr_scale * learner.meta_lr_alpha * (jnp.mean(a_t, 0)
                                                                         - state.alpha)
        outer_opt = state.outer_opt
    else:
        g_w, g_a = _mean(grads)
        tx_w, tx_a = _outer_optimizers(learner)
        u_w, o_w = tx_w.update(g_w, state.outer_opt[0], state.params)
        u_a, o_a = tx_a.update(g_a, state.outer_opt[1], state.alpha)
        params = optax.apply_updates(state.params,
                                     jax.tree.map(lambda u: meta_lr_scale * u, u_w))
        alpha = state.alpha + keep * meta_lr_scale * u_a
        outer_opt = (o_w, o_a)
    new_state = state.replace(params=params, rest=_mean(r_t), alpha=alpha, outer_opt=outer_opt,
                              step=state.step + 1)
    metrics = {"support_loss_before": jnp.mean(before), "support_loss_after": jnp.mean(after),
               "query_loss": jnp.mean(q_loss), "query_accuracy": jnp.mean(accuracy)}
    return new_state, metrics


def prune(alpha: jax.Array, temperature, threshold, none_index: int | None = 0) -> jax.Array:
    """MetaNAS' pruning of the adapted architecture: edge weights ``float[2, 14, ops]``.

    Per edge, ops whose ``softmax(alpha / T)`` weight is below ``threshold`` are zeroed; per
    intermediate node, input edges whose strongest non-``none`` op is below ``threshold``
    are dropped. The strongest non-``none`` op of each kept edge and the strongest input
    edge of each node are always kept, so the cell stays valid. Kept edges are renormalised
    to sum to 1; dropped edges are all zero. ``none_index``: the position of ``none`` among
    the ops (DARTS': 0), or None when the space has no ``none`` (e.g. MetaNAS' few-shot ops).
    Jittable.
    """
    w = jax.nn.softmax(alpha / temperature, -1)
    real = w if none_index is None else w.at[..., none_index].set(-1.0)  # never the strongest
    best_op = jax.nn.one_hot(jnp.argmax(real, -1), w.shape[-1], dtype=bool)
    op_keep = (w >= threshold) | best_op
    strength = jnp.max(real, -1)  # [2, 14]
    members = jnp.asarray(_NODE_OF_EDGE)  # [4, 14]
    masked = jnp.where(members, strength[:, None, :], -jnp.inf)  # [2, 4, 14]
    best_edge = jax.nn.one_hot(jnp.argmax(masked, -1), members.shape[1], dtype=bool)
    edge_keep = (strength >= threshold) | jnp.any(best_edge & members, 1)  # [2, 14]
    kept = jnp.where(op_keep & edge_keep[..., None], w, 0.0)
    total = jnp.sum(kept, -1, keepdims=True)
    return jnp.where(total > 0, kept / jnp.where(total > 0, total, 1.0), 0.0)


def _none_index(space: DartsSpace) -> int | None:
    return space.primitives.index("none") if "none" in space.primitives else None


def genotype(learner: Learner, alpha) -> np.ndarray:
    """The discrete cell (``int32[32]``): DARTS' derivation of ``alpha`` (metanas) or the fixed
    random cell. Host side."""
    if learner.kind == "metanas":
        return derive(learner.space, np.asarray(alpha))
    if learner.kind == "random_cell":
        return np.asarray(learner.arch, np.int32)
    raise ValueError("a conv4 learner has no cell genotype; genotype() needs kind='metanas' or "
                     "'random_cell'")


@functools.partial(jax.jit, static_argnums=(0, 5))
def _evaluate_chunk(learner: Learner, key, state: MetaState, sampler: EpisodeSampler,
                    temperature, chunk: int, threshold):
    """``chunk`` episodes adapted in parallel, pruned, scored on the query; one program for
    every number of episodes (meta-validation and meta-test share it)."""
    t_last = _schedule(temperature, learner.inner_steps)[-1]

    def one(k):
        k_sample, k_adapt = jax.random.split(k)
        ep = sampler.sample(k_sample)
        p, a, r, _ = adapt(learner, k_adapt, state.params, state.rest, state.alpha,
                           ep.support_x, ep.support_y, temperature)
        weights = (prune(a, t_last, threshold, _none_index(learner.space))
                   if learner.searches else None)
        out, _ = _forward(learner, p, r, weights, ep.query_x)
        return jnp.mean(jnp.argmax(out, -1) == ep.query_y), a

    return _over_tasks(learner, one)(jax.random.split(key, chunk))


def evaluate(learner: Learner, key: jax.Array, state: MetaState, sampler: EpisodeSampler, *,
             episodes: int, chunk: int, temperature, threshold: float,
             inner_steps: int | None = None) -> dict:
    """Meta-test: per episode, adapt on the support set, prune (metanas) at the last inner
    temperature, and score the query set with the pruned weights. Episodes run in chunks of
    ``chunk``, vmapped on device by one compiled program whatever ``episodes`` is (the last
    chunk's surplus is dropped). ``inner_steps`` overrides the learner's (MetaNAS adapts
    longer at meta-test). A support set no larger than ``learner.inner_batch`` is used
    whole at every step (meta-training may draw minibatches from more shots than the test
    episodes have).

    Returns ``{"accuracy", "ci95" (1.96 * std / sqrt(n)), "accuracies" float[n]}`` plus
    ``"alphas"`` ``float[n, *space.alpha_shape]`` (the adapted, unpruned alphas) for metanas.
    """
    if episodes < 1 or chunk < 1:
        raise ValueError(f"evaluate needs episodes >= 1 and chunk >= 1, got {episodes} and "
                         f"{chunk}")
    if inner_steps is not None:
        learner = learner.replace(inner_steps=int(inner_steps))
    if learner.inner_batch >= sampler.ways * sampler.shots:
        learner = learner.replace(inner_batch=0)
    keys = jax.random.split(key, -(-episodes // chunk))
    threshold = jnp.asarray(threshold, jnp.float32)
    parts = [_evaluate_chunk(learner, k, state, sampler, temperature, chunk, threshold)
             for k in keys]  # one host round trip per chunk, not per episode
    accs, alphas = (np.concatenate([np.asarray(p[i]) for p in parts]) for i in (0, 1))
    accs = np.asarray(accs, np.float64).reshape(-1)[:episodes]
    result = {"accuracy": float(accs.mean()),
              "ci95": float(1.96 * accs.std() / np.sqrt(len(accs))),
              "accuracies": accs}
    if learner.searches:
        shape = learner.space.alpha_shape
        result["alphas"] = np.asarray(alphas).reshape((-1,) + shape)[:episodes]
    return result
