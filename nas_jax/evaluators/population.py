"""Population training: each candidate trained from its own init, scored on the valid split.

One compiled program serves every candidate: the supernet takes the architecture as a
one-hot input, so a new architecture never triggers a recompile. How the population is
executed is a measured, per-backend choice (see ``resolve_execution``):

- ``vmap``: one call trains the whole population (weights stacked on a leading axis).
  Expected to win on GPUs/TPUs.
- ``loop``: candidates one after another through the same compiled programs (init, one
  training step, score), the steps driven by a Python loop with asynchronous dispatch
  (``HostLoopTrainer``: nothing waits on the host per step). On XLA:CPU, vmapped
  convolutions over per-candidate weights become grouped convolutions, measured 50-90x
  slower per candidate than the single-candidate program, and a step inside ``lax.scan``
  ran 3.5x slower than the same step dispatched from Python, so a host loop is the CPU
  choice.
- ``switch``: the same host loop on a supernet that computes only each edge's chosen op
  (NB201; ``auto``'s choice on CPU where the network has it).
- ``compiled``: one standalone program per distinct (canonical) architecture.
- ``composed``: the host loop with each step composed from per-unit programs (NB201 and
  DARTS, ``auto``'s choice on CPU for DARTS; ``supernet.composed``): only the chosen
  operations, each as its own top-level program, with no compile per architecture.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from nas_jax import ops
from nas_jax.evaluators.executors import CompiledExecutor, ComposedExecutor, LoopExecutor
from nas_jax.spaces.darts import DartsSpace
from nas_jax.spaces.macro import MacroCNNSpace, MLPSpace
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.supernet.darts import DartsNetwork
from nas_jax.supernet.macro import MacroCNNNetwork, MLPNetwork, match_standalone_init
from nas_jax.supernet.nb201 import NB201Network
from nas_jax.train.steps import HostLoopTrainer, Recipe, make_apply, train_and_score
from nas_jax.utils import sharding

EXECUTIONS = ("auto", "loop", "switch", "composed", "compiled", "vmap")
# Network options of the supernet each host-loop execution trains.
EXECUTION_OPTIONS = {"switch": {"select": "switch", "conv_impl": "taps"}}
MESH_LOOP_EXECUTIONS = ("loop", "switch", "composed")  # host-loop executions that use a mesh


def resolve_execution(execution: str, space=None) -> str:
    """``auto`` -> ``vmap`` on accelerators; on CPU ``switch`` where ``space``'s network has
    it (NB201), ``composed`` for DARTS, else ``loop``; any other value as given.

    ``switch`` won every CPU measurement of NB201 population training (2 cores, one run
    each side by side; docs/benchmarks.md): C=8, N=1 on 8x8 digits 63 s against 99 s for 16
    cells x 3 seeds; the population benchmark's small workload 48 s against 53 s and its
    large one 287 s against 430 s. (``composed`` is a little faster on the larger NB201
    networks, a little slower on the main job's.) For DARTS, which has no switch, ``composed``
    ran 4 cells x 10 steps (C=8, 5 cells, 16x16, batch 32) in 304 s from a cold start and
    4.0 s once compiled, against 526 s and 18.7 s for ``loop``.
    """
    if execution not in EXECUTIONS:
        raise ValueError(f"execution={execution!r}; allowed: {', '.join(EXECUTIONS)}")
    if execution == "auto":
        if jax.default_backend() != "cpu":
            return "vmap"
        if space is not None and supports_switch(space):
            return "switch"
        return "composed" if isinstance(space, DartsSpace) else "loop"
    return execution


NETWORKS = {"nb201": (NB201Space, NB201Network), "macro_cnn": (MacroCNNSpace, MacroCNNNetwork),
            "mlp": (MLPSpace, MLPNetwork),
            "darts": (DartsSpace, DartsNetwork)}  # registry name -> (space type, network)


def has_network(space) -> bool:
    return any(isinstance(space, space_type) for space_type, _ in NETWORKS.values())


def supports_switch(space) -> bool:
    """Whether the space's supernet has a ``select="switch"`` mode (see ``NB201Cell``)."""
    for space_type, network in NETWORKS.values():
        if isinstance(space, space_type):
            return "select" in inspect.signature(network.__init__).parameters
    return False


def supports_composed(space) -> bool:
    """Whether the space's network has a composed form (``supernet.composed``: NB201 and
    DARTS)."""
    return isinstance(space, NB201Space | DartsSpace)


def network_space_names() -> tuple[str, ...]:
    return tuple(NETWORKS)


def build_network(space, arch=None, *, rngs: ops.Keys, **options) -> nnx.Module:
    """The supernet (``arch=None``) or standalone network for a space; ``options`` go to the
    network's constructor (e.g. NB201's ``select``/``conv_impl``)."""
    for space_type, network in NETWORKS.values():
        if isinstance(space, space_type):
            return network(space, arch, rngs=rngs, **options)
    raise ValueError(f"no network is registered for space {type(space).__name__}; "
                     f"networks exist for: {', '.join(NETWORKS)}")


def init_candidate(space, arch, key: jax.Array, weights: jax.Array | None = None, **options):
    """Fresh weights of a supernet (``arch=None``) or standalone network, and the key for
    its batches: ``(params, stats, data_key)``. Jittable with ``space`` and ``arch`` bound.

    ``weights`` (one candidate's one-hot supernet input) marks a supernet init that will
    train that candidate from scratch: for the macro spaces, whose supernet holds the largest
    shape of every layer, each kernel is then rescaled to the init scale of the candidate's
    own fan-in (``supernet.macro.match_standalone_init``), as its standalone network would
    start. Cell spaces (NB201, DARTS) need no rescaling: their shapes do not change.
    """
    k_init, k_data = jax.random.split(key)
    model = build_network(space, arch, rngs=ops.ParamKeys(k_init), **options)
    _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    if arch is None and weights is not None and isinstance(space, MacroCNNSpace | MLPSpace):
        params = match_standalone_init(space, params, weights)
    return params, stats, k_data


def network_graphdef(space, arch=None, **options) -> nnx.GraphDef:
    """The network's graph definition, from an abstract build (no weights computed)."""
    abstract = nnx.eval_shape(lambda: build_network(space, arch, rngs=ops.ParamKeys(0), **options))
    return nnx.split(abstract, nnx.Param, nnx.BatchStat)[0]


@dataclasses.dataclass(frozen=True, eq=False)
class PopulationEvaluator:
    """``fitness, metrics = evaluator(key, archs)``: valid accuracy after training.

    Attributes:
      space: the search space (its supernet is built from it).
      train: ``(x, y)`` device arrays the candidates are trained on.
      valid: ``(x, y)`` device arrays they are scored on.
      recipe: the per-candidate training recipe.
      execution: one of ``EXECUTIONS`` (``auto``: see ``resolve_execution``).
      mesh: optional ``(candidates, data)`` mesh (``utils.sharding.make_mesh``). ``vmap``
        splits the population over ``candidates`` and each candidate's batch over ``data``;
        the host-loop executions (``MESH_LOOP_EXECUTIONS``) place candidates on the mesh's
        devices round-robin so their work overlaps (one compile per device); ``compiled``
        ignores it. Across processes each evaluates its share and every process gets the
        full result. Results equal the single-device ones.
    """

    space: object
    train: tuple
    valid: tuple
    recipe: Recipe
    execution: str = "auto"
    mesh: jax.sharding.Mesh | None = None

    def __post_init__(self):
        object.__setattr__(self, "execution", resolve_execution(self.execution, self.space))
        if self.execution == "switch" and not supports_switch(self.space):
            raise ValueError(f"execution='switch': the {type(self.space).__name__} network "
                             "has no switch mode; use loop, compiled or vmap")
        if self.execution == "composed" and not supports_composed(self.space):
            raise ValueError(f"execution='composed': the {type(self.space).__name__} network "
                             "has no composed form (NB201 and DARTS only); use loop, compiled "
                             "or vmap")

    def _train_one(self, key: jax.Array, weights: jax.Array, train, valid) -> dict[str, jax.Array]:
        params, stats, k_data = init_candidate(self.space, None, key, weights)
        apply = make_apply(network_graphdef(self.space), weights)
        if self.mesh is not None:
            apply = sharding.constrain_batch(apply)
        return train_and_score(apply, params, stats, k_data, train, valid, self.recipe)

    @functools.cached_property
    def _host_loop(self) -> LoopExecutor | ComposedExecutor:
        if self.execution == "composed":
            return ComposedExecutor(self.space, self.recipe)
        return LoopExecutor(self.space, self.recipe, **EXECUTION_OPTIONS.get(self.execution, {}))

    @functools.cached_property
    def _compiled(self):
        return CompiledExecutor(self.space, self.recipe)

    @functools.cached_property
    def _batched(self):
        in_axes = (0, 0, None, None)
        train_all = jax.vmap(self._train_one, in_axes=in_axes)
        if self.mesh is None:
            return jax.jit(train_all)
        return sharding.jit_over_candidates(train_all, self.mesh, in_axes)

    @functools.cached_property
    def _mesh_data(self):
        """``(train, valid)`` replicated over the mesh (vmap) or copied to each of this
        process's mesh devices (loop), once per evaluator."""
        if self.execution == "vmap":
            return sharding.put((self.train, self.valid), sharding.replicated(self.mesh))
        return {d: jax.device_put((self.train, self.valid), d)
                for d in sharding.local_devices(self.mesh)}

    def _vmap_on_mesh(self, keys, weights) -> dict[str, jax.Array]:
        n = keys.shape[0]
        padded = sharding.pad_rows((keys, weights), sharding.padded_size(n, self.mesh))
        placed = sharding.put(padded, sharding.candidate_sharding(self.mesh))
        out = sharding.gather(self._batched(*placed, *self._mesh_data))
        return jax.tree.map(lambda x: jnp.asarray(x[:n]), out)

    def _loop_on_mesh(self, keys, weights) -> dict[str, jax.Array]:
        init, trainer = self._host_loop.init, self._host_loop.trainer
        devices = sharding.local_devices(self.mesh)
        share = sharding.process_share(keys.shape[0])
        rows = []
        for j, i in enumerate(share or [0]):  # an empty share computes one row to drop
            device = devices[j % len(devices)]
            key, w = jax.device_put((keys[i], weights[i]), device)
            rows.append(trainer(*init(key, w), w, *self._mesh_data[device]))
        local = jax.tree.map(lambda *xs: np.stack(xs)[: len(share)], *jax.device_get(rows))
        return jax.tree.map(jnp.asarray, sharding.allgather_shares(local, keys.shape[0]))

    def __call__(self, key: jax.Array, archs) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Train and score ``archs`` (``int32[P, D]``); candidate ``i`` uses ``fold_in(key, i)``."""
        archs = jnp.asarray(archs, jnp.int32)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(archs.shape[0]))
        weights = jax.vmap(self.space.one_hot)(archs)
        # The data are arguments, not captured constants: the compiled programs stay small and
        # are shared (and persistently cached) across datasets of the same shapes.
        if self.mesh is not None and self.execution == "vmap":
            out = self._vmap_on_mesh(keys, weights)
        elif self.mesh is not None and self.execution in MESH_LOOP_EXECUTIONS:
            out = self._loop_on_mesh(keys, weights)
        elif self.execution == "vmap":
            out = self._batched(keys, weights, self.train, self.valid)
        elif self.execution == "compiled":
            out = self._compiled(keys, np.asarray(archs), None, self.train, self.valid)
        else:
            out = self._host_loop(keys, archs, weights, self.train, self.valid)
        finite = np.asarray(out["finite"])
        if not finite.all():
            logging.warning("%d of %d candidates diverged (non-finite loss); they get the "
                            "worst fitness", int((~finite).sum()), finite.size)
        fitness = jnp.where(out["finite"], out["valid_accuracy"], -jnp.inf)
        return fitness, out


def train_standalone(key: jax.Array, space, arch, train_xy, eval_xy,
                     recipe: Recipe) -> dict[str, jax.Array]:
    """Train one architecture's standalone network from scratch; score it on ``eval_xy``.

    Compiled once per architecture (the architecture is static): used to retrain the
    search's result, where only the chosen operations should cost time. Trained with the
    ``HostLoopTrainer`` (measured faster than ``lax.scan`` for one network on XLA:CPU).
    """
    arch = tuple(int(a) for a in np.asarray(arch))
    trainer = HostLoopTrainer(network_graphdef(space, arch), recipe)
    init = jax.jit(functools.partial(init_candidate, space, arch))
    return trainer(*init(key), None, train_xy, eval_xy)
