"""One-shot evaluation: one supernet trained on uniformly sampled paths, candidates scored
with its shared weights (SPOS, Guo et al. 2020; RSPS, Li & Talwalkar 2019).

Training: each step samples an architecture uniformly from the space and takes one SGD step
on the supernet with that architecture's one-hot weights. Operations off the sampled path
get a zero gradient; weight decay and momentum still act on them (as PyTorch SGD does with
zeroed gradients). The step is jitted and driven by a Python loop (``train_steps``), like
``HostLoopTrainer``: measured faster than ``lax.scan`` on XLA:CPU (see the module's report).

Scoring: candidates share every weight and differ only in their one-hot input, so one jitted
call ``vmap``s over that input alone; the convolutions see one shared kernel and a larger
batch (no grouped convolutions). Batch norm: before scoring, each candidate's statistics are
recalibrated on ``bn_recalibration_batches`` training batches (as SPOS does); with 0 the
supernet's running statistics from training are used (a mixture over sampled paths).

Training on CPU, NB201 and DARTS (``train_execution="auto"``): the steps are composed from per-unit
programs (``supernet.composed``, ``ComposedExecutor``'s trainer): only the sampled path runs,
as in SPOS' own implementation, so batch statistics move only for the operations on it (the
jitted step runs every operation under its one-hot weight and moves them all), and the
same weights, batches, paths and optimizer otherwise. Measured on 2 CPU cores: NB201 C=8,
N=1 on the 8x8 digits, 13.2 ms per step against 18.4 ms for the jitted mixture step, and
7.7 s against 10.7 s to the 20th step (compiles included); on the C=16, N=5 network 0.40 s
per step against 0.56 s for a switch supernet's (docs/benchmarks.md; the mixture's
params-only step took ~2 s on an AMD EPYC). Elsewhere (``"jit"``) the jitted mixture step.

The trained supernet is an explicit pytree (``SupernetState``) so a runner can checkpoint and
restore it: ``state = evaluator.train_supernet(key)``, ``evaluator.with_supernet(state)``.
Both training executions read and write the same ``SupernetState``, so a checkpoint of one
resumes in the other.
"""

from __future__ import annotations

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nas_jax import ops
from nas_jax.evaluators.population import init_candidate, network_graphdef, supports_composed
from nas_jax.train.steps import Recipe, cross_entropy, draw_batch, evaluate, make_apply, train_step


@flax.struct.dataclass
class SupernetState:
    """Everything a resumed supernet training needs: weights, BN statistics, optimizer
    state, the training key (paths and batches derive from it) and the next step."""

    params: object
    stats: object
    opt_state: object
    key: jax.Array
    step: jax.Array


def init_supernet(space, recipe: Recipe, key: jax.Array) -> SupernetState:
    """A freshly initialised supernet at step 0 (jittable with ``space``, ``recipe`` bound)."""
    params, stats, k_train = init_candidate(space, None, key)
    opt_state = recipe.make_optimizer().init(params)
    return SupernetState(params, stats, opt_state, k_train, jnp.zeros((), jnp.int32))


def supernet_step(space, recipe: Recipe, state: SupernetState, train_xy):
    """One SPOS step: sample ``space.sample(fold_in(k_arch, step))``, train its one-hot path
    on batch ``step``. Returns ``(state, loss)``."""
    k_arch, k_data = jax.random.split(state.key)
    arch = space.sample(jax.random.fold_in(k_arch, state.step))
    apply = make_apply(network_graphdef(space), space.one_hot(arch))
    params, stats, opt_state, loss = train_step(
        apply, recipe.make_optimizer(), recipe, state.params, state.stats, state.opt_state,
        k_data, state.step, train_xy)
    return state.replace(params=params, stats=stats, opt_state=opt_state,
                         step=state.step + 1), loss


def sampled_paths(space, key: jax.Array, start: int, num: int) -> np.ndarray:
    """The paths ``supernet_step`` trains at steps ``start .. start + num - 1`` (``space.sample
    (fold_in(key, step))``), read to the host in one transfer: ``int[num, D]``."""
    steps = jnp.arange(start, start + num, dtype=jnp.int32)
    return np.asarray(jax.vmap(lambda i: space.sample(jax.random.fold_in(key, i)))(steps))


def recalibrate_stats(apply, params, stats, key: jax.Array, train_xy, num_batches: int,
                      batch_size: int):
    """BN statistics re-estimated for one architecture: the mean over ``num_batches`` train
    batches (drawn from ``key``) of each BN layer's batch mean and (biased) batch variance,
    the network running in train mode (like PyTorch's ``momentum=None`` cumulative average).
    Also returns the mean train-mode loss on those batches.

    Each batch starts from zeroed statistics, so the EMA update of ``ops.BatchNorm`` leaves
    ``(1 - BN_MOMENTUM) * batch_moment``; the sum is rescaled accordingly.
    """
    zero = jax.tree.map(jnp.zeros_like, stats)

    def body(acc, j):
        x, y = draw_batch(key, j, *train_xy, batch_size)
        logits, new = apply(params, zero, x, True)
        return (jax.tree.map(jnp.add, acc[0], new), acc[1] + cross_entropy(logits, y)), None

    (total, loss), _ = jax.lax.scan(body, (zero, 0.0), jnp.arange(num_batches))
    scale = 1.0 / (num_batches * (1.0 - ops.BN_MOMENTUM))
    return jax.tree.map(lambda s: s * scale, total), loss / num_batches


def score_candidate(space, recipe: Recipe, num_recalibration: int, params, stats,
                    weights: jax.Array, key: jax.Array, train_xy, valid_xy) -> dict:
    """One candidate (``weights`` ``float[D, C]``) scored with the supernet's shared weights:
    ``valid_accuracy``, ``valid_loss``, ``train_loss`` (train-mode loss on the recalibration
    batches, or on one train batch when ``num_recalibration`` is 0) and ``finite``."""
    apply = make_apply(network_graphdef(space), weights)
    recal_stats, train_loss = recalibrate_stats(
        apply, params, stats, key, train_xy, max(num_recalibration, 1), recipe.batch_size)
    if num_recalibration > 0:
        stats = recal_stats
    scores = evaluate(apply, params, stats, valid_xy, recipe.eval_batch_size)
    return {**scores, "train_loss": train_loss,
            "finite": jnp.isfinite(scores["valid_loss"]) & jnp.isfinite(train_loss)}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def score_population(space, recipe: Recipe, num_recalibration: int, params, stats,
                     weights: jax.Array, key: jax.Array, train_xy, valid_xy) -> dict:
    """``score_candidate`` for ``weights`` ``float[P, D, C]`` in one call, vmapped over the
    weights only (parameters, statistics, batches and ``key`` shared): metrics ``[P]``."""
    one = functools.partial(score_candidate, space, recipe, num_recalibration, params, stats)
    return jax.vmap(one, in_axes=(0, None, None, None))(weights, key, train_xy, valid_xy)


TRAIN_EXECUTIONS = ("auto", "jit", "composed")
_init_supernet = jax.jit(init_supernet, static_argnums=(0, 1))
_supernet_step = jax.jit(supernet_step, static_argnums=(0, 1), donate_argnums=(2,))


@dataclasses.dataclass(frozen=True, eq=False)
class OneShotEvaluator:
    """``fitness, metrics = evaluator(key, archs)``: valid accuracy with shared weights.

    Attributes:
      space: the search space (its supernet is built from it).
      train: ``(x, y)`` device arrays: supernet training and BN recalibration batches.
      valid: ``(x, y)`` device arrays the candidates are scored on.
      recipe: the supernet's training recipe (``steps`` = supernet steps; ``batch_size`` is
        also the recalibration batch size; ``eval_batch_size`` the scoring batch size).
      bn_recalibration_batches: train batches per candidate for BN statistics; 0 uses the
        supernet's running statistics.
      supernet: the trained supernet; if None, the first call trains one with
        ``jax.random.key(seed)`` (a runner should train it explicitly and checkpoint it).
      seed: the key of that lazy training.
      train_execution: how the supernet's steps run (``TRAIN_EXECUTIONS``): ``jit`` (one
        jitted step on the mixture supernet), ``composed`` (NB201 and DARTS: only the sampled
        path, per-unit programs), ``auto`` (composed on CPU for NB201 and DARTS, else jit).
    """

    space: object
    train: tuple
    valid: tuple
    recipe: Recipe
    bn_recalibration_batches: int = 4
    supernet: SupernetState | None = None
    seed: int = 0
    train_execution: str = "auto"

    execution = "vmap"  # scoring is one vmapped call with shared weights, on every backend

    def __post_init__(self):
        if self.train_execution not in TRAIN_EXECUTIONS:
            raise ValueError(f"train_execution={self.train_execution!r}; allowed: "
                             f"{', '.join(TRAIN_EXECUTIONS)}")
        if self.train_execution == "composed" and not supports_composed(self.space):
            raise ValueError(f"train_execution='composed': the {type(self.space).__name__} "
                             "network has no composed form (NB201 and DARTS only); use jit")
        if self.bn_recalibration_batches < 0:
            raise ValueError(f"bn_recalibration_batches={self.bn_recalibration_batches}: "
                             "must be >= 0")

    def init_supernet(self, key: jax.Array) -> SupernetState:
        """A fresh supernet at step 0 (its training key derives from ``key``)."""
        from nas_jax.evaluators.executors import init_op_by_op

        if init_op_by_op(self.space):  # see executors.supernet_init
            return init_supernet(self.space, self.recipe, key)
        return _init_supernet(self.space, self.recipe, key)

    def train_steps(self, state: SupernetState, num_steps: int):
        """Continue training ``state`` for ``num_steps`` steps (for checkpointing in chunks);
        returns ``(state, losses float[num_steps])``. The input state's buffers are donated
        (``jit``)."""
        if self.resolved_train_execution == "composed":
            return self._composed_steps(state, num_steps)
        losses = []
        for _ in range(num_steps):
            state, loss = _supernet_step(self.space, self.recipe, state, self.train)
            losses.append(loss)
        return state, jnp.stack(losses) if losses else jnp.zeros((0,), jnp.float32)

    @property
    def resolved_train_execution(self) -> str:
        if self.train_execution != "auto":
            return self.train_execution
        on_cpu = jax.default_backend() == "cpu"
        return "composed" if on_cpu and supports_composed(self.space) else "jit"

    @functools.cached_property
    def _composed_trainer(self):
        from nas_jax.evaluators.executors import ComposedExecutor

        return ComposedExecutor(self.space, self.recipe).trainer

    def _composed_steps(self, state: SupernetState, num_steps: int):
        """``supernet_step``'s paths, batches and updates, composed from per-unit programs."""
        trainer = self._composed_trainer
        k_arch, k_data = jax.random.split(state.key)
        start = int(state.step)
        archs = sampled_paths(self.space, k_arch, start, num_steps)
        params, stats, opt_state = trainer.prepare(state.params, state.stats, state.opt_state)
        losses = []
        for j in range(num_steps):
            params, stats, opt_state, loss = trainer.step(
                trainer.plan_arch(archs[j]), params, stats, opt_state, k_data, start + j,
                self.train)
            losses.append(loss)
        params, stats, opt_state = trainer.restore(params, stats, opt_state, state.params,
                                                   state.stats)
        state = state.replace(params=params, stats=stats, opt_state=opt_state,
                              step=state.step + num_steps)
        return state, jnp.stack(losses) if losses else jnp.zeros((0,), jnp.float32)

    def train_supernet(self, key: jax.Array) -> SupernetState:
        """Initialise and train the supernet for ``recipe.steps`` steps."""
        state, losses = self.train_steps(self.init_supernet(key), self.recipe.steps)
        if not bool(jnp.all(jnp.isfinite(losses))):
            logging.warning("supernet training produced a non-finite loss; candidates scored "
                            "with it will get the worst fitness")
        return state

    def with_supernet(self, state: SupernetState) -> OneShotEvaluator:
        """This evaluator scoring with ``state`` (e.g. restored from a checkpoint)."""
        return dataclasses.replace(self, supernet=state)

    @functools.cached_property
    def _lazy_supernet(self) -> SupernetState:
        logging.info("training the one-shot supernet (%d steps) with key(%d)",
                     self.recipe.steps, self.seed)
        return self.train_supernet(jax.random.key(self.seed))

    def __call__(self, key: jax.Array, archs) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Score ``archs`` (``int32[P, D]``). The recalibration batches are drawn from ``key``
        and are the same for every candidate, so a candidate's score does not depend on the
        rest of the population."""
        state = self.supernet if self.supernet is not None else self._lazy_supernet
        archs = jnp.asarray(archs, jnp.int32)
        weights = jax.vmap(self.space.one_hot)(archs)
        out = score_population(self.space, self.recipe, self.bn_recalibration_batches,
                               state.params, state.stats, weights, key, self.train, self.valid)
        finite = np.asarray(out["finite"])
        if not finite.all():
            logging.warning("%d of %d candidates got a non-finite loss with the shared weights; "
                            "they get the worst fitness", int((~finite).sum()), finite.size)
        fitness = jnp.where(out["finite"], out["valid_accuracy"], -jnp.inf)
        return fitness, out
