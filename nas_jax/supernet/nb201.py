"""NAS-Bench-201 networks: a supernet that takes the architecture as an input, and a
standalone network that computes only one architecture's chosen operations.

Both share one module tree layout (``layers/<i>/e<edge>_<op>/...``), so the standalone
network's state is a sub-tree of the supernet's: ``extract_standalone`` copies the
chosen operations' weights across, and for a one-hot input both give the same output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nas_jax import ops
from nas_jax.spaces.nb201 import CONV_KERNEL, EDGES, NUM_NODES, OPS, NB201Space

SELECTS = ("mixture", "switch")


class NB201Cell(nnx.Module):
    """One cell. ``edge_ops[e]`` lists the operations present on edge ``e``.

    ``select`` says how a supernet cell combines an edge's operations: ``mixture`` computes
    all of them and sums them weighted (DARTS; exact gradients for every weight); ``switch``
    computes only the edge's arg-max operation under ``ops.remat_switch`` and scales it by its
    weight (one compiled program for every architecture that costs only the chosen ops at
    run time; the GDAS forward). For one-hot weights both give the same outputs.
    """

    def __init__(self, channels: int, edge_ops: tuple[tuple[str, ...], ...], *,
                 select: str = "mixture", impl: str = "xla", op_names: tuple[str, ...] = OPS,
                 rngs: ops.Keys):
        if select not in SELECTS:
            raise ValueError(f"select={select!r}; allowed: {', '.join(SELECTS)}")
        self.edge_ops = edge_ops
        self.op_names = tuple(op_names)  # the space's ops: the columns of the mixture weights
        self.select = select
        for e, names in enumerate(edge_ops):
            for name in names:
                if name in CONV_KERNEL:
                    block = ops.ReLUConvBN(channels, channels, CONV_KERNEL[name], impl=impl,
                                           rngs=rngs)
                    setattr(self, f"e{e}_{name}", block)

    def _apply(self, e: int, name: str, h: jax.Array, train: bool) -> jax.Array | None:
        if name == "none":
            return None
        if name == "skip_connect":
            return h
        if name == "avg_pool_3x3":
            return ops.avg_pool_3x3(h)
        return getattr(self, f"e{e}_{name}")(h, train)

    def _switched(self, e: int, h: jax.Array, weights: jax.Array, train: bool) -> jax.Array:
        """Edge ``e``'s arg-max op under ``ops.remat_switch``, scaled by its weight.

        The edge's convolution blocks go through the switch as split state (parameters and
        batch statistics in, updated statistics out), so the switch is a pure function and
        its gradient can recompute the taken branch instead of storing every branch's
        intermediates (see ``ops.remat_switch``).
        """
        idx = jnp.argmax(weights[e])
        conv_names = [name for name in self.op_names if name in CONV_KERNEL]
        blocks = [getattr(self, f"e{e}_{name}") for name in conv_names]
        graphdefs, states = zip(*(nnx.split(b) for b in blocks)) if blocks else ((), ())

        def branch(name):
            def run(states, h):
                if name not in CONV_KERNEL:
                    out = self._apply(e, name, h, train)
                    return (jnp.zeros_like(h) if out is None else out), states
                j = conv_names.index(name)
                block = nnx.merge(graphdefs[j], states[j], copy=True)
                out = block(h, train)
                return out, tuple(nnx.state(block) if k == j else st
                                  for k, st in enumerate(states))
            return run

        out, states = ops.remat_switch(idx, [branch(n) for n in self.op_names], tuple(states), h)
        for block, state in zip(blocks, states):
            nnx.update(block, state)
        return weights[e, idx] * out

    def __call__(self, x: jax.Array, weights: jax.Array | None, train: bool) -> jax.Array:
        """``weights``: ``float[6, len(ops)]`` mixture weights per edge, or None (single op
        per edge)."""
        nodes = [x]
        for node in range(1, NUM_NODES):
            acc = jnp.zeros_like(x)
            for e, (dst, src) in enumerate(EDGES):
                if dst != node:
                    continue
                if weights is not None and self.select == "switch":
                    acc = acc + self._switched(e, nodes[src], weights, train)
                    continue
                for name in self.edge_ops[e]:
                    out = self._apply(e, name, nodes[src], train)
                    if out is None:
                        continue
                    if weights is not None:
                        out = weights[e, self.op_names.index(name)] * out
                    acc = acc + out
            nodes.append(acc)
        return nodes[-1]


class NB201Network(nnx.Module):
    """Stem, 3 stages of N cells (C, 2C, 4C channels) joined by residual reductions, head.

    Args:
      space: the NB201 space (its channels, cells_per_stage, input_shape, num_classes).
      arch: None for the supernet (every operation on every edge, mixed by the ``weights``
        given at call time); an ``int[6]`` architecture for a standalone network.
    """

    def __init__(self, space: NB201Space, arch=None, *, select: str = "mixture",
                 conv_impl: str = "xla", rngs: ops.Keys):
        if arch is None:
            edge_ops = tuple(space.ops for _ in EDGES)
        else:
            arch = space.validate(arch)
            edge_ops = tuple(() if space.ops[a] == "none" else (space.ops[a],) for a in arch)
        self.is_supernet = arch is None
        c_in = space.input_shape[-1]
        c = space.channels
        self.stem = ops.Conv(c_in, c, 3, impl=conv_impl, rngs=rngs)
        self.stem_bn = ops.BatchNorm(c)
        layers = []
        for stage, ch in enumerate((c, 2 * c, 4 * c)):
            if stage > 0:
                layers.append(ops.ResidualReduction(ch // 2, ch, impl=conv_impl, rngs=rngs))
            layers.extend(NB201Cell(ch, edge_ops, select=select, impl=conv_impl, op_names=space.ops,
                                    rngs=rngs)
                          for _ in range(space.cells_per_stage))
        self.layers = nnx.List(layers)
        self.head_bn = ops.BatchNorm(4 * c)
        self.classifier = ops.Dense(4 * c, space.num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, weights: jax.Array | None = None, *,
                 train: bool = False) -> jax.Array:
        """Logits ``float[B, classes]``; the supernet needs ``weights``
        ``float[6, len(space.ops)]``."""
        if self.is_supernet and weights is None:
            raise ValueError("the NB201 supernet needs weights float[6, len(space.ops)] (e.g. "
                             "space.one_hot)")
        h = self.stem_bn(self.stem(x), train)
        for layer in self.layers:
            if isinstance(layer, NB201Cell):
                h = layer(h, weights if self.is_supernet else None, train)
            else:
                h = layer(h, train)
        h = jax.nn.relu(self.head_bn(h, train))
        return self.classifier(jnp.mean(h, axis=(1, 2)))


def extract_standalone(supernet_state: nnx.State, standalone_state: nnx.State) -> nnx.State:
    """Copy the supernet's weights into a standalone network's state (same paths)."""
    flat_super = dict(nnx.to_flat_state(supernet_state))
    flat = nnx.to_flat_state(standalone_state)
    return nnx.from_flat_state([(path, flat_super[path]) for path, _ in flat])


def one_hot_weights(space: NB201Space, arch) -> jax.Array:
    """The supernet input for one discrete architecture."""
    return space.one_hot(jnp.asarray(np.asarray(arch), jnp.int32))
