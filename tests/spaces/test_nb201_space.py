"""NB201Space: benchmark strings, canonical (isomorphism) forms and hand-computed costs."""

import collections

import jax
import numpy as np
import pytest
from flax import nnx

from nas_jax import ops
from nas_jax.spaces.nb201 import EDGES, OPS, NB201Space
from nas_jax.supernet.nb201 import NB201Network

SPACE = NB201Space()
TINY = NB201Space(channels=2, cells_per_stage=1, input_shape=(8, 8, 1), num_classes=10)
NONE, SKIP, CONV1, CONV3, POOL = range(5)

PUBLISHED = {
    # The best CIFAR-10 cell of the benchmark.
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|"
    "nor_conv_3x3~2|": (3, 3, 3, 1, 3, 3),
    # The cell DARTS collapses to.
    "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|"
    "skip_connect~2|": (1, 1, 1, 1, 1, 1),
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|": (0, 0, 0, 0, 0, 0),
    # Every op once, each edge distinct: pins the edge order (1<-0),(2<-0),(2<-1),(3<-0),...
    "|nor_conv_1x1~0|+|skip_connect~0|avg_pool_3x3~1|+|nor_conv_3x3~0|none~1|"
    "skip_connect~2|": (2, 1, 4, 3, 0, 1),
}


def test_sizes_and_op_order():
    assert SPACE.size == 15625 == len(SPACE.enumerate())
    assert SPACE.num_decisions == 6 and SPACE.max_choices == 5
    assert SPACE.op_names == OPS
    assert OPS == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


def test_constructor_rejects_bad_fields():
    with pytest.raises(ValueError, match="num_choices"):
        NB201Space(num_choices=(5,) * 5)
    with pytest.raises(ValueError, match="channels"):
        NB201Space(channels=0)


@pytest.mark.parametrize("text,arch", list(PUBLISHED.items()))
def test_published_strings(text, arch):
    np.testing.assert_array_equal(SPACE.from_string(text), arch)
    assert SPACE.from_string(text).dtype == np.int32
    assert SPACE.to_string(arch) == text


def test_round_trip_every_architecture():
    for arch in SPACE.enumerate():
        text = SPACE.to_string(arch)
        assert text.count("+") == 2 and text.count("~") == 6
        np.testing.assert_array_equal(SPACE.from_string(text), arch)


@pytest.mark.parametrize(
    "text,match",
    [
        ("|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "bad NB201 term"),
        ("|nor_conv_3x3|+|none~0|none~1|+|none~0|none~1|none~2|", "bad NB201 term"),
        ("|none~0|+|none~0|none~1|", "3 '\\+'-separated nodes"),
        ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|+|none~0|", "3 '\\+'-separated"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2"),
        ("|none~0|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "node 1"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "edge 1->1"),
        ("|none~0|+|none~0|none~3|+|none~0|none~1|none~2|", "edge 3->2"),
        ("", "nodes"),
    ],
)
def test_bad_strings_raise(text, match):
    with pytest.raises(ValueError, match=match):
        SPACE.from_string(text)


def test_duplicated_input_raises():
    # Node 2 lists source 0 twice and never source 1.
    with pytest.raises(ValueError, match="lists input 0 twice"):
        SPACE.from_string("|none~0|+|skip_connect~0|nor_conv_3x3~0|+|none~0|none~1|none~2|")


def test_to_string_validates():
    with pytest.raises(ValueError, match="decision 2 has value 5"):
        SPACE.to_string([0, 0, 5, 0, 0, 0])
    with pytest.raises(ValueError, match="shape"):
        SPACE.to_string([0, 0, 0])


def canon(text):
    return SPACE.canonical(SPACE.from_string(text))


def test_swapping_nodes_1_and_2_is_isomorphic():
    a = "|nor_conv_3x3~0|+|avg_pool_3x3~0|none~1|+|none~0|skip_connect~1|skip_connect~2|"
    b = "|avg_pool_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|skip_connect~1|skip_connect~2|"
    # Swapped nodes with different out-edges (3<-1 and 3<-2 swap along).
    c = "|nor_conv_3x3~0|+|avg_pool_3x3~0|none~1|+|skip_connect~0|nor_conv_1x1~1|none~2|"
    d = "|avg_pool_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|nor_conv_1x1~2|"
    for x, y in [(a, b), (c, d)]:
        assert not np.array_equal(SPACE.from_string(x), SPACE.from_string(y))
        np.testing.assert_array_equal(canon(x), canon(y))
    assert not np.array_equal(canon(a), canon(c))
    # With the edge 2<-1 present, the swap is not an isomorphism.
    e = "|nor_conv_3x3~0|+|avg_pool_3x3~0|skip_connect~1|+|none~0|none~1|skip_connect~2|"
    f = "|avg_pool_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|none~0|skip_connect~1|none~2|"
    assert not np.array_equal(canon(e), canon(f))


@pytest.mark.parametrize(
    "arch",
    [(3, 3, 3, 0, 0, 0),  # nothing enters the output node
     (0, 0, 0, 0, 3, 0),  # the output only reads node 1, which is dead
     (0, 4, 0, 0, 0, 0)],  # a live node that never reaches the output
)
def test_disconnected_output_equals_all_none(arch):
    np.testing.assert_array_equal(SPACE.canonical(arch), np.zeros(6, np.int32))


def test_skip_chains_collapse_to_the_direct_edge():
    direct = np.array([0, 0, 0, CONV3, 0, 0])
    for chain in [(CONV3, 0, 0, 0, SKIP, 0),  # 0 -conv-> 1 -skip-> 3
                  (0, CONV3, 0, 0, 0, SKIP),  # 0 -conv-> 2 -skip-> 3
                  (SKIP, 0, SKIP, 0, 0, CONV3)]:  # 0 -skip-> 1 -skip-> 2 -conv-> 3
        np.testing.assert_array_equal(SPACE.canonical(chain), direct)
    # The op matters: a 1x1 chain is a different function; so is conv-then-pool.
    assert not np.array_equal(SPACE.canonical((CONV1, 0, 0, 0, SKIP, 0)), direct)
    assert not np.array_equal(SPACE.canonical((CONV3, 0, 0, 0, POOL, 0)), direct)
    # Summing the same path twice is not the same as once.
    assert not np.array_equal(SPACE.canonical((CONV3, 0, 0, CONV3, SKIP, 0)), direct)


def connected(arch):
    reach = {0}
    for dst, src in sorted(EDGES):
        if arch[EDGES.index((dst, src))] != NONE and src in reach:
            reach.add(dst)
    return 3 in reach


def test_canonical_classes_over_the_whole_space():
    archs = SPACE.enumerate()
    groups = collections.defaultdict(list)
    for arch in archs:
        groups[SPACE.canonical_key(arch)].append(tuple(int(a) for a in arch))
    assert SPACE.num_unique() == len(groups)
    assert 1 < len(groups) < SPACE.size
    for rep, members in groups.items():
        assert rep == min(members)  # the smallest member (enumerate is lexicographic)
        assert SPACE.canonical_key(rep) == rep  # idempotent
    # Zero output exactly when no path of non-none edges joins the input to the output.
    assert set(groups[(0,) * 6]) == {tuple(a) for a in archs.tolist() if not connected(a)}
    assert len(groups[(0,) * 6]) == 341
    assert len(groups[(0, 0, 0, 3, 0, 0)]) > 1
    out = SPACE.canonical(archs[123])
    assert out.dtype == np.int32 and out.shape == (6,)


def count_params(space, arch):
    model = nnx.eval_shape(lambda: NB201Network(space, arch, rngs=ops.ParamKeys(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_num_params_hand_computed():
    c, k = 2, 10
    stem = 3 * 3 * 1 * c + 2 * c  # 22
    red1 = 9 * c * 2 * c + 2 * 2 * c + 9 * (2 * c) ** 2 + 2 * 2 * c + c * 2 * c  # 240
    red2 = 9 * 2 * c * 4 * c + 2 * 4 * c + 9 * (4 * c) ** 2 + 2 * 4 * c + 2 * c * 4 * c  # 928
    head = 2 * 4 * c + 4 * c * k + k  # 16 + 90
    all_none = stem + red1 + red2 + head
    assert all_none == 1296
    # One 3x3 and one 1x1 conv per cell (conv + BN affine each), at C, 2C and 4C channels.
    cells = sum(9 * ch * ch + 2 * ch + ch * ch + 2 * ch for ch in (c, 2 * c, 4 * c))
    assert cells == 48 + 176 + 672
    mixed = (CONV3, SKIP, POOL, CONV1, NONE, SKIP)
    assert TINY.num_params((0,) * 6) == all_none == count_params(TINY, (0,) * 6)
    assert TINY.num_params(mixed) == all_none + cells == 2192 == count_params(TINY, mixed)


@pytest.mark.parametrize("arch", [(3,) * 6, (1,) * 6, (2, 0, 3, 0, 3, 4), (3, 0, 0, 0, 0, 0)])
def test_num_params_matches_the_standalone_network(arch):
    space = NB201Space(channels=3, cells_per_stage=2, input_shape=(8, 8, 2), num_classes=5)
    assert space.num_params(arch) == count_params(space, arch)


def test_flops_hand_computed():
    stem = 2 * 8 * 8 * 9 * 1 * 2  # 2304
    red1 = 2 * 4 * 4 * (9 * 2 * 4 + 9 * 4 * 4 + 2 * 4)  # 7168, at 4x4
    red2 = 2 * 2 * 2 * (9 * 4 * 8 + 9 * 8 * 8 + 4 * 8)  # 7168, at 2x2
    head = 2 * 8 * 10
    all_none = stem + red1 + red2 + head
    assert all_none == 16800 == TINY.flops((0,) * 6)
    conv3 = sum(2 * hw * 9 * ch * ch for hw, ch in ((64, 2), (16, 4), (4, 8)))  # 3 x 4608
    conv1 = sum(2 * hw * ch * ch for hw, ch in ((64, 2), (16, 4), (4, 8)))  # 3 x 512
    assert TINY.flops((0, 0, 0, CONV3, 0, 0)) == all_none + conv3 == 30624
    assert TINY.flops((0, 0, 0, CONV1, POOL, SKIP)) == all_none + conv1
    # A conv whose output never reaches the cell output costs nothing.
    assert TINY.flops((CONV3, 0, 0, 0, 0, 0)) == all_none
    assert TINY.flops((CONV3, 0, 0, 0, SKIP, 0)) == all_none + conv3


def test_flops_ordering():
    for space in (TINY, SPACE):
        none, conv3, conv1 = (space.flops((op,) * 6) for op in (NONE, CONV3, CONV1))
        assert none < conv1 < conv3
        assert space.flops((SKIP,) * 6) == none == space.flops((POOL,) * 6)


# ------------------------------------------------------- an operation subset (ops=...)
SUB = NB201Space(ops=("none", "skip_connect", "nor_conv_3x3"))
NO_POOL = NB201Space(ops=OPS[:4])


def test_op_subset_sizes_and_fields():
    assert SUB.num_choices == (3,) * 6 and SUB.size == 729 and SUB.op_names == SUB.ops
    assert NO_POOL.num_choices == (4,) * 6 and NO_POOL.num_unique() == 871
    assert SUB != SPACE and hash(SUB) != hash(SPACE)
    # The full space's num_choices may be passed along (as a table's metadata does).
    assert NB201Space(num_choices=(5,) * 6, ops=SUB.ops) == SUB
    for bad in (("skip_connect", "none"), ("none",), ("none", "conv"), ("none", "none")):
        with pytest.raises(ValueError, match="ops"):
            NB201Space(ops=bad)
    with pytest.raises(ValueError, match="num_choices"):
        NB201Space(num_choices=(4,) * 6, ops=SUB.ops)


def test_op_subset_strings_index_the_subset():
    arch = np.array([2, 1, 0, 2, 2, 1])  # conv3x3, skip, none, ...
    text = SUB.to_string(arch)
    assert text == SPACE.to_string(SUB.full_indices(arch))
    np.testing.assert_array_equal(SUB.from_string(text), arch)
    np.testing.assert_array_equal(SUB.full_indices(arch), [3, 1, 0, 3, 3, 1])
    with pytest.raises(ValueError, match="this space's ops are none, skip_connect, nor_conv_3x3"):
        SUB.from_string("|avg_pool_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|")


def test_op_subset_canonical_classes_are_the_full_space_classes():
    """A subspace cell's class is its full-space class restricted to the subspace; the
    representative is the smallest subspace member; costs equal the full space's."""
    full_key = {}
    for arch in NO_POOL.enumerate():
        full = tuple(int(a) for a in SPACE.canonical(NO_POOL.full_indices(arch)))
        rep = tuple(int(a) for a in NO_POOL.canonical(arch))
        assert full_key.setdefault(rep, full) == full  # one full class per subspace class
        assert rep <= tuple(int(a) for a in arch)
    assert len(full_key) == 871 and len(set(full_key.values())) == 871
    for arch in NO_POOL.enumerate()[::97]:
        mapped = NO_POOL.full_indices(arch)
        assert NO_POOL.num_params(arch) == SPACE.num_params(mapped)
        assert NO_POOL.flops(arch) == SPACE.flops(mapped)
