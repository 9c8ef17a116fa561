"""DARTS CIFAR networks: a supernet that takes the architecture as an input, and a standalone
network that computes only one architecture's chosen operations (DARTS' ``NetworkCIFAR``).

Both share one module tree layout (``cells/<i>/e<edge>_<op>/...`` plus ``preprocess0/1``), so
a standalone network's state is a sub-tree of the supernet's: ``extract_standalone`` copies
the chosen operations' weights across, and for a one-hot input both give the same output.

The supernet mixes per edge: ``node = sum_edges sum_ops w[cell type, edge, op] * op(input)``.
Its weights come either per decision (``float[32, 8]``, e.g. ``space.one_hot(arch)``,
converted by ``edge_weights``) or per edge (``float[2, 14, 8]`` = ``space.alpha_shape``, e.g.
``softmax(alpha)`` for DARTS or a Gumbel sample for GDAS); the 8 is the number of ops,
``len(space.primitives)`` (``ALPHA_SHAPE`` is DARTS' default). ``none`` is never computed: it
would add zeros.

Batch norm: by default every BN has a scale and shift (``affine=True``), as in DARTS'
evaluation network, so a one-hot supernet trains exactly the standalone network and
parameter counts match ``DartsSpace.num_params``. ``affine=False, pool_bn=True`` gives DARTS'
search-time form (``model_search.py``): affine-free BN in the cells (the architecture weights
alone scale each op) and an affine-free BN after each pooling op; the stem stays affine. Build
the standalone with the same flags for exact equality. (An affine BN at its init, scale 1 and
shift 0, computes the same as an affine-free one.)

Training-time regularisers of DARTS' evaluation network (standalone only): drop-path
(``drop_path_prob`` and an explicit ``key`` at call time; each non-identity op's output in a
cell is zeroed per example with that probability and rescaled by ``1 / keep``) and the
auxiliary head (``auxiliary=True``: ``AuxiliaryHeadCIFAR`` after the cell at 2/3 depth; a
training call returns ``(logits, aux_logits)``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nas_jax import ops
from nas_jax.spaces.darts import (
    CELLS,
    CONCAT,
    DIL_KERNEL,
    INPUT_POSITIONS,
    NUM_NODES,
    OP_POSITIONS,
    PRIMITIVES,
    SEP_KERNEL,
    DartsSpace,
    decision_index,
)

EDGES = tuple((node, src) for node in range(NUM_NODES) for src in range(node + 2))
NUM_EDGES = len(EDGES)  # 14
# (cell type, edge, op) = (2, 14, 8) for DARTS' ops; a space's own: ``space.alpha_shape``.
ALPHA_SHAPE = (len(CELLS), NUM_EDGES, len(PRIMITIVES))
_POOLS = {"max_pool_3x3": ops.max_pool_3x3, "avg_pool_3x3": ops.avg_pool_3x3}
EDGE_EXECUTIONS = ("unrolled", "scan")


def edge_index(node: int, src: int) -> int:
    """Index of the edge into intermediate node ``node`` (0..3) from input ``src`` (0, 1: the
    cell inputs; 2..node+1: earlier nodes), in DARTS' order (node 0: 0, 1; node 1: 2, 3, 4; ...)."""
    if not 0 <= node < NUM_NODES:
        raise ValueError(f"node {node} out of range; nodes are 0..{NUM_NODES - 1}")
    if not 0 <= src < node + 2:
        raise ValueError(f"input {src} out of range; node {node} takes inputs 0..{node + 1}")
    return node * (node + 3) // 2 + src


def edge_weights(space: DartsSpace, weights: jax.Array) -> jax.Array:
    """Per-decision weights ``float[32, max_choices]`` -> per-edge op weights
    ``float[2, 14, num_ops]`` (``space.alpha_shape``).

    For each node's slot j: ``w[cell, edge(node, k), o] += w_input_j[k] * w_op_j[o]``, so a
    one-hot architecture gives 1 on each chosen (edge, op) (2 where a node's two slots pick the
    same input and op). Jittable; ``vmap`` it for a batch.
    """
    expected = (space.num_decisions, space.max_choices)
    if tuple(weights.shape) != expected:
        raise ValueError(f"DARTS supernet weights have shape {tuple(weights.shape)}; expected "
                         f"{expected} (per decision, e.g. space.one_hot(arch)), or pass "
                         f"per-edge weights {space.alpha_shape} as edge_weights=")
    num_ops = len(space.primitives)
    w_in = weights[np.asarray(INPUT_POSITIONS)]  # [16 slots, max]; columns past node+2 unused
    w_op = weights[np.asarray(OP_POSITIONS)][:, :num_ops]  # [16 slots, ops]
    table = jnp.asarray(_slot_to_edge(space.max_choices), weights.dtype)
    out = jnp.einsum("sk,so,ske->eo", w_in, w_op, table)
    return out.reshape(space.alpha_shape)


@functools.cache
def _slot_to_edge(columns: int) -> np.ndarray:
    """``[16 slots, columns inputs, 2 * 14 edges]``: 1 where slot s's input k is edge e
    (flattened over cell types); zero for input columns a node does not have."""
    table = np.zeros((len(INPUT_POSITIONS), columns, len(CELLS) * NUM_EDGES), np.float32)
    for cell in range(len(CELLS)):
        for node in range(NUM_NODES):
            for slot in range(2):
                s = INPUT_POSITIONS.index(decision_index(cell, node, slot, 0))
                for src in range(node + 2):
                    table[s, src, cell * NUM_EDGES + edge_index(node, src)] = 1.0
    return table


_decision_to_edge_weights = edge_weights  # DartsNetwork.__call__ has an argument of that name


def _standalone_edge_ops(arch: np.ndarray, cell: int, primitives: tuple[str, ...]
                         ) -> tuple[tuple[tuple[str, int], ...], ...]:
    """Per edge, the chosen ``(op, multiplicity)`` pairs of one cell type (``none`` dropped)."""
    counts = [dict() for _ in EDGES]
    for node in range(NUM_NODES):
        for slot in range(2):
            src = int(arch[decision_index(cell, node, slot, 0)])
            name = primitives[int(arch[decision_index(cell, node, slot, 1)])]
            if name != "none":
                per_edge = counts[edge_index(node, src)]
                per_edge[name] = per_edge.get(name, 0) + 1
    return tuple(tuple((n, c[n]) for n in primitives if n in c) for c in counts)


def _supernet_edge_ops(primitives: tuple[str, ...]) -> tuple[tuple[tuple[str, int], ...], ...]:
    """Every edge holds every op but ``none``."""
    return tuple(tuple((name, 1) for name in primitives if name != "none") for _ in EDGES)


class DartsCell(nnx.Module):
    """One DARTS cell: preprocess both inputs to ``channels``, 4 nodes, concat the 4 nodes.

    ``edge_ops[e]`` lists the ``(op, multiplicity)`` pairs present on edge ``e``. In a
    reduction cell the ops reading a cell input (inputs 0, 1) have stride 2. ``primitives``:
    the space's ops, whose order indexes the supernet's weights.
    """

    def __init__(self, c_pp: int, c_p: int, channels: int, *, reduction: bool,
                 reduction_prev: bool, edge_ops, affine: bool, pool_bn: bool,
                 depthwise_impl: str, edge_execution: str = "unrolled", conv_impl: str = "xla",
                 primitives: tuple[str, ...] = PRIMITIVES, rngs: ops.Keys):
        self.reduction = reduction
        self.primitives = tuple(primitives)
        self.edge_ops = edge_ops
        self.edge_execution = edge_execution
        if reduction_prev:  # c_{k-2} is at twice this cell's input resolution
            self.preprocess0 = ops.FactorizedReduce(c_pp, channels, affine=affine,
                                                    impl=conv_impl, rngs=rngs)
        else:
            self.preprocess0 = ops.ReLUConvBN(c_pp, channels, 1, affine=affine, impl=conv_impl,
                                              rngs=rngs)
        self.preprocess1 = ops.ReLUConvBN(c_p, channels, 1, affine=affine, impl=conv_impl,
                                          rngs=rngs)
        for e, (_, src) in enumerate(EDGES):
            stride = 2 if reduction and src < 2 else 1
            for name, _ in edge_ops[e]:
                block = _make_op(name, channels, stride, affine, pool_bn, depthwise_impl, rngs,
                                 conv_impl)
                if block is not None:
                    setattr(self, f"e{e}_{name}", block)

    def _apply(self, e: int, name: str, h: jax.Array, train: bool) -> jax.Array:
        stride = 2 if self.reduction and EDGES[e][1] < 2 else 1
        block = getattr(self, f"e{e}_{name}", None)
        if name in _POOLS:
            out = _POOLS[name](h, stride)
            return out if block is None else block(out, train)
        if name == "skip_connect" and stride == 1:
            return h
        return block(h, train)

    def __call__(self, s0: jax.Array, s1: jax.Array, weights: jax.Array | None,
                 train: bool, drop_key: jax.Array | None = None,
                 drop_prob: float | jax.Array = 0.0) -> jax.Array:
        """``weights``: ``float[14, 8]`` op weights per edge (supernet), or None (standalone:
        each chosen op counted with its multiplicity). With ``drop_key``, every non-identity
        op's output goes through ``drop_path`` (a copy of a doubled op gets its own mask)."""
        states = [self.preprocess0(s0, train), self.preprocess1(s1, train)]
        if self.edge_execution == "scan" and weights is not None:
            return self._scanned(states, weights, train)
        for node in range(NUM_NODES):
            acc = None
            for src in range(node + 2):
                e = edge_index(node, src)
                for name, count in self.edge_ops[e]:
                    out = self._apply(e, name, states[src], train)
                    identity = name == "skip_connect" and not (self.reduction and src < 2)
                    if weights is not None:
                        out = weights[e, self.primitives.index(name)] * out
                    elif drop_key is not None and not identity:
                        op_key = jax.random.fold_in(drop_key, e * len(self.primitives)
                                                    + self.primitives.index(name))
                        out = sum(drop_path(jax.random.fold_in(op_key, copy), out, drop_prob)
                                  for copy in range(count))
                    elif count != 1:
                        out = count * out
                    acc = out if acc is None else acc + out
            if acc is None:  # every op into this node is `none`
                b, h, w, c = states[1].shape
                if self.reduction:
                    h, w = (h + 1) // 2, (w + 1) // 2
                acc = jnp.zeros((b, h, w, c), states[1].dtype)
            states.append(acc)
        return jnp.concatenate([states[i] for i in CONCAT], axis=-1)


    def _scanned(self, inputs: list[jax.Array], weights: jax.Array, train: bool) -> jax.Array:
        """The supernet cell as two ``lax.scan``s over edges (``edge_execution="scan"``).

        Every edge of the supernet holds the same 7 ops, so the edges that read a cell input
        (8, strided in a reduction cell) and the edges between nodes (6) each run as one scan
        whose body is one mixed edge, over the edges' weights stacked on a leading axis: the
        program holds two mixed edges per cell instead of 14, which cuts XLA's compile time
        several-fold; the numbers are those of the unrolled cell. Nodes live in one buffer
        ``[4, B, H, W, C]``; an edge reads its input by index and adds its output into its node.
        Inner edges run in the order of their node, so a node is complete before it is read.
        """
        names = [name for name, _ in self.edge_ops[0]]
        in_edges = [e for e, (_, src) in enumerate(EDGES) if src < 2]
        inner_edges = [e for e, (_, src) in enumerate(EDGES) if src >= 2]
        stride = 2 if self.reduction else 1
        b, h, w, c = inputs[1].shape
        if stride == 2:
            h, w = (h + 1) // 2, (w + 1) // 2
        nodes = jnp.zeros((NUM_NODES, b, h, w, c), inputs[1].dtype)
        nodes = self._scan_group(in_edges, jnp.stack(inputs), 0, nodes, names, weights, stride,
                                 train)
        return self._scan_group(inner_edges, None, 2, nodes, names, weights, 1, train).transpose(
            1, 2, 3, 0, 4).reshape(b, h, w, NUM_NODES * c)  # = concat(nodes) on channels

    def _scan_group(self, edges, sources, offset, nodes, names, weights, stride, train):
        """Run ``edges`` (same ops, same stride) as one scan; ``sources``: stacked inputs the
        edges read (None: they read ``nodes``); ``offset``: state index of ``sources[0]``."""
        graphdefs, params, stats = {}, {}, {}
        for name in names:
            blocks = [getattr(self, f"e{e}_{name}", None) for e in edges]
            if blocks[0] is None:
                continue
            parts = [nnx.split(block, nnx.Param, nnx.BatchStat) for block in blocks]
            graphdefs[name] = parts[0][0]
            params[name] = jax.tree.map(lambda *xs: jnp.stack(xs), *[p[1] for p in parts])
            stats[name] = jax.tree.map(lambda *xs: jnp.stack(xs), *[p[2] for p in parts])
        src = jnp.asarray([EDGES[e][1] - offset for e in edges], jnp.int32)
        dst = jnp.asarray([EDGES[e][0] for e in edges], jnp.int32)
        op_index = np.asarray([self.primitives.index(name) for name in names])
        w = weights[np.asarray(edges)][:, op_index]  # [edges, ops]

        def body(nodes, xs):
            s, d, w_e, p_e, st_e = xs
            x = (nodes if sources is None else sources)[s]
            acc, new_stats = None, {}
            for i, name in enumerate(names):
                block = None
                if name in graphdefs:
                    block = nnx.merge(graphdefs[name], p_e[name], st_e[name])
                if name in _POOLS:
                    out = _POOLS[name](x, stride)
                    if block is not None:
                        out = block(out, train)
                elif name == "skip_connect" and stride == 1:
                    out = x
                else:
                    out = block(x, train)
                if block is not None:
                    new_stats[name] = nnx.state(block, nnx.BatchStat)
                out = w_e[i] * out
                acc = out if acc is None else acc + out
            return nodes.at[d].add(acc), new_stats

        nodes, new_stats = jax.lax.scan(body, nodes, (src, dst, w, params, stats))
        for name, stacked in new_stats.items():
            for i, e in enumerate(edges):
                block = getattr(self, f"e{e}_{name}")
                nnx.update(block, jax.tree.map(lambda v, i=i: v[i], stacked))
        return nodes


def drop_path(key: jax.Array, x: jax.Array, drop_prob: float | jax.Array) -> jax.Array:
    """DARTS' ``drop_path``: zero whole examples of ``x`` with probability ``drop_prob`` (one
    Bernoulli draw per example) and scale the kept ones by ``1 / (1 - drop_prob)``, so the
    expectation is unchanged. ``drop_prob`` may be traced; 0 gives ``x`` exactly."""
    keep = 1.0 - jnp.asarray(drop_prob, x.dtype)
    mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros((), x.dtype))


class AuxiliaryHeadCIFAR(nnx.Module):
    """DARTS' auxiliary classifier for an 8x8 feature map: ReLU, 5x5 average pool stride 3
    (-> 2x2), 1x1 conv to 128 + BN + ReLU, 2x2 conv to 768 + BN + ReLU, linear. Larger maps
    leave a larger grid after the 2x2 conv, which is flattened into the linear layer."""

    def __init__(self, channels: int, spatial: tuple[int, int], num_classes: int, *,
                 rngs: ops.Keys):
        pooled = tuple((s - 5) // 3 + 1 for s in spatial)
        if min(pooled) < 2:
            raise ValueError(f"the auxiliary head needs feature maps of at least 8x8 where it "
                             f"is attached, got {spatial[0]}x{spatial[1]}: use larger inputs "
                             "(space.input_shape) or auxiliary=False")
        self.conv1 = ops.Conv(channels, 128, 1, rngs=rngs)
        self.bn1 = ops.BatchNorm(128)
        self.conv2 = ops.Conv(128, 768, 2, rngs=rngs)
        self.bn2 = ops.BatchNorm(768)
        self.classifier = ops.Dense(768 * (pooled[0] - 1) * (pooled[1] - 1), num_classes,
                                    rngs=rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = jax.nn.relu(x)
        x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 5, 5, 1), (1, 3, 3, 1), "VALID") / 25
        x = jax.nn.relu(self.bn1(self.conv1(x), train))
        x = jax.nn.relu(self.bn2(self.conv2(x), train))
        return self.classifier(x.reshape(x.shape[0], -1))


def _make_op(name: str, c: int, stride: int, affine: bool, pool_bn: bool, depthwise_impl: str,
             rngs: ops.Keys, conv_impl: str = "xla") -> nnx.Module | None:
    """The module holding op ``name``'s weights/statistics, or None if it has neither."""
    conv = {"depthwise_impl": depthwise_impl, "conv_impl": conv_impl}
    if name in SEP_KERNEL:
        return ops.SepConv(c, c, SEP_KERNEL[name], stride=stride, affine=affine, **conv,
                           rngs=rngs)
    if name in DIL_KERNEL:
        return ops.DilConv(c, c, DIL_KERNEL[name], stride=stride, affine=affine, **conv,
                           rngs=rngs)
    if name == "conv_3x3":  # MetaNAS' conv_3x3: DilConv without dilation
        return ops.DilConv(c, c, 3, stride=stride, dilation=1, affine=affine, **conv, rngs=rngs)
    if name == "conv_1x5_5x1":
        return ops.FacConv(c, c, 5, stride=stride, affine=affine, rngs=rngs)
    if name == "skip_connect" and stride == 2:
        return ops.FactorizedReduce(c, c, affine=affine, impl=conv_impl, rngs=rngs)
    if name in _POOLS and pool_bn:
        return ops.BatchNorm(c, affine=False)
    return None


class DartsNetwork(nnx.Module):
    """DARTS' CIFAR network: stem conv3x3 + BN, ``space.num_cells`` cells (reduction cells at
    ``space.reduction_cells`` double the width and halve the resolution), global average
    pool, linear classifier.

    Args:
      space: the DARTS space (channels, num_cells, stem_multiplier, input_shape, num_classes).
      arch: None for the supernet (every non-``none`` op of ``space.primitives`` on all 14
        edges of both cell types,
        mixed by the weights given at call time); an ``int[32]`` architecture for a standalone
        network. If a node's two slots pick the same input and op, the standalone network
        holds that op once and doubles its output (the supernet's edge weight is then 2);
        ``space.num_params`` counts two copies, as DARTS' model.py builds two.
      affine: BN scale/shift in the cells (see the module docstring).
      pool_bn: an affine-free BN after each pooling op (DARTS' search supernet).
      depthwise_impl: how the sep/dil convs' depthwise convolutions are computed
        (``ops.depthwise_conv2d``: ``auto``, ``slices`` or ``xla``); same weights and numbers.
      conv_impl: how the full convolutions (stem, 1x1 preprocessing and pointwise
        convolutions, factorized reductions) are computed (``ops.conv2d``; same weights and
        numbers); ``mixed`` for the composed execution.
      edge_execution: how the supernet's 14 edges per cell run: ``unrolled`` (each edge its
        own ops in the program) or ``scan`` (``DartsCell._scanned``: two ``lax.scan``s over
        edges per cell, the same numbers; the program is ~7x smaller, so it compiles far
        faster). The parameter layout is the same either way. Supernet only.
      auxiliary: add DARTS' auxiliary head after cell ``2 * num_cells // 3`` (standalone
        only; needs an 8x8 or larger feature map there, e.g. 32x32 inputs). Its parameters
        live under ``auxiliary_head`` and are not in ``space.num_params``.
    """

    def __init__(self, space: DartsSpace, arch=None, *, affine: bool = True,
                 pool_bn: bool = False, depthwise_impl: str = "auto", auxiliary: bool = False,
                 edge_execution: str = "unrolled", conv_impl: str = "xla", rngs: ops.Keys):
        if not isinstance(space, DartsSpace):
            raise ValueError(f"DartsNetwork needs a DartsSpace, got {type(space).__name__}")
        if edge_execution not in EDGE_EXECUTIONS:
            raise ValueError(f"edge_execution={edge_execution!r}; allowed: "
                             f"{', '.join(EDGE_EXECUTIONS)}")
        if edge_execution == "scan" and arch is not None:
            raise ValueError("edge_execution='scan' is for the supernet (every edge holds the "
                             "same ops); a standalone DartsNetwork runs its chosen ops unrolled")
        if conv_impl not in ops.CONV_IMPLS:
            raise ValueError(f"conv_impl={conv_impl!r}; allowed: {', '.join(ops.CONV_IMPLS)}")
        if depthwise_impl not in ops.DEPTHWISE_IMPLS:
            raise ValueError(f"depthwise_impl={depthwise_impl!r}; allowed: "
                             f"{', '.join(ops.DEPTHWISE_IMPLS)}")
        if arch is None:
            cell_ops = (_supernet_edge_ops(space.primitives),) * 2
        else:
            arch = space.validate(arch)
            cell_ops = tuple(_standalone_edge_ops(arch, c, space.primitives)
                             for c in range(len(CELLS)))
        if auxiliary and arch is None:
            raise ValueError("auxiliary=True needs a standalone DartsNetwork (an arch); the "
                             "supernet has no auxiliary head")
        self.is_supernet = arch is None
        self.space = space
        self.aux_position = 2 * space.num_cells // 3 if auxiliary else None
        spatial = tuple(space.input_shape[:2])
        c_stem = space.stem_multiplier * space.channels
        self.stem = ops.Conv(space.input_shape[-1], c_stem, 3, impl=conv_impl, rngs=rngs)
        self.stem_bn = ops.BatchNorm(c_stem)
        c_pp, c_p, c = c_stem, c_stem, space.channels
        reduction_prev = False
        cells = []
        for i in range(space.num_cells):
            reduction = i in space.reduction_cells
            c = 2 * c if reduction else c
            cells.append(DartsCell(c_pp, c_p, c, reduction=reduction,
                                   reduction_prev=reduction_prev, edge_ops=cell_ops[reduction],
                                   affine=affine, pool_bn=pool_bn,
                                   depthwise_impl=depthwise_impl,
                                   edge_execution=edge_execution, conv_impl=conv_impl,
                                   primitives=space.primitives, rngs=rngs))
            reduction_prev = reduction
            c_pp, c_p = c_p, len(CONCAT) * c
            if reduction:
                spatial = tuple((s + 1) // 2 for s in spatial)
            if i == self.aux_position:
                self.auxiliary_head = AuxiliaryHeadCIFAR(c_p, spatial, space.num_classes,
                                                         rngs=rngs)
        self.cells = nnx.List(cells)
        self.classifier = ops.Dense(c_p, space.num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, weights: jax.Array | None = None, *,
                 edge_weights: jax.Array | None = None, train: bool = False,
                 drop_path_prob: float | jax.Array = 0.0, key: jax.Array | None = None):
        """Logits ``float[B, classes]`` for images ``x`` ``float[B, H, W, C]``; with the
        auxiliary head and ``train``, ``(logits, aux_logits)``.

        The supernet needs exactly one of ``weights`` (per decision, ``float[32, 8]``) or
        ``edge_weights`` (per edge, ``float[2, 14, 8]``); a standalone network takes neither.
        Drop-path (standalone, ``train`` only) needs ``key``; ``drop_path_prob`` may be traced
        (e.g. DARTS' linear ramp), and without a key it must be 0.
        """
        if key is None and (isinstance(drop_path_prob, jax.Array) or drop_path_prob != 0):
            raise ValueError("a drop_path_prob needs key= (the PRNG key of the drop-path "
                             "masks)")
        if key is not None and self.is_supernet:
            raise ValueError("drop-path is for the standalone DartsNetwork; the supernet takes "
                             "no key")
        drop_key = key if train else None
        if not self.is_supernet:
            if weights is not None or edge_weights is not None:
                raise ValueError("a standalone DartsNetwork computes its own architecture; "
                                 "call it without weights / edge_weights")
            per_edge = None
        elif (weights is None) == (edge_weights is None):
            d, m = self.space.num_decisions, self.space.max_choices
            raise ValueError(f"the DARTS supernet needs exactly one of weights float[{d}, {m}] "
                             f"(e.g. space.one_hot(arch)) or edge_weights "
                             f"float{list(self.space.alpha_shape)} (e.g. softmax(alpha))")
        elif weights is not None:
            per_edge = _decision_to_edge_weights(self.space, weights)
        else:
            if tuple(edge_weights.shape) != self.space.alpha_shape:
                raise ValueError(f"edge_weights have shape {tuple(edge_weights.shape)}; expected "
                                 f"{self.space.alpha_shape} (cell type, edge, op)")
            per_edge = edge_weights
        s0 = s1 = self.stem_bn(self.stem(x), train)
        aux_logits = None
        for i, cell in enumerate(self.cells):
            w = None if per_edge is None else per_edge[int(i in self.space.reduction_cells)]
            cell_key = None if drop_key is None else jax.random.fold_in(drop_key, i)
            s0, s1 = s1, cell(s0, s1, w, train, cell_key, drop_path_prob)
            if i == self.aux_position and train:
                aux_logits = self.auxiliary_head(s1, train)
        logits = self.classifier(jnp.mean(s1, axis=(1, 2)))
        return logits if aux_logits is None else (logits, aux_logits)


def extract_standalone(supernet_state: nnx.State, standalone_state: nnx.State) -> nnx.State:
    """Copy the supernet's weights (and BN statistics) into a standalone network's state: every
    path of the standalone state is looked up in the supernet's (same flags needed). The
    result holds new Variables, so updating it never writes into ``supernet_state``."""
    flat_super = dict(nnx.to_flat_state(supernet_state))
    flat = nnx.to_flat_state(standalone_state)
    missing = [path for path, _ in flat if path not in flat_super]
    if missing:
        raise ValueError(f"the supernet state has no {'/'.join(map(str, missing[0]))}; build "
                         "the supernet and the standalone network with the same space, affine "
                         "and pool_bn")
    return jax.tree.map(lambda a: a, nnx.from_flat_state([(p, flat_super[p]) for p, _ in flat]))
