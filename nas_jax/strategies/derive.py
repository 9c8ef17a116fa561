"""Derive a discrete cell from architecture parameters, as each method's paper does.

- NB201 (NAS-Bench-201's DARTS/GDAS ``genotype()``): the arg-max op per edge, ``none``
  included.
- DARTS (``model_search.Network.genotype``): per intermediate node, the two incoming edges
  with the strongest non-``none`` op (edge strength = the largest non-``none`` softmax
  weight), each with that op; ties go to the lower input index (Python's stable sort). The
  two inputs are listed strongest first, as DARTS prints them.

Host-side (numpy): called once per epoch on the state's ``alpha``.
"""

from __future__ import annotations

import numpy as np

from nas_jax.spaces.darts import CELLS, DartsSpace, decision_index
from nas_jax.spaces.darts import NUM_NODES as DARTS_NODES
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.strategies.gradient import alpha_shape
from nas_jax.supernet.darts import edge_index

PARAMETER_FREE = ("none", "skip_connect", "avg_pool_3x3", "max_pool_3x3")


def _softmax(alpha: np.ndarray) -> np.ndarray:
    z = np.exp(alpha - alpha.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def derive(space, alpha) -> np.ndarray:
    """The discrete architecture (``int32[D]``, the space's encoding) that ``alpha`` picks."""
    alpha = np.asarray(alpha, np.float64)
    expected = alpha_shape(space)
    if alpha.shape != expected:
        raise ValueError(f"alpha has shape {alpha.shape}; {type(space).__name__} needs "
                         f"{expected}")
    if isinstance(space, NB201Space):
        return np.argmax(alpha, -1).astype(np.int32)
    weights = _softmax(alpha)
    none = space.primitives.index("none") if "none" in space.primitives else -1
    arch = np.zeros(space.num_decisions, np.int32)
    for cell in range(len(CELLS)):
        for node in range(DARTS_NODES):
            edges = [weights[cell, edge_index(node, src)] for src in range(node + 2)]
            masked = [np.where(np.arange(len(w)) == none, -np.inf, w) for w in edges]
            strength = [float(m.max()) for m in masked]
            top = sorted(range(node + 2), key=lambda s: -strength[s])[:2]
            for slot, src in enumerate(top):
                arch[decision_index(cell, node, slot, 0)] = src
                arch[decision_index(cell, node, slot, 1)] = int(np.argmax(masked[src]))
    return arch


def op_names(space, arch) -> list[str]:
    """The op chosen by each op decision of ``arch`` (NB201: 6 edges; DARTS: 16 slots)."""
    arch = space.validate(arch)
    if isinstance(space, NB201Space):
        return [space.ops[a] for a in arch]
    if isinstance(space, DartsSpace):
        return [space.primitives[arch[decision_index(c, n, s, 1)]]
                for c in range(len(CELLS)) for n in range(DARTS_NODES) for s in range(2)]
    raise ValueError(f"no op names for {type(space).__name__}; supported: nb201, darts")


def num_parameter_free(space, arch) -> int:
    """How many of the cell's ops have no weights (``none``, ``skip_connect``, pools): the
    usual sign of DARTS' collapse. DARTS counts both cells' 16 ops; a strided skip in the
    reduction cell (a FactorizedReduce in the network) is counted as a skip too."""
    return sum(name in PARAMETER_FREE for name in op_names(space, arch))
