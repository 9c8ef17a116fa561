"""The NAS-Bench-201 cell space (Dong & Yang, ICLR 2020).

A cell has 4 nodes; node ``j`` sums one operation applied to each earlier node. The six
edges, in the benchmark's string order, are (1<-0), (2<-0), (2<-1), (3<-0), (3<-1),
(3<-2). Each edge takes one of 5 operations: 15,625 cells.

``NB201Space(ops=...)`` restricts every edge to a subset of the 5 operations (kept in the
benchmark's order; an architecture's integers index that subset), e.g. without
``avg_pool_3x3``: 4,096 cells, 871 functionally distinct. Such a subspace's cells are cells
of the full space, computing the same functions.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np

from nas_jax.spaces.base import SearchSpace

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from), in string order
NUM_NODES = 4
CONV_KERNEL = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}


@dataclasses.dataclass(frozen=True)
class NB201Space(SearchSpace):
    """The cell space plus the macro skeleton used for cost models.

    Attributes:
      channels: C, the width of the first stage (stages have C, 2C, 4C channels).
      cells_per_stage: N, cells in each of the 3 stages.
      input_shape: per-example input (H, W, channels), e.g. (32, 32, 3) for CIFAR.
      num_classes: width of the classifier.
      ops: the operations every edge chooses from, a subset of ``OPS`` of at least 2 in
        ``OPS``' order (default: all 5); ``num_choices`` follows from it.
    """

    num_choices: tuple[int, ...] = (len(OPS),) * len(EDGES)
    channels: int = 16
    cells_per_stage: int = 5
    input_shape: tuple[int, int, int] = (32, 32, 3)
    num_classes: int = 10
    ops: tuple[str, ...] = OPS

    def __post_init__(self):
        ops = tuple(self.ops)
        unknown = [op for op in ops if op not in OPS]
        if unknown or len(ops) < 2 or len(set(ops)) != len(ops) or \
                list(ops) != sorted(ops, key=OPS.index):
            raise ValueError(f"NB201Space.ops={ops!r}: give at least 2 distinct operations of "
                             f"{', '.join(OPS)}, in that order")
        object.__setattr__(self, "ops", ops)
        expected = (len(ops),) * len(EDGES)
        if tuple(self.num_choices) not in (expected, (len(OPS),) * len(EDGES)):
            raise ValueError(f"NB201Space.num_choices is fixed at 6 edges x len(ops); got "
                             f"{self.num_choices} for {len(ops)} ops")
        object.__setattr__(self, "num_choices", expected)
        for field in ("channels", "cells_per_stage", "num_classes"):
            if getattr(self, field) < 1:
                raise ValueError(f"NB201Space.{field} must be >= 1, got {getattr(self, field)}")

    @property
    def op_names(self) -> tuple[str, ...]:
        return self.ops

    def full_indices(self, arch) -> np.ndarray:
        """``arch`` as indices into the full ``OPS`` (the same cell in the 5-op space)."""
        return np.asarray([OPS.index(op) for op in self.ops], np.int32)[self.validate(arch)]

    # ------------------------------------------------------------ strings
    def to_string(self, arch) -> str:
        """The benchmark's string, e.g. ``|nor_conv_3x3~0|+|none~0|skip_connect~1|+|...|``."""
        arch = self.validate(arch)
        nodes = []
        for node in range(1, NUM_NODES):
            terms = [f"{self.ops[arch[e]]}~{src}" for e, (dst, src) in enumerate(EDGES)
                     if dst == node]
            nodes.append("|" + "|".join(terms) + "|")
        return "+".join(nodes)

    def from_string(self, text: str) -> np.ndarray:
        """Parse the benchmark's string form (the inverse of ``to_string``)."""
        nodes = text.strip().split("+")
        if len(nodes) != NUM_NODES - 1:
            raise ValueError(f"NB201 string needs {NUM_NODES - 1} '+'-separated nodes: {text!r}")
        arch = np.zeros(len(EDGES), np.int32)
        for node, part in enumerate(nodes, start=1):
            terms = [t for t in part.split("|") if t]
            if len(terms) != node:
                raise ValueError(f"node {node} of {text!r} needs {node} inputs, got {len(terms)}")
            sources = set()
            for term in terms:
                m = re.fullmatch(r"(\w+)~(\d+)", term)
                if not m or m.group(1) not in self.ops:
                    raise ValueError(f"bad NB201 term {term!r}; this space's ops are "
                                     f"{', '.join(self.ops)}")
                src = int(m.group(2))
                if src in sources:
                    raise ValueError(f"node {node} of {text!r} lists input {src} twice")
                sources.add(src)
                if (node, src) not in EDGES:
                    raise ValueError(f"bad NB201 edge {src}->{node} in {text!r}")
                arch[EDGES.index((node, src))] = self.ops.index(m.group(1))
        return arch

    # -------------------------------------------------------- canonical form
    def canonical(self, arch) -> np.ndarray:
        """The smallest integer vector computing the same function (isomorphic cells agree).

        Two cells are equivalent when their output is the same multiset of operation paths:
        ``none`` edges and edges from dead nodes are dropped, ``skip_connect`` is the identity,
        and the order of summed inputs does not matter (so nodes 1 and 2 may swap).
        """
        full = tuple(int(a) for a in self.full_indices(arch))
        return np.asarray(_canonical_table(self.ops)[_cell_expression(full)], np.int32)

    def num_unique(self) -> int:
        """Number of functionally distinct cells under ``canonical``'s rule (4,930 for all
        5 ops, 871 without ``avg_pool_3x3``)."""
        return len(_canonical_table(self.ops))

    # ------------------------------------------------------------- costs
    def _stage_channels(self) -> tuple[int, int, int]:
        c = self.channels
        return (c, 2 * c, 4 * c)

    def num_params(self, arch) -> int:
        """Trainable parameters of the standalone network (conv, BN affine, classifier)."""
        arch = self.full_indices(arch)
        c_in = self.input_shape[-1]
        c = self.channels
        total = 9 * c_in * c + 2 * c  # stem conv + BN
        cell_convs = sum(CONV_KERNEL.get(OPS[a], 0) ** 2 for a in arch)
        n_conv_edges = sum(OPS[a] in CONV_KERNEL for a in arch)
        for stage, ch in enumerate(self._stage_channels()):
            if stage > 0:
                prev = ch // 2
                total += 9 * prev * ch + 2 * ch + 9 * ch * ch + 2 * ch + prev * ch
            total += self.cells_per_stage * (cell_convs * ch * ch + n_conv_edges * 2 * ch)
        c_last = self._stage_channels()[-1]
        total += 2 * c_last + c_last * self.num_classes + self.num_classes
        return int(total)

    def flops(self, arch) -> int:
        """Multiply-adds x2 of one forward pass for one example (convolutions and classifier)."""
        arch = self.full_indices(arch)
        h, w, c_in = self.input_shape
        c = self.channels
        total = 2 * h * w * 9 * c_in * c
        live = _live_edges(tuple(int(a) for a in arch))
        cell_macs = sum(CONV_KERNEL.get(OPS[a], 0) ** 2 for a, on in zip(arch, live) if on)
        for stage, ch in enumerate(self._stage_channels()):
            if stage > 0:
                prev = ch // 2
                h, w = (h + 1) // 2, (w + 1) // 2
                total += 2 * h * w * (9 * prev * ch + 9 * ch * ch + prev * ch)
            total += self.cells_per_stage * 2 * h * w * cell_macs * ch * ch
        total += 2 * self._stage_channels()[-1] * self.num_classes
        return int(total)


def _live_edges(arch: tuple[int, ...]) -> tuple[bool, ...]:
    """Edges that influence the cell output (non-none, source reachable, target reaches
    out); ``arch`` in full ``OPS`` indices."""
    on = [OPS[a] != "none" for a in arch]
    reach = {0}
    for node in range(1, NUM_NODES):
        if any(on[e] and dst == node and src in reach for e, (dst, src) in enumerate(EDGES)):
            reach.add(node)
    reaches_out = {NUM_NODES - 1}
    for node in range(NUM_NODES - 2, -1, -1):
        if any(on[e] and src == node and dst in reaches_out for e, (dst, src) in enumerate(EDGES)):
            reaches_out.add(node)
    return tuple(
        on[e] and src in reach and dst in reaches_out for e, (dst, src) in enumerate(EDGES)
    )


def _cell_expression(arch: tuple[int, ...]) -> tuple:
    """The output node as a sorted multiset of operation paths (see ``canonical``);
    ``arch`` in full ``OPS`` indices."""
    exprs: list[tuple] = [(("x",),)]
    for node in range(1, NUM_NODES):
        terms: list = []
        for e, (dst, src) in enumerate(EDGES):
            op = OPS[arch[e]]
            if dst != node or op == "none" or not exprs[src]:
                continue
            if op == "skip_connect":
                terms.extend(exprs[src])
            else:
                terms.append((op, exprs[src]))
        exprs.append(tuple(sorted(terms, key=repr)))
    return exprs[-1]


@functools.lru_cache(maxsize=8)
def _canonical_table(ops: tuple[str, ...] = OPS) -> dict:
    """Expression -> smallest integer vector (indices into ``ops``) with that expression,
    over every cell of the space with those ops (15,625 for all 5)."""
    table: dict = {}
    to_full = [OPS.index(op) for op in ops]
    for arch in NB201Space(ops=ops).enumerate():
        key = tuple(int(a) for a in arch)
        table.setdefault(_cell_expression(tuple(to_full[a] for a in key)), key)
    return table
