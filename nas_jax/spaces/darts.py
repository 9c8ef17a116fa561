"""The DARTS cell space (Liu, Simonyan & Yang, ICLR 2019).

Two cells, ``normal`` and ``reduce``, each with 4 intermediate nodes. Node ``i`` (0..3) sums
two operations, each applied to one of its ``i + 2`` candidate inputs: the cell inputs
``c_{k-2}`` (0) and ``c_{k-1}`` (1) and the earlier intermediate nodes (2 .. i+1). The cell
output concatenates all four intermediate nodes (``concat = [2, 3, 4, 5]``).

Integer encoding (32 decisions): for cell in (normal, reduce), for node 0..3, for input slot
0..1: ``(input index, op index)``. ``num_choices`` is per decision (``i + 2`` for an
input index, 8 for an op with DARTS' ops), so the inherited mutation and crossover always
yield valid cells. The integer space contains ``none``; cells derived by DARTS never do, but
the strings here print it all the same.

The ops every edge chooses from are ``DartsSpace.primitives``: DARTS' 8 (``PRIMITIVES``) by
default, or any subset or reordering of ``OPS``, e.g. the MetaNAS code's few-shot set
(``FEWSHOT_PRIMITIVES``: no ``none``, no 5x5 kernels, plus ``conv_3x3`` and
``conv_1x5_5x1``) or RobustDARTS' reduced spaces (``('skip_connect', 'sep_conv_3x3')``).
An op decision then has ``len(primitives)`` choices.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import math
import re

import numpy as np

from nas_jax.spaces.base import SearchSpace

PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)  # The DARTS repository's genotypes.PRIMITIVES order.
# The MetaNAS code's few-shot op set (its genotypes.PRIMITIVES_FEWSHOT, in that order).
FEWSHOT_PRIMITIVES = (
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "conv_1x5_5x1",
    "conv_3x3",
    "sep_conv_3x3",
    "dil_conv_3x3",
)
# Every op a DARTS network can build: ``conv_3x3`` is MetaNAS' (ReLU, depthwise 3x3,
# pointwise 1x1, BN: DilConv without dilation); ``conv_1x5_5x1`` is ReLU, full 1x5 and 5x1
# convolutions, BN (``ops.FacConv``).
OPS = PRIMITIVES + ("conv_3x3", "conv_1x5_5x1")
CELLS = ("normal", "reduce")
NUM_NODES = 4
CONCAT = (2, 3, 4, 5)
SEP_KERNEL = {"sep_conv_3x3": 3, "sep_conv_5x5": 5}
DIL_KERNEL = {"dil_conv_3x3": 3, "dil_conv_5x5": 5}

Genotype = collections.namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

# Published cells, verbatim from the DARTS repository's cnn/genotypes.py.
DARTS_V1 = (
    "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])"
)
DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)


def decision_index(cell: int, node: int, slot: int, kind: int) -> int:
    """Position in the vector of cell ``cell``'s node ``node``, input ``slot``; kind 0: input
    index, 1: op index."""
    return ((cell * NUM_NODES + node) * 2 + slot) * 2 + kind


def num_choices_for(num_ops: int) -> tuple[int, ...]:
    """Choices per decision for ``num_ops`` ops per edge: (node + 2 inputs, num_ops) per slot."""
    return tuple(n for _ in CELLS for node in range(NUM_NODES) for _ in range(2)
                 for n in (node + 2, num_ops))


NUM_CHOICES = num_choices_for(len(PRIMITIVES))
INPUT_POSITIONS = tuple(range(0, len(NUM_CHOICES), 2))  # decisions that choose an input
OP_POSITIONS = tuple(range(1, len(NUM_CHOICES), 2))  # decisions that choose an op


@dataclasses.dataclass(frozen=True)
class DartsSpace(SearchSpace):
    """The cell space plus the CIFAR macro skeleton of DARTS' ``NetworkCIFAR`` for costs.

    Attributes:
      channels: C, the width of the first cells (16 for search, 36 for evaluation).
      num_cells: cells in the network (8 for search, 20 for evaluation); cells
        ``num_cells // 3`` and ``2 * num_cells // 3`` are reduction cells (channels x2,
        resolution /2).
      stem_multiplier: the stem convolution outputs ``stem_multiplier * C`` channels.
      input_shape: per-example input (H, W, channels), e.g. (32, 32, 3) for CIFAR.
      num_classes: width of the classifier.
      primitives: the ops every edge chooses from, in order (op indices refer to it); distinct
        names from ``OPS``. Default: DARTS' ``PRIMITIVES``.
      num_choices: derived from ``primitives`` (leave it out).
    """

    num_choices: tuple[int, ...] | None = None
    channels: int = 16
    num_cells: int = 8
    stem_multiplier: int = 3
    input_shape: tuple[int, int, int] = (32, 32, 3)
    num_classes: int = 10
    primitives: tuple[str, ...] = PRIMITIVES

    def __post_init__(self):
        primitives = tuple(self.primitives)
        unknown = [p for p in primitives if p not in OPS]
        if unknown:
            names = ", ".join(map(repr, unknown))
            raise ValueError(f"DartsSpace.primitives: unknown op(s) {names}; ops are "
                             f"{', '.join(OPS)}")
        if len(set(primitives)) != len(primitives):
            raise ValueError(f"DartsSpace.primitives repeats an op: {primitives}")
        if not [p for p in primitives if p != "none"]:
            raise ValueError("DartsSpace.primitives needs at least one op other than 'none'")
        object.__setattr__(self, "primitives", primitives)
        expected = num_choices_for(len(primitives))
        if self.num_choices is None:
            object.__setattr__(self, "num_choices", expected)
        elif tuple(self.num_choices) != expected:
            raise ValueError("DartsSpace.num_choices is derived: 2 cells x 4 nodes x 2 inputs x "
                             "(input index, op index into primitives); leave it out")
        for field in ("channels", "num_cells", "stem_multiplier", "num_classes"):
            if getattr(self, field) < 1:
                raise ValueError(f"DartsSpace.{field} must be >= 1, got {getattr(self, field)}")
        if len(self.input_shape) != 3:
            raise ValueError(f"DartsSpace.input_shape must be (H, W, C), got {self.input_shape}")

    @classmethod
    def for_evaluation(cls, **kwargs) -> DartsSpace:
        """The evaluation skeleton of the paper (C=36, 20 cells); ``kwargs`` override."""
        return cls(**{"channels": 36, "num_cells": 20, **kwargs})

    @property
    def op_names(self) -> tuple[str, ...]:
        return self.primitives

    @property
    def alpha_shape(self) -> tuple[int, int, int]:
        """Architecture parameters per (cell type, edge, op): ``(2, 14, len(primitives))``."""
        return (len(CELLS), NUM_NODES * (NUM_NODES + 3) // 2, len(self.primitives))

    @property
    def reduction_cells(self) -> tuple[int, ...]:
        return tuple(sorted({self.num_cells // 3, 2 * self.num_cells // 3}))

    # ------------------------------------------------------------ genotypes
    def to_genotype(self, arch) -> Genotype:
        """DARTS' ``Genotype`` namedtuple (lists of ``(op name, input index)``)."""
        arch = self.validate(arch)
        cells = []
        for c in range(len(CELLS)):
            cells.append([(self.primitives[arch[decision_index(c, n, s, 1)]],
                           int(arch[decision_index(c, n, s, 0)]))
                          for n in range(NUM_NODES) for s in range(2)])
        return Genotype(normal=cells[0], normal_concat=list(CONCAT),
                        reduce=cells[1], reduce_concat=list(CONCAT))

    def from_genotype(self, genotype) -> np.ndarray:
        """Inverse of ``to_genotype``; accepts any object with the four Genotype fields."""
        arch = np.zeros(self.num_decisions, np.int32)
        for c, name in enumerate(CELLS):
            concat = list(getattr(genotype, f"{name}_concat"))
            if concat != list(CONCAT):
                raise ValueError(f"{name}_concat must be {list(CONCAT)} (every intermediate "
                                 f"node), got {concat}")
            pairs = list(getattr(genotype, name))
            if len(pairs) != 2 * NUM_NODES:
                raise ValueError(f"{name} cell needs {2 * NUM_NODES} (op, input) pairs "
                                 f"({NUM_NODES} nodes x 2), got {len(pairs)}")
            for k, pair in enumerate(pairs):
                node, slot = divmod(k, 2)
                where = f"{name} cell node {node} input {slot}"
                if not (isinstance(pair, tuple | list) and len(pair) == 2
                        and isinstance(pair[0], str) and isinstance(pair[1], int)
                        and not isinstance(pair[1], bool)):
                    raise ValueError(f"{where}: expected ('op_name', input_index), got {pair!r}")
                op, src = pair
                if op not in self.primitives:
                    raise ValueError(f"{where}: unknown op {op!r}; this space's ops are "
                                     f"{', '.join(self.primitives)}")
                if not 0 <= src < node + 2:
                    raise ValueError(f"{where}: input index {src} out of range; node {node} "
                                     f"takes inputs 0..{node + 1}")
                arch[decision_index(c, node, slot, 0)] = src
                arch[decision_index(c, node, slot, 1)] = self.primitives.index(op)
        return arch

    # ------------------------------------------------------------ strings
    def to_string(self, arch) -> str:
        """The genotype as printed in DARTS' genotypes.py (concat written ``[2, 3, 4, 5]``)."""
        return repr(self.to_genotype(arch))

    def from_string(self, text: str) -> np.ndarray:
        """Parse ``Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...)``.

        Parsed with ``ast`` (nothing is evaluated). Concats may be ``range(2, 6)`` or
        ``[2, 3, 4, 5]``; a leading ``NAME =`` (a line of genotypes.py) is allowed.
        """
        body = re.sub(r"^\s*[A-Za-z_]\w*\s*=\s*(?=Genotype\b)", "", text).strip()
        if not body:
            raise ValueError("DARTS genotype string is empty")
        try:
            tree = ast.parse(body, mode="eval").body
        except SyntaxError as e:
            raise ValueError(f"DARTS genotype is not valid Python syntax: {e.msg}: "
                             f"{text!r}") from None
        if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)
                and tree.func.id == "Genotype"):
            raise ValueError(f"DARTS genotype must be a call Genotype(...): {text!r}")
        if len(tree.args) > len(Genotype._fields):
            raise ValueError(f"Genotype takes {len(Genotype._fields)} fields, got "
                             f"{len(tree.args)} positional arguments")
        fields = dict(zip(Genotype._fields, tree.args))
        for kw in tree.keywords:
            if kw.arg not in Genotype._fields:
                raise ValueError(f"unknown Genotype field {kw.arg!r}; fields are "
                                 f"{', '.join(Genotype._fields)}")
            if kw.arg in fields:
                raise ValueError(f"Genotype field {kw.arg!r} given twice")
            fields[kw.arg] = kw.value
        missing = [f for f in Genotype._fields if f not in fields]
        if missing:
            raise ValueError(f"Genotype is missing field(s) {', '.join(missing)}")
        values = {name: _literal(name, node) for name, node in fields.items()}
        return self.from_genotype(Genotype(**values))

    # -------------------------------------------------------- canonical form
    def canonical(self, arch) -> np.ndarray:
        """Order-free form: a node's two (input, op) pairs are sorted, and a ``none`` op's
        input is set to 0 (zero whatever it reads). Other isomorphisms are not merged."""
        arch = self.validate(arch).copy()
        none = self.primitives.index("none") if "none" in self.primitives else -1
        for c in range(len(CELLS)):
            for n in range(NUM_NODES):
                pairs = []
                for s in range(2):
                    src = arch[decision_index(c, n, s, 0)]
                    op = arch[decision_index(c, n, s, 1)]
                    pairs.append((0 if op == none else int(src), int(op)))
                for s, (src, op) in enumerate(sorted(pairs)):
                    arch[decision_index(c, n, s, 0)] = src
                    arch[decision_index(c, n, s, 1)] = op
        return arch

    # ------------------------------------------------------------- costs
    def _costs(self, arch) -> tuple[int, int]:
        """(parameters, multiply-adds per example) of the evaluation network."""
        arch = self.validate(arch)
        h, w, c_in = self.input_shape
        c = self.channels
        c_stem = self.stem_multiplier * c
        params = 9 * c_in * c_stem + 2 * c_stem  # stem conv 3x3 (no bias) + BN
        macs = h * w * 9 * c_in * c_stem
        c_pp, c_p, c_cur = c_stem, c_stem, c
        hw_p = (h, w)
        reduction_prev = False
        for i in range(self.num_cells):
            reduction = i in self.reduction_cells
            if reduction:
                c_cur *= 2
            hw_out = tuple(math.ceil(x / 2) for x in hw_p) if reduction else hw_p
            # Preprocessing: s0 through FactorizedReduce after a reduction cell (its input is
            # at twice the resolution), otherwise ReLU-conv1x1-BN; s1 always ReLU-conv1x1-BN.
            if reduction_prev:
                params += _fr_params(c_pp, c_cur)
                macs += math.prod(hw_p) * c_pp * (c_cur // 2) * 2
            else:
                params += c_pp * c_cur + 2 * c_cur
                macs += math.prod(hw_p) * c_pp * c_cur
            params += c_p * c_cur + 2 * c_cur
            macs += math.prod(hw_p) * c_p * c_cur
            cell = 1 if reduction else 0
            for n in range(NUM_NODES):
                for s in range(2):
                    src = arch[decision_index(cell, n, s, 0)]
                    op = self.primitives[arch[decision_index(cell, n, s, 1)]]
                    strided = reduction and src < 2
                    p, m = _op_costs(op, c_cur, strided)
                    params += p
                    macs += m * math.prod(hw_out)
            reduction_prev = reduction
            c_pp, c_p = c_p, len(CONCAT) * c_cur
            hw_p = hw_out
        params += c_p * self.num_classes + self.num_classes  # classifier (with bias)
        macs += c_p * self.num_classes
        return int(params), int(macs)

    def num_params(self, arch) -> int:
        """Trainable parameters of DARTS' ``NetworkCIFAR`` (no auxiliary head) for ``arch``.

        Stem conv3x3 (no bias) + BN; per cell, preprocessing of both inputs, then each op:
        sep_conv_k = 2 x (depthwise kxk, pointwise 1x1, BN); dil_conv_k = depthwise kxk
        (dilation 2), pointwise 1x1, BN; conv_3x3 = depthwise 3x3, pointwise 1x1, BN;
        conv_1x5_5x1 = conv 1x5, conv 5x1, BN; skip_connect with stride 2 (on a cell input of a
        reduction cell) = FactorizedReduce; pools and ``none`` have none. Convs have no bias;
        BN counts its affine scale and shift. Linear classifier with bias.
        """
        return self._costs(arch)[0]

    def flops(self, arch) -> int:
        """2 x multiply-adds of one forward pass for one example (convolutions and classifier;
        BN, ReLU, pooling and additions are not counted). Strided layers output
        ``ceil(size / 2)``."""
        return 2 * self._costs(arch)[1]


def _fr_params(c_in: int, c_out: int) -> int:
    """FactorizedReduce: ReLU, two 1x1 stride-2 convs (c_in -> c_out // 2, no bias), BN."""
    return 2 * c_in * (c_out // 2) + 2 * c_out


def _op_costs(op: str, c: int, strided: bool) -> tuple[int, int]:
    """(parameters, multiply-adds per output pixel) of one candidate op at width ``c``."""
    if op in SEP_KERNEL:
        k = SEP_KERNEL[op]
        return 2 * (c * k * k + c * c + 2 * c), 2 * (c * k * k + c * c)
    if op in DIL_KERNEL:
        k = DIL_KERNEL[op]
        return c * k * k + c * c + 2 * c, c * k * k + c * c
    if op == "conv_3x3":
        return c * 9 + c * c + 2 * c, c * 9 + c * c
    if op == "conv_1x5_5x1":
        return 10 * c * c + 2 * c, 10 * c * c
    if op == "skip_connect" and strided:
        return _fr_params(c, c), (c // 2) * 2 * c
    return 0, 0


def _literal(field: str, node: ast.AST):
    """A Genotype field's value: a literal, or ``range(...)`` of integer literals."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        try:
            args = [ast.literal_eval(a) for a in node.args]
        except ValueError:
            args = None
        if node.keywords or not args or not all(type(a) is int for a in args):
            raise ValueError(f"Genotype field {field!r}: range() needs integer literals")
        return list(range(*args))
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"Genotype field {field!r} must be a literal list, got "
                         f"{ast.unparse(node)!r}") from None
