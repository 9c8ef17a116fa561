"""One architecture's network run as a graph of small compiled programs, composed from Python.

A training step of one NB201 architecture is computed here without compiling a program for
that architecture: each *unit* of the network (the stem, one edge's operation, a reduction
block, the head, a node's sum) is its own jitted program, shared by every architecture,
edge and cell whose unit has the same structure and shapes, and the host walks the
architecture's graph, calling the units' forward programs (which also return their VJPs'
residuals) and then their backward programs in reverse order. This is how an eager
framework runs a network. On XLA:CPU it computes only the chosen operations, each at the
speed it has as a top-level program, with no per-architecture compile:

- a switch supernet pays inside its branches (XLA:CPU's convolution gradients there are
  many times slower than outside; docs/benchmarks.md), and computes a branch for every
  edge, even those whose output cannot reach the loss;
- a standalone program per architecture pays a compile of seconds for each new one.

What it pays instead: no fusion across units, and one call per unit (a few microseconds
to dispatch; on XLA:CPU small programs mostly run while they are dispatched, so the host
walk and the computation take turns rather than overlap). A step of the population
benchmark's large network is ~300 calls.

``ComposedGraph`` is network-agnostic: a ``plan`` lists ``Node``s (which unit computes
which value from which values) and the module paths each unit reads its weights from.
``nb201_plan`` builds the plan of an NB201 architecture; operations whose output cannot
reach the network's output are left out (they change nothing the network computes, so
the trained weights that matter and the scores equal the switch supernet's). ``darts_plan``
builds a DARTS architecture's (every chosen op reaches the output there), ``darts_edge_plan``
one op on every edge of a DARTS cell (a GDAS sample); ``plan_for`` and ``unit_paths`` pick by
network.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nas_jax import ops
from nas_jax.spaces.nb201 import CONV_KERNEL, EDGES, NUM_NODES


def path_key(path: tuple) -> str:
    """The string key of a module path (``("layers", 2, "e0_nor_conv_3x3")`` ->
    ``"layers/2/e0_nor_conv_3x3"``): the keys of the per-unit weight dicts."""
    return "/".join(str(p) for p in path)


def sub_state(state: nnx.State, path: tuple) -> nnx.State:
    """The sub-state at a module path (empty where the module holds none of ``state``'s
    variables, e.g. a convolution's batch statistics)."""
    for p in path:
        if p not in state:
            return nnx.State({})
        state = state[p]
    return state


def sub_module(module: nnx.Module, path: tuple) -> nnx.Module:
    """The module at a path (attribute names and list indices)."""
    for p in path:
        module = module[p] if isinstance(p, int) else getattr(module, p)
    return module


@dataclasses.dataclass(frozen=True)
class Unit:
    """A piece of the network: ``fn(modules, *inputs, train=...) -> output``, where
    ``modules`` are the network's modules at ``paths`` (none for a pure function)."""

    paths: tuple[tuple, ...]
    fn: Callable


@dataclasses.dataclass(frozen=True)
class Node:
    """``values[out] = unit(values[inputs...])``. ``unit`` is a ``Unit``, or ``"sum"`` (the
    sum of the inputs; one input is an alias) or ``"zeros"`` (a zero tensor shaped like the
    first input, a constant: no gradient flows through it).

    ``scales`` (a ``"sum"`` only; empty or one entry per input): the index into the
    ``edge_scales`` vector that ``ComposedGraph.forward`` may be given which multiplies each
    input (-1: none). A plan built with them computes what the switch supernet computes for
    non-one-hot weights (each edge's output times its weight: GDAS' straight-through
    sample), and the backward pass returns the gradient of those scales."""

    out: str
    inputs: tuple[str, ...]
    unit: Unit | str
    scales: tuple[int, ...] = ()


def _pullback(vjp, g):
    return vjp(g)


pullback = jax.jit(_pullback)

# XLA:CPU's older (LLVM IR) fusion emitters, as per-program compiler options: with them
# the composed random-path and GDAS steps (NB201 C=16, N=5, batch 64, 2 cores) ran
# 1.45x and 1.35x faster, their first calls shorter, while a large fused program (DARTS'
# mixture step) ran slower and compiled twice as long (docs/benchmarks.md). CPU only.
OLDER_CPU_EMITTERS = {"xla_cpu_use_fusion_emitters": False}
_older_pullback = jax.jit(_pullback, compiler_options=OLDER_CPU_EMITTERS)  # one cache for all


def unit_compiler_options(emitters: str) -> dict | None:
    """Compiler options for a composed graph's unit programs: ``emitters="older"`` uses
    ``OLDER_CPU_EMITTERS`` on a CPU backend, ``"default"`` XLA's defaults."""
    if emitters not in ("older", "default"):
        raise ValueError(f"emitters={emitters!r}; allowed: older, default")
    return OLDER_CPU_EMITTERS if emitters == "older" and jax.default_backend() == "cpu" else None


@jax.jit
def _add(*xs):
    return functools.reduce(operator.add, xs)


@jax.jit
def _zeros_like(x):
    return jnp.zeros_like(x)


@jax.jit
def _scaled_sum(scales, index, *xs):
    """``sum_i w_i * xs[i]`` with ``w_i = scales[index[i]]`` (1 where ``index[i] < 0``).
    ``index`` is an array, not a static argument: one program per arity and shape serves
    every pattern of scaled edges (a DARTS node has up to 2^5 of them per cell type)."""
    w = jnp.where(index < 0, 1.0, scales[index]).astype(xs[0].dtype)
    return functools.reduce(operator.add, (w[i] * x for i, x in enumerate(xs)))


@jax.jit
def _scaled_sum_vjp(scales, index, *xs):
    """``_scaled_sum`` and its VJP with respect to ``(scales, xs)``."""
    return jax.vjp(lambda s, xs: _scaled_sum(s, index, *xs), scales, xs)


@functools.cache
def _scale_index(scales: tuple[int, ...]) -> jax.Array:
    """A sum node's ``scales`` as the device array ``_scaled_sum`` reads (cached: a tuple
    is converted and transferred once)."""
    return jnp.asarray(np.asarray(scales, np.int32))


class _Programs:
    """The jitted programs of one unit structure (graph definitions, state layouts and
    function); jit's own cache keys them further by shapes, so every edge of one kind in
    one stage shares them. Weights cross the jit boundary as tuples of arrays (flattened
    in C++; flattening ``nnx.State`` costs Python time on every call)."""

    def __init__(self, graphdefs: tuple, treedefs: tuple, fn: Callable,
                 compiler_options: dict | None = None):
        def run(params, stats, inputs, train):
            modules = tuple(nnx.merge(g, jax.tree.unflatten(tp, p), jax.tree.unflatten(ts, s),
                                      copy=True)
                            for g, (tp, ts), p, s in zip(graphdefs, treedefs, params, stats))
            out = fn(modules, *inputs, train=train)
            return out, tuple(tuple(jax.tree.leaves(nnx.state(m, nnx.BatchStat)))
                              for m in modules)

        def forward_vjp(params, stats, inputs):
            out, vjp, new_stats = jax.vjp(lambda p, xs: run(p, stats, xs, True), params,
                                          inputs, has_aux=True)
            return out, new_stats, vjp

        def forward_vjp_inputs(params, stats, inputs):
            out, vjp, new_stats = jax.vjp(lambda xs: run(params, stats, xs, True), inputs,
                                          has_aux=True)
            return out, new_stats, vjp

        jit = functools.partial(jax.jit, compiler_options=compiler_options)
        self.train = jit(forward_vjp)
        # The VJP with respect to the inputs only: a backward pass that needs no weight
        # gradients (GDAS' architecture step) skips the kernels' gradients.
        self.train_inputs = jit(forward_vjp_inputs)
        self.eval = jit(lambda params, stats, inputs: run(params, stats, inputs, False)[0])


class ComposedGraph:
    """Runs plans (lists of ``Node``) on per-unit weight dicts, forward and backward.

    Weights are dicts ``{path_key(path): tuple of arrays}`` (the leaves of the module's
    ``nnx.State``), one entry per unit module of the network (``split_weights`` /
    ``to_units``; ``from_units`` writes them back into a whole network's state). A plan
    reads the entries of its own units. The programs are cached by unit structure for the
    graph's lifetime. ``emitters`` (``unit_compiler_options``): ``"older"`` compiles the
    units and their pullbacks with XLA:CPU's older fusion emitters, ``"default"`` with
    XLA's defaults.
    """

    def __init__(self, model: nnx.Module, emitters: str = "older"):
        self._model = model  # an abstract network: the source of graph definitions
        self._programs: dict = {}
        self._by_unit: dict = {}
        self._options = unit_compiler_options(emitters)
        self._pullback = pullback if self._options is None else _older_pullback

    def _split(self, path: tuple):
        graphdef, params, stats = nnx.split(sub_module(self._model, path), nnx.Param,
                                            nnx.BatchStat)
        return graphdef, (jax.tree.structure(params), jax.tree.structure(stats))

    def programs(self, unit: Unit) -> _Programs:
        found = self._by_unit.get(unit)
        if found is not None:
            return found
        graphdefs, treedefs = zip(*(self._split(p) for p in unit.paths)) if unit.paths else ((), ())
        key = (graphdefs, treedefs, unit.fn)
        if key not in self._programs:
            self._programs[key] = _Programs(graphdefs, treedefs, unit.fn, self._options)
        self._by_unit[unit] = self._programs[key]
        return self._programs[key]

    @staticmethod
    def paths(plan: list[Node]) -> list[tuple]:
        """Every module path the plan's units read, in plan order."""
        seen = {}
        for node in plan:
            if isinstance(node.unit, Unit):
                for p in node.unit.paths:
                    seen.setdefault(path_key(p), p)
        return list(seen.values())

    @classmethod
    def split_weights(cls, paths: list[tuple], params: nnx.State, stats: nnx.State):
        """``(params, stats)`` of a whole network as the dicts the graph runs on: one entry
        per module path of ``paths`` (every unit module of the network, so the dicts have
        one structure for every architecture and the programs over all of them, such as
        the optimizer update, compile once)."""
        return cls.to_units(paths, params), cls.to_units(paths, stats)

    @staticmethod
    def to_units(paths: list[tuple], tree) -> dict:
        """A whole-network pytree shaped like its params (or stats) as a weight dict."""
        return {path_key(p): tuple(jax.tree.leaves(sub_state(tree, p))) for p in paths}

    @classmethod
    def from_units(cls, paths: list[tuple], units: dict, template):
        """The inverse of ``to_units``: ``template`` (a whole-network pytree of the same
        structure) with its leaves replaced by ``units``' (every leaf must be covered)."""
        leaves, treedef = jax.tree.flatten(template)
        positions = cls.to_units(paths, jax.tree.unflatten(treedef, range(len(leaves))))
        covered = set()
        for key, values in units.items():
            for i, v in zip(positions[key], values, strict=True):
                leaves[i] = v
                covered.add(i)
        if len(covered) != len(leaves):
            raise ValueError(f"the unit paths cover {len(covered)} of the network's "
                             f"{len(leaves)} leaves")
        return jax.tree.unflatten(treedef, leaves)

    def _unit_args(self, node: Node, weights: dict) -> tuple:
        return tuple(weights[path_key(p)] for p in node.unit.paths)

    def forward(self, plan: list[Node], params: dict, stats: dict, x: jax.Array,
                train: bool, output: str = "logits", edge_scales: jax.Array | None = None,
                weight_grads: bool = True):
        """The plan's ``output`` value for input ``x``. With ``train``: ``(output, new_stats,
        tape)`` where ``tape`` holds what ``backward`` needs (the plan and each unit node's
        VJP); else just the output (batch statistics in evaluation mode).

        ``edge_scales``: the vector that the sums' ``scales`` index (``backward`` then also
        returns its gradient); without it, scales are ignored. ``weight_grads=False``: the
        tape holds the VJPs with respect to the inputs only (``backward`` returns no weight
        gradients, and costs less)."""
        values = {"x": x}
        new_stats = dict(stats)
        tape = []
        for node in plan:
            inputs = tuple(values[i] for i in node.inputs)
            if node.unit == "sum":
                if edge_scales is not None and node.scales:
                    if train:
                        values[node.out], vjp = _scaled_sum_vjp(
                            edge_scales, _scale_index(node.scales), *inputs)
                        tape.append((node, vjp))
                    else:
                        values[node.out] = _scaled_sum(edge_scales,
                                                       _scale_index(node.scales), *inputs)
                    continue
                values[node.out] = inputs[0] if len(inputs) == 1 else _add(*inputs)
                continue
            if node.unit == "zeros":
                values[node.out] = _zeros_like(inputs[0])
                continue
            progs = self.programs(node.unit)
            unit_params, unit_stats = self._unit_args(node, params), self._unit_args(node, stats)
            if not train:
                values[node.out] = progs.eval(unit_params, unit_stats, inputs)
                continue
            forward = progs.train if weight_grads else progs.train_inputs
            out, unit_new_stats, vjp = forward(unit_params, unit_stats, inputs)
            values[node.out] = out
            for p, s in zip(node.unit.paths, unit_new_stats):
                new_stats[path_key(p)] = s
            tape.append((node, vjp))
        if not train:
            return values[output]
        scaled = edge_scales is not None
        return values[output], new_stats, (plan, dict(tape), weight_grads,
                                           jnp.zeros_like(edge_scales) if scaled else None)

    def backward(self, tape, g: jax.Array, output: str = "logits"):
        """Gradients ``{path_key: tuple of arrays}`` (as the weight dicts) of the scalar whose
        gradient with respect to the plan's ``output`` is ``g``; modules that get no
        gradient are left out (all of them for a tape without weight gradients). For a
        tape of a forward with ``edge_scales``: ``(grads, d_edge_scales)``."""
        plan, vjps, weight_grads, d_scales = tape
        cot = {output: g}
        grads: dict = {}

        def accumulate(store, k, v):
            store[k] = v if k not in store else jax.tree.map(_add, store[k], v)

        for node in reversed(plan):
            g_out = cot.pop(node.out, None)
            if g_out is None or node.unit == "zeros":
                continue
            if node.unit == "sum":
                if node in vjps:  # a scaled sum
                    d_s, d_inputs = self._pullback(vjps[node], g_out)
                    d_scales = _add(d_scales, d_s)
                    for i, d in zip(node.inputs, d_inputs):
                        accumulate(cot, i, d)
                    continue
                for i in node.inputs:
                    accumulate(cot, i, g_out)
                continue
            if weight_grads:
                d_params, d_inputs = self._pullback(vjps[node], g_out)
                for p, d in zip(node.unit.paths, d_params):
                    accumulate(grads, path_key(p), d)
            else:
                d_inputs, = self._pullback(vjps[node], g_out)
            for i, d in zip(node.inputs, d_inputs):
                accumulate(cot, i, d)
        return grads if d_scales is None else (grads, d_scales)


# ----------------------------------------------------------------------------- NB201


def _stem(modules, x, *, train):
    conv, bn = modules
    return bn(conv(x), train)


def _block(modules, x, *, train):
    return modules[0](x, train)


def _avg_pool(modules, x, *, train):
    del modules, train
    return ops.avg_pool_3x3(x)


def _head(modules, h, *, train):
    bn, classifier = modules
    return classifier(jnp.mean(jax.nn.relu(bn(h, train)), axis=(1, 2)))


def nb201_unit_paths(network) -> list[tuple]:
    """The module path of every unit of an NB201 supernet: stem, reductions, every edge's
    convolution blocks, head."""
    from nas_jax.supernet.nb201 import NB201Cell

    paths = [("stem",), ("stem_bn",)]
    for i, layer in enumerate(network.layers):
        if not isinstance(layer, NB201Cell):
            paths.append(("layers", i))
            continue
        paths.extend(("layers", i, f"e{e}_{name}") for e, names in enumerate(layer.edge_ops)
                     for name in names if name in CONV_KERNEL)
    return paths + [("head_bn",), ("classifier",)]


def nb201_live_edges(op_names: tuple[str, ...], arch) -> list[int]:
    """The edges whose operation's output can reach the cell's output node: not ``none``,
    into a node that reaches the output through such edges."""
    live_nodes = {NUM_NODES - 1}
    live = []
    for e in reversed(range(len(EDGES))):  # EDGES are ordered by destination node
        dst, src = EDGES[e]
        if dst in live_nodes and op_names[int(arch[e])] != "none":
            live.append(e)
            live_nodes.add(src)
    return sorted(live)


def nb201_plan(network, arch, scaled: bool = False) -> list[Node]:
    """The plan of an NB201 architecture (``int[6]``) on ``network`` (an ``NB201Network``
    supernet, possibly abstract): its module paths name the supernet's modules, so a plan
    trains the supernet's weights of the chosen operations.

    Edges whose output cannot reach the cell's output are left out. An intermediate node
    that the output needs but that no live edge feeds is a zero tensor (its operations,
    e.g. a convolution block's batch-norm bias, still act on it).

    ``scaled``: each node's sum scales edge ``e``'s term by ``edge_scales[e]`` (the edge's
    weight in the switch supernet: ``weights[e, arch[e]]``), every cell by the same vector.
    """
    from nas_jax.supernet.nb201 import NB201Cell

    op_names = next(layer.op_names for layer in network.layers if isinstance(layer, NB201Cell))
    arch = np.asarray(arch)
    live = nb201_live_edges(op_names, arch)
    plan = [Node("h0", ("x",), Unit((("stem",), ("stem_bn",)), _stem))]
    h = "h0"
    for i, layer in enumerate(network.layers):
        out = f"h{i + 1}"
        if not isinstance(layer, NB201Cell):
            plan.append(Node(out, (h,), Unit((("layers", i),), _block)))
            h = out
            continue
        nodes = {0: h}
        for node in range(1, NUM_NODES):
            terms, edges = [], []
            for e in live:
                dst, src = EDGES[e]
                if dst != node:
                    continue
                name = op_names[int(arch[e])]
                edges.append(e)
                if name == "skip_connect":
                    terms.append(nodes[src])
                    continue
                term = f"c{i}e{e}"
                if name == "avg_pool_3x3":
                    plan.append(Node(term, (nodes[src],), Unit((), _avg_pool)))
                elif name in CONV_KERNEL:
                    plan.append(Node(term, (nodes[src],),
                                     Unit((("layers", i, f"e{e}_{name}"),), _block)))
                else:
                    raise ValueError(f"NB201 op {name!r} has no composed form")
                terms.append(term)
            node_id = out if node == NUM_NODES - 1 else f"c{i}n{node}"
            if terms:
                plan.append(Node(node_id, tuple(terms), "sum",
                                 tuple(edges) if scaled else ()))
            elif node == NUM_NODES - 1 or any(EDGES[e][1] == node for e in live):
                plan.append(Node(node_id, (h,), "zeros"))
            nodes[node] = node_id
        h = out
    plan.append(Node("logits", (h,), Unit((("head_bn",), ("classifier",)), _head)))
    return plan


# ----------------------------------------------------------------------------- DARTS


def _darts_head(modules, h, *, train):
    del train
    return modules[0](jnp.mean(h, axis=(1, 2)))


def _concat(modules, *xs, train):
    del modules, train
    return jnp.concatenate(xs, axis=-1)


@functools.cache
def _darts_op_fn(name: str, stride: int) -> Callable:
    """The unit function of a DARTS op at a stride (one function object per pair, so units
    of the same op and stride share their programs): a pooling op (then its BN module when
    the network has one), or the op's module."""
    from nas_jax.supernet.darts import _POOLS

    if name in _POOLS:
        pool = _POOLS[name]

        def run(modules, x, *, train):
            out = pool(x, stride)
            return modules[0](out, train) if modules else out
    else:
        def run(modules, x, *, train):
            return modules[0](x, train)
    return run


@functools.cache
def _darts_zeros_fn(stride: int) -> Callable:
    """A node all of whose ops are ``none``: zeros shaped like a cell state at ``stride``."""
    def run(modules, x, *, train):
        del modules, train
        b, h, w, c = x.shape
        return jnp.zeros((b, (h + stride - 1) // stride, (w + stride - 1) // stride, c), x.dtype)
    return run


def darts_unit_paths(network) -> list[tuple]:
    """The module path of every unit of a DARTS supernet: stem, each cell's preprocessing
    and op modules (ops without weights or statistics have none), classifier."""
    from nas_jax.supernet.darts import EDGES

    paths = [("stem",), ("stem_bn",)]
    for i, cell in enumerate(network.cells):
        paths += [("cells", i, "preprocess0"), ("cells", i, "preprocess1")]
        paths += [("cells", i, f"e{e}_{name}") for e in range(len(EDGES))
                  for name, _ in cell.edge_ops[e] if hasattr(cell, f"e{e}_{name}")]
    return paths + [("classifier",)]


def _darts_cells_plan(network, terms_of: Callable) -> list[Node]:
    """The plan of a DARTS network whose node ``node`` of cell type ``kind`` (0 normal, 1
    reduction) sums ``terms_of(kind, node)``: ``(src, op name, scale)`` triples (``scale``:
    the ``edge_scales`` index of the term, -1 for none; ``none`` ops left out by the
    caller). A repeated ``(src, op)`` is computed once and summed as often as it appears;
    a node without terms is a zero tensor."""
    from nas_jax.spaces.darts import CONCAT, NUM_NODES
    from nas_jax.supernet.darts import edge_index

    plan = [Node("s", ("x",), Unit((("stem",), ("stem_bn",)), _stem))]
    made = set()
    s0 = s1 = "s"
    for i, cell in enumerate(network.cells):
        kind = int(i in network.space.reduction_cells)
        states = [f"k{i}p0", f"k{i}p1"]
        plan.append(Node(states[0], (s0,), Unit((("cells", i, "preprocess0"),), _block)))
        plan.append(Node(states[1], (s1,), Unit((("cells", i, "preprocess1"),), _block)))
        for node in range(NUM_NODES):
            terms, scales = [], []
            for src, name, scale in terms_of(kind, node):
                stride = 2 if cell.reduction and src < 2 else 1
                scales.append(scale)
                if name == "skip_connect" and stride == 1:
                    terms.append(states[src])
                    continue
                e = edge_index(node, src)
                term = f"k{i}e{e}_{name}"
                if term not in made:  # a doubled op is computed once, summed twice
                    made.add(term)
                    path = ("cells", i, f"e{e}_{name}")
                    paths = (path,) if hasattr(cell, path[-1]) else ()
                    plan.append(Node(term, (states[src],),
                                     Unit(paths, _darts_op_fn(name, stride))))
                terms.append(term)
            out = f"k{i}n{node}"
            if terms:
                scaled = any(j >= 0 for j in scales)
                plan.append(Node(out, tuple(terms), "sum", tuple(scales) if scaled else ()))
            else:
                stride = 2 if cell.reduction else 1
                plan.append(Node(out, (states[1],), Unit((), _darts_zeros_fn(stride))))
            states.append(out)
        s0, s1 = s1, f"k{i}"
        plan.append(Node(s1, tuple(states[j] for j in CONCAT), Unit((), _concat)))
    plan.append(Node("logits", (s1,), Unit((("classifier",),), _darts_head)))
    return plan


def darts_plan(network, arch) -> list[Node]:
    """The plan of a DARTS architecture (``int[32]``, ``DartsSpace`` encoding) on ``network``
    (a ``DartsNetwork`` supernet, possibly abstract), computing what the supernet computes
    for ``space.one_hot(arch)``: per node, the two chosen ops on their chosen inputs (``none``
    left out; a node whose two slots choose the same input and op sums that op's output
    twice, as the supernet's edge weight 2 does), the four nodes concatenated."""
    from nas_jax.spaces.darts import decision_index

    arch = np.asarray(arch)
    primitives = network.space.primitives

    def terms_of(kind, node):
        slots = ((int(arch[decision_index(kind, node, slot, 0)]),
                  primitives[int(arch[decision_index(kind, node, slot, 1)])])
                 for slot in range(2))
        return [(src, name, -1) for src, name in slots if name != "none"]

    return _darts_cells_plan(network, terms_of)


def darts_edge_plan(network, edge_arch, scaled: bool = False) -> list[Node]:
    """The plan of one op per edge on every edge of both cell types: ``edge_arch`` is
    ``int[2, 14]`` (cell type, edge) indexing ``space.primitives``, as the arg-max of a GDAS
    sample over ``alpha`` ``[2, 14, ops]`` (AutoDL's GDAS in the DARTS space: each node sums
    the sampled op of each of its incoming edges; ``none`` edges contribute nothing). What
    the mixture supernet computes for ``edge_weights = one_hot(edge_arch)``.

    ``scaled``: edge ``e`` of cell type ``k`` is scaled by ``edge_scales[k * 14 + e]`` (the
    sample's weight of that edge's op), in every cell of that type."""
    from nas_jax.supernet.darts import NUM_EDGES, edge_index

    edge_arch = np.asarray(edge_arch).reshape(2, NUM_EDGES)
    primitives = network.space.primitives

    def terms_of(kind, node):
        terms = []
        for src in range(node + 2):
            e = edge_index(node, src)
            name = primitives[int(edge_arch[kind, e])]
            if name != "none":
                terms.append((src, name, kind * NUM_EDGES + e if scaled else -1))
        return terms

    return _darts_cells_plan(network, terms_of)


def unit_paths(network) -> list[tuple]:
    """Every unit module path of a supernet with a composed form (NB201, DARTS)."""
    from nas_jax.supernet.darts import DartsNetwork

    return darts_unit_paths(network) if isinstance(network, DartsNetwork) else \
        nb201_unit_paths(network)


def plan_for(network, arch) -> list[Node]:
    """The plan of ``arch`` on a supernet with a composed form (NB201, DARTS)."""
    from nas_jax.supernet.darts import DartsNetwork

    return darts_plan(network, arch) if isinstance(network, DartsNetwork) else \
        nb201_plan(network, arch)
