"""Genotype derivation from crafted alphas (NB201 arg-max; DARTS top-2 edges without `none`)
and the parameter-free op count."""

import numpy as np
import pytest

from nas_jax.spaces.darts import CELLS, DARTS_V2, PRIMITIVES, DartsSpace
from nas_jax.spaces.nb201 import OPS, NB201Space
from nas_jax.strategies.derive import derive, num_parameter_free
from nas_jax.supernet.darts import ALPHA_SHAPE, edge_index

NB201 = NB201Space(channels=2, cells_per_stage=1, input_shape=(8, 8, 1), num_classes=4)
DARTS = DartsSpace(channels=4, num_cells=3, input_shape=(8, 8, 3), num_classes=5)


def test_nb201_takes_the_argmax_per_edge_none_included():
    rng = np.random.default_rng(0)
    alpha = rng.normal(size=(6, 5)) * 0.1
    want = np.array([3, 0, 1, 2, 4, 3])
    alpha[np.arange(6), want] += 1.0
    arch = derive(NB201, alpha)
    np.testing.assert_array_equal(arch, want)
    assert NB201.to_string(arch) == (
        "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|nor_conv_1x1~0|avg_pool_3x3~1|"
        "nor_conv_3x3~2|")
    # Parameter-free: edge 1 (none), edge 2 (skip_connect), edge 4 (avg_pool_3x3).
    assert num_parameter_free(NB201, arch) == 3
    assert num_parameter_free(NB201, [1, 1, 1, 1, 1, 1]) == 6


def darts_alpha_for(genotype_string: str) -> np.ndarray:
    """Alphas whose DARTS derivation is the given genotype: chosen (edge, op) get 5 (a node's
    first input) or 4 (its second); every other edge is dominated by `none` (8)."""
    genotype = DARTS.to_genotype(DARTS.from_string(genotype_string))
    alpha = np.zeros(ALPHA_SHAPE)
    alpha[:, :, PRIMITIVES.index("none")] = 8.0
    for c, name in enumerate(CELLS):
        for k, (op, src) in enumerate(getattr(genotype, name)):
            e = edge_index(k // 2, src)
            alpha[c, e, PRIMITIVES.index("none")] = 0.0
            alpha[c, e, PRIMITIVES.index(op)] = 5.0 if k % 2 == 0 else 4.0
    return alpha


def test_darts_reproduces_a_published_genotype():
    arch = derive(DARTS, darts_alpha_for(DARTS_V2))
    assert DARTS.to_string(arch) == DARTS_V2
    # normal: two skips; reduce: all max pools and skips.
    assert num_parameter_free(DARTS, arch) == 2 + 8


def test_darts_edge_strength_is_the_max_non_none_softmax_weight():
    """Node 1 (inputs 0, 1, 2): edge 0's raw alphas are the largest but spread over all ops,
    edge 2 has one clear op, edge 1 is all `none`. By softmax weight edge 2 is strongest
    then edge 0; `none` never wins an op even where it has the largest weight."""
    alpha = np.zeros(ALPHA_SHAPE)
    node = 1
    alpha[0, edge_index(node, 0), 1:] = 3.0  # uniform over the 7 non-none ops
    alpha[0, edge_index(node, 0), PRIMITIVES.index("dil_conv_5x5")] = 3.1
    alpha[0, edge_index(node, 1), PRIMITIVES.index("none")] = 9.0
    alpha[0, edge_index(node, 2), PRIMITIVES.index("avg_pool_3x3")] = 2.0
    alpha[0, edge_index(node, 2), PRIMITIVES.index("none")] = 2.5
    genotype = DARTS.to_genotype(derive(DARTS, alpha))
    assert genotype.normal[2:4] == [("avg_pool_3x3", 2), ("dil_conv_5x5", 0)]
    assert all(op != "none" for op, _ in genotype.normal + genotype.reduce)
    # All-equal alphas: ties go to the lower input index and the first non-none op.
    flat = DARTS.to_genotype(derive(DARTS, np.zeros(ALPHA_SHAPE)))
    assert flat.normal == [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4
    assert flat.reduce == flat.normal


def test_derive_rejects_a_wrong_alpha_shape():
    with pytest.raises(ValueError, match=r"needs \(6, 5\)"):
        derive(NB201, np.zeros((6, 4)))
    with pytest.raises(ValueError, match=r"needs \(2, 14, 8\)"):
        derive(DARTS, np.zeros((14, 8)))
    assert OPS[0] == "none"
