"""A task-conditioned REINFORCE controller, meta-trained across tasks (Wong et al., NeurIPS
2018, "Transfer Learning with Neural AutoML").

The LSTM policy of ``ReinforceController`` takes a task embedding as its per-step context:
``learned`` (a trained row per meta-train task, Wong et al.; an unseen task is proposed for
with the mean row and gets a fresh row when fine-tuned), ``data`` (a DeepSets encoder of the
task's per-class feature statistics: ``rho(mean_c phi(features_c))``, so an unseen task gets
a proposal before any trial) or ``none`` (the same controller, unconditioned). Params are one
flat dict: the policy's entries plus ``task_embed`` or the encoder's ``phi_*``/``rho_*``.

``meta_step`` samples ``batch_size`` architectures for each of T tasks (``vmap`` over tasks),
scores them with a per-task fitness function, turns rewards into per-task batch z-scores
(each task's advantages have mean 0 and std 1, so tasks of different fitness scales weigh the
same; no baseline state), and takes one Adam step on the REINFORCE loss summed over tasks.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from nas_jax.evaluators.table import space_from_metadata, space_metadata
from nas_jax.meta.tasks import Task, table_fitness
from nas_jax.strategies.reinforce import Params, ReinforceController
from nas_jax.utils.checkpoint import Checkpointer
from nas_jax.utils.metrics import atomic_write

MODES = ("learned", "data", "none")
CONTROLLER_FILE = "controller.json"


@struct.dataclass
class MetaState:
    """Meta-training state: the controller's params, Adam's state and the step count."""

    params: Params
    opt_state: optax.OptState
    step: jax.Array  # int32[]


def _dense_init(key, fan_in: int, fan_out: int):
    w = jax.random.normal(key, (fan_in, fan_out), jnp.float32) / np.sqrt(max(fan_in, 1))
    return w, jnp.zeros((fan_out,), jnp.float32)


@dataclasses.dataclass(frozen=True)
class ConditionedController(ReinforceController):
    """``ReinforceController`` conditioned on a task embedding of size ``embed_size``.

    Attributes (besides the parent's; ``context_size`` is set from ``mode``/``embed_size``):
      mode: 'learned', 'data' or 'none' (see the module docstring).
      num_tasks: rows of the learned embedding table (meta-train task ids are ``0..n-1``).
      embed_size: E, the task embedding's length (the policy's context size).
      feature_size: F, the length of a task's feature rows (``Task.features`` [C, F]).
      encoder_hidden: width of the set encoder's phi and rho MLPs.
      context_init_scale: the LSTM input weights of the context start uniform in
        ``[-context_init_scale, context_init_scale]``. At ``init_scale`` (0.1) the embedding
        barely moved the policy, which settled on one compromise architecture for every task
        of the synthetic family before learning to use it.
    """

    mode: str = "data"
    num_tasks: int = 1
    embed_size: int = 8
    feature_size: int = 1
    encoder_hidden: int = 32
    context_init_scale: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        if self.mode not in MODES:
            raise ValueError(f"{name}.mode={self.mode!r}; allowed: {', '.join(MODES)}")
        for field in ("num_tasks", "embed_size", "feature_size", "encoder_hidden"):
            if getattr(self, field) < 1:
                raise ValueError(f"{name}.{field}={getattr(self, field)}: must be >= 1")
        object.__setattr__(self, "context_size", 0 if self.mode == "none" else self.embed_size)

    # ------------------------------------------------------------- parameters
    def init_params(self, key: jax.Array) -> Params:
        """The policy's params plus ``task_embed[num_tasks, E]`` (learned) or the set encoder
        ``phi_w1[F, H] .. rho_w2[H, E]`` (data)."""
        k_policy, k_extra, k_context = jax.random.split(key, 3)
        params = dict(super().init_params(k_policy))
        e, h, f = self.embed_size, self.encoder_hidden, self.feature_size
        if self.context_size:
            rows = jax.random.uniform(k_context, (e, 4 * self.hidden_size), jnp.float32,
                                      -self.context_init_scale, self.context_init_scale)
            params["w_x"] = params["w_x"].at[self.hidden_size:].set(rows)
        if self.mode == "learned":
            params["task_embed"] = jax.random.uniform(
                k_extra, (self.num_tasks, e), jnp.float32, -self.init_scale, self.init_scale)
        elif self.mode == "data":
            keys = jax.random.split(k_extra, 4)
            for k, name, (i, o) in zip(keys, ("phi1", "phi2", "rho1", "rho2"),
                                       ((f, h), (h, h), (h, h), (h, e)), strict=True):
                params[f"{name}_w"], params[f"{name}_b"] = _dense_init(k, i, o)
        return params

    def _context(self, context) -> jax.Array:
        # As the parent, but a float context keeps its dtype (float64 gradient checks).
        if context is None:
            return jnp.zeros((self.context_size,), jnp.float32)
        context = jnp.asarray(context)
        if not jnp.issubdtype(context.dtype, jnp.floating):
            context = context.astype(jnp.float32)
        if context.shape != (self.context_size,):
            raise ValueError(f"context has shape {context.shape}; context_size is "
                             f"{self.context_size}")
        return context

    def encode(self, params: Params, features: jax.Array) -> jax.Array:
        """DeepSets: ``rho(mean_c phi(features_c))``, float[E] (``tanh`` output)."""
        features = jnp.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.feature_size:
            raise ValueError(f"task features have shape {features.shape}; the controller's "
                             f"feature_size is {self.feature_size} (features must be [C, "
                             f"{self.feature_size}])")
        h = jax.nn.relu(features @ params["phi1_w"] + params["phi1_b"])
        h = jax.nn.relu(h @ params["phi2_w"] + params["phi2_b"])
        h = jax.nn.relu(jnp.mean(h, axis=0) @ params["rho1_w"] + params["rho1_b"])
        return jnp.tanh(h @ params["rho2_w"] + params["rho2_b"])

    def embed(self, params: Params, task: Task) -> jax.Array:
        """The task's context vector, float[context_size]. Learned mode: the task's row, or
        the mean row for an id outside the table (an unseen task)."""
        if self.mode == "none":
            return jnp.zeros((0,), jnp.float32)
        if self.mode == "data":
            return self.encode(params, task.features)
        table = params["task_embed"]
        i = jnp.asarray(task.task_id, jnp.int32)
        known = (i >= 0) & (i < table.shape[0])
        return jnp.where(known, table[jnp.clip(i, 0, table.shape[0] - 1)], table.mean(0))

    def task_loss(self, params: Params, archs: jax.Array, advantages: jax.Array,
                  task: Task) -> jax.Array:
        """The REINFORCE loss of ``archs`` on ``task`` (gradients reach the embedding)."""
        return self.loss(params, archs, advantages, self.embed(params, task))

    # ------------------------------------------------------------- proposing
    def propose(self, params: Params, task: Task, key: jax.Array, n: int) -> jax.Array:
        """``n`` architectures sampled for ``task`` with no trial on it, int32[n, D]."""
        context = self.embed(params, task)
        keys = jax.random.split(key, n)
        return jax.vmap(lambda k: self.sample(params, k, context)[0])(keys)

    def greedy(self, params: Params, task: Task) -> jax.Array:
        """The policy's greedy architecture for ``task`` (argmax at each step), int32[D]."""
        context = self._context(self.embed(params, task))

        def body(carry, xs):
            state, x = carry
            embed, head_w, head_b, mask = xs
            state, logp = self._step(params, state, x, context, head_w, head_b, mask)
            a = jnp.argmax(logp)
            return (state, embed[a]), a

        xs = (params["embed"], params["head_w"], params["head_b"], self.space.choice_mask())
        _, arch = jax.lax.scan(body, (self._zeros(), params["start"]), xs)
        return arch.astype(jnp.int32)

    def rank(self, params: Params, task: Task, archs: jax.Array) -> jax.Array:
        """``archs`` (int32[N, D]) ordered by decreasing ``log pi(arch | task)``: int32[N]
        indices into ``archs`` (ties keep their order). Over a whole enumerated space this is
        the policy's exact ranking, the zero-shot search that never repeats an architecture.
        Its first entry is the most probable architecture, which can differ from ``greedy``
        (the argmax decision by decision)."""
        context = self.embed(params, task)
        logp = jax.vmap(self.log_prob, in_axes=(None, 0, None))(
            params, jnp.asarray(archs, jnp.int32), context)
        return jnp.argsort(logp, descending=True, stable=True).astype(jnp.int32)

    # ------------------------------------------------------------- meta-training
    def meta_init(self, key: jax.Array) -> MetaState:
        params = self.init_params(key)
        return MetaState(params=params, opt_state=self.optimizer.init(params),
                         step=jnp.array(0, jnp.int32))

    def meta_step(self, key: jax.Array, state: MetaState, tasks: Task, fitness_fn=None):
        """One meta-training step over ``tasks`` (stacked, leading axis T); jittable with
        ``self`` and ``fitness_fn`` static.

        Args:
          fitness_fn: ``fitness_fn(task, archs int32[B, D]) -> float[B]`` for one task; the
            default looks ``archs`` up in ``task.fitness`` (``tasks.table_fitness``).

        Returns:
          The new state and metrics: ``loss``, ``mean_reward`` and, when tasks carry tables,
          ``mean_normalised_reward`` (``(f - min) / (max - min)`` of each task's table).
        """
        if fitness_fn is None:
            def fitness_fn(task, archs):
                return table_fitness(task, archs, self.space)
        num = tasks.task_id.shape[0]
        keys = jax.random.split(jax.random.fold_in(key, state.step), num)

        def one(k, task):
            archs = self.propose(state.params, task, k, self.batch_size)
            reward = self.rewards(fitness_fn(task, archs), jnp.array(0.0, jnp.float32))
            adv = (reward - reward.mean()) / (reward.std() + 1e-8)
            return archs, reward, adv

        archs, reward, adv = jax.vmap(one)(keys, tasks)

        def total(params):
            losses = jax.vmap(self.task_loss, in_axes=(None, 0, 0, 0))(params, archs, adv,
                                                                      tasks)
            return jnp.sum(losses)

        loss, grads = jax.value_and_grad(total)(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "mean_reward": jnp.mean(reward)}
        if tasks.fitness is not None:
            finite = jnp.where(jnp.isfinite(tasks.fitness), tasks.fitness, jnp.nan)
            low = jnp.nanmin(finite, axis=1, keepdims=True)
            high = jnp.nanmax(finite, axis=1, keepdims=True)
            metrics["mean_normalised_reward"] = jnp.mean(
                (reward - low) / jnp.maximum(high - low, 1e-12))
        return MetaState(params=params, opt_state=opt_state, step=state.step + 1), metrics

    # ------------------------------------------------------------- one new task
    def finetune(self, params: Params, task: Task, key: jax.Array | None = None,
                 **overrides) -> FinetuneController:
        """An ordinary ask/tell strategy on ``task`` that starts from ``params``: the task's
        context becomes a trainable ``context`` param (learned mode, unseen task: a fresh row,
        uniform in ``[-init_scale, init_scale]`` from ``key``). ``overrides`` change strategy
        fields (``batch_size``, ``learning_rate``, ...); ``scan_search`` can run it."""
        context = self.embed(params, task)
        if self.mode == "learned" and not 0 <= int(task.task_id) < self.num_tasks:
            if key is None:
                raise ValueError("finetune: an unseen task in learned mode gets a fresh "
                                 "embedding row; pass key= to draw it")
            context = jax.random.uniform(key, (self.embed_size,), jnp.float32,
                                         -self.init_scale, self.init_scale)
        policy = {k: v for k, v in params.items()
                  if k in ("start", "embed", "w_x", "w_h", "b", "head_w", "head_b")}
        start = dict(policy, context=context)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(ReinforceController)
                  if f.name != "context_size"}
        fields.update(overrides)
        return FinetuneController(**fields, context_size=self.context_size,
                                  start=FrozenParams(start))

    # ------------------------------------------------------------- save / restore
    def describe(self) -> dict:
        """JSON-able fields that rebuild this controller (``from_description``)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("space", "context_size")}
        return {"fields": fields, "space": space_metadata(self.space)}

    @classmethod
    def from_description(cls, description: dict) -> ConditionedController:
        return cls(space=space_from_metadata(description["space"]), **description["fields"])


class FrozenParams:
    """Params held by a static (hashable) strategy: hashed and compared by identity."""

    def __init__(self, params: Params):
        self.params = {k: np.asarray(v) for k, v in params.items()}


@dataclasses.dataclass(frozen=True)
class FinetuneController(ReinforceController):
    """``ReinforceController`` on one task, starting from meta-trained params whose trainable
    ``context`` entry is the task embedding; ``init`` ignores its key (the start is given)."""

    start: FrozenParams | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.start is None:
            raise ValueError("FinetuneController.start: build it with "
                             "ConditionedController.finetune(params, task)")

    def init_params(self, key: jax.Array) -> Params:
        del key
        return {k: jnp.asarray(v) for k, v in self.start.params.items()}

    def sample(self, params: Params, key: jax.Array, context=None):
        del context
        return super().sample(params, key, params["context"])

    def log_prob_and_entropy(self, params: Params, arch: jax.Array, context=None):
        del context
        return super().log_prob_and_entropy(params, arch, params["context"])


def save_controller(directory: str, controller: ConditionedController, params: Params,
                    step: int = 0, meta: dict | None = None) -> None:
    """Save ``params`` with orbax under ``directory`` (as ``step``) and the controller's
    description beside them (``controller.json``), so ``load_controller`` rebuilds both."""
    os.makedirs(directory, exist_ok=True)
    text = json.dumps(controller.describe(), indent=2, sort_keys=True)
    atomic_write(os.path.join(directory, CONTROLLER_FILE), lambda f: f.write(text + "\n"))
    with Checkpointer(directory, max_to_keep=1) as ckpt:
        ckpt.save(step, params, meta=meta, force=True)


def load_controller(directory: str) -> tuple[ConditionedController, Params]:
    """The controller and params saved by ``save_controller`` (its latest step)."""
    path = os.path.join(directory, CONTROLLER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved controller at {directory} (no {CONTROLLER_FILE}); "
                                "meta-train one first (experiments/meta_train.py)")
    with open(path, encoding="utf-8") as f:
        controller = ConditionedController.from_description(json.load(f))
    like = jax.eval_shape(controller.init_params, jax.random.key(0))
    with Checkpointer(directory, max_to_keep=1) as ckpt:
        params = ckpt.restore(like)
    return controller, params
