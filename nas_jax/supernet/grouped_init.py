"""A network's init compiled as a few batched draws: one per kind and shape of parameter.

XLA:CPU compiles a jitted init of a large supernet slowly because every parameter is its own
random draw, a kernel of its own: 24 s for the NB201 C=16, N=5 supernet (933 weights and
statistics) on 2 cores, of which 23 s are its per-kernel draws. Its kernels come in 12 kinds
and shapes. ``GroupedInit`` records the build once (``ops.DeferredKeys``: each draw's key
index, kind and shape), and compiles one program that draws each (kind, shape) group at
once, vmapped over the group's keys, and returns the stacks and the constant leaves
(batch-norm scales, biases, statistics). The stacks are cut into the parameters outside the
program, one dispatch per group (the draws alone compiled in 3.4 s, and in 8.9 s with the
stacks sliced inside the program). First call there: 7.4 s against 24.2 s.

The values are those of ``population.init_candidate`` compiled: the same keys
(``fold_in(key, i)``, the i-th draw of the build) and the same function of each key
(tested bit for bit).
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
from flax import nnx

from nas_jax import ops


class GroupedInit:
    """``init(key, weights=None) -> (params, stats, data_key)`` like
    ``population.init_candidate(space, None, key, **options)``, compiled as grouped draws.

    Args:
      build: ``build(rngs) -> nnx.Module``, the network constructed from ``rngs``.
    """

    def __init__(self, build):
        model = build(ops.DeferredKeys())
        _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        self._treedefs = (jax.tree.structure(params), jax.tree.structure(stats))
        param_leaves = jax.tree.leaves(params)
        self._num_params = len(param_leaves)
        leaves = param_leaves + jax.tree.leaves(stats)
        groups = collections.defaultdict(list)  # (kind, shape) -> deferred draws
        self._slots = []  # per leaf: ("draw", group, position) or ("const", index)
        consts = []
        for leaf in leaves:
            if isinstance(leaf, ops.Deferred):
                members = groups[(leaf.kind, leaf.shape)]
                self._slots.append(("draw", (leaf.kind, leaf.shape), len(members)))
                members.append(leaf)
            else:
                self._slots.append(("const", len(consts)))
                consts.append(leaf)
        self._groups = dict(groups)
        self.num_groups = len(self._groups)

        def program(key):
            k_init, k_data = jax.random.split(key)
            stacks = {}
            for name, members in self._groups.items():
                indices = jnp.asarray([m.index for m in members], jnp.uint32)
                keys = jax.vmap(lambda i: jax.random.fold_in(k_init, i))(indices)
                stacks[name] = jax.vmap(members[0].fn)(keys)
            return stacks, [jnp.asarray(c) for c in consts], k_data

        self._program = jax.jit(program)

    def __call__(self, key: jax.Array, weights=None):
        del weights  # cell spaces: no rescaling to the candidate (population.init_candidate)
        stacks, consts, k_data = self._program(key)
        cut = {name: jnp.unstack(stack) for name, stack in stacks.items()}
        leaves = [cut[slot[1]][slot[2]] if slot[0] == "draw" else consts[slot[1]]
                  for slot in self._slots]
        params_def, stats_def = self._treedefs
        n = self._num_params
        return (jax.tree.unflatten(params_def, leaves[:n]),
                jax.tree.unflatten(stats_def, leaves[n:]), k_data)
