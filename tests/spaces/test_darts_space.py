"""DartsSpace: genotype strings, canonical forms, jitted operators and the NetworkCIFAR costs."""

import functools

import jax
import numpy as np
import pytest

from nas_jax.spaces.darts import (
    DARTS_V1,
    DARTS_V2,
    NUM_CHOICES,
    PRIMITIVES,
    DartsSpace,
    Genotype,
    decision_index,
)

SPACE = DartsSpace()
EVAL = DartsSpace.for_evaluation()  # C=36, 20 cells, CIFAR-10
KEYS = jax.random.split(jax.random.key(0), 1000)

# A tiny network touching every cost branch: C=2, 3 cells (cells 1 and 2 reduce, so cell 2
# also has reduction_prev), 8x8x1 input, 3 classes.
TINY = DartsSpace(channels=2, num_cells=3, input_shape=(8, 8, 1), num_classes=3)
TINY_GENOTYPE = Genotype(
    normal=[("sep_conv_3x3", 0), ("dil_conv_5x5", 1), ("skip_connect", 0), ("avg_pool_3x3", 2),
            ("max_pool_3x3", 3), ("none", 1), ("sep_conv_5x5", 4), ("dil_conv_3x3", 0)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("skip_connect", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("dil_conv_3x3", 1),
            ("max_pool_3x3", 0), ("none", 3), ("avg_pool_3x3", 4), ("skip_connect", 1)],
    reduce_concat=[2, 3, 4, 5],
)


@functools.partial(jax.jit, static_argnums=0)
def mutate_and_cross(space, keys):
    archs = jax.vmap(space.sample)(keys)
    k1, k2 = jax.vmap(jax.random.split, out_axes=1)(keys)
    mutants = jax.vmap(space.mutate)(k1, archs)
    children = jax.vmap(space.crossover)(k2, archs, mutants[::-1])
    valid = jax.vmap(space.is_valid)
    return archs, mutants, children, valid(mutants) & valid(children)


def test_sizes_and_layout():
    assert SPACE.num_decisions == 32 and SPACE.max_choices == 8
    assert SPACE.num_choices == NUM_CHOICES
    assert NUM_CHOICES[:16] == (2, 8, 2, 8, 3, 8, 3, 8, 4, 8, 4, 8, 5, 8, 5, 8)
    assert NUM_CHOICES[16:] == NUM_CHOICES[:16]
    assert SPACE.size == (2 * 3 * 4 * 5) ** 4 * 8**16
    assert decision_index(1, 3, 1, 1) == 31 and decision_index(0, 1, 0, 0) == 4
    assert SPACE.op_names == PRIMITIVES and len(PRIMITIVES) == 8
    assert PRIMITIVES[0] == "none" and PRIMITIVES[3] == "skip_connect"
    assert EVAL.reduction_cells == (6, 13) and SPACE.reduction_cells == (2, 5)
    with pytest.raises(ValueError, match="more than limit"):
        SPACE.enumerate()


def test_constructor_rejects_bad_fields():
    with pytest.raises(ValueError, match="num_choices"):
        DartsSpace(num_choices=(8,) * 32)
    with pytest.raises(ValueError, match="channels"):
        DartsSpace(channels=0)
    with pytest.raises(ValueError, match="input_shape"):
        DartsSpace(input_shape=(32, 3))


def test_space_is_a_static_argument():
    assert hash(DartsSpace(channels=36)) == hash(DartsSpace(channels=36))
    f = jax.jit(lambda s, k: s.sample(k), static_argnums=0)
    assert f(SPACE, KEYS[0]).shape == (32,) and f(EVAL, KEYS[0]).dtype == np.int32


@pytest.mark.parametrize("text", [DARTS_V1, DARTS_V2])
def test_published_genotypes_round_trip(text):
    arch = SPACE.from_string(text)
    assert arch.dtype == np.int32
    assert SPACE.to_string(arch) == text


def test_darts_v2_integers():
    arch = SPACE.from_string(DARTS_V2)
    sep3, skip, dil3, maxp = (PRIMITIVES.index(n) for n in
                              ("sep_conv_3x3", "skip_connect", "dil_conv_3x3", "max_pool_3x3"))
    # Normal node 3 = ('skip_connect', 0), ('dil_conv_3x3', 2).
    assert arch[decision_index(0, 3, 0, 0)] == 0 and arch[decision_index(0, 3, 0, 1)] == skip
    assert arch[decision_index(0, 3, 1, 0)] == 2 and arch[decision_index(0, 3, 1, 1)] == dil3
    assert arch[decision_index(0, 0, 1, 1)] == sep3
    assert arch[decision_index(1, 3, 1, 1)] == maxp and arch[decision_index(1, 3, 1, 0)] == 1


def test_accepted_variants_parse_alike():
    expected = SPACE.from_string(DARTS_V2)
    g = SPACE.to_genotype(expected)
    variants = [
        DARTS_V2.replace("[2, 3, 4, 5]", "range(2, 6)"),  # as printed after search
        "DARTS_V2 = " + DARTS_V2,  # a line of genotypes.py
        DARTS_V2.replace("), (", "),\n    ("),  # multi-line layout
        f"Genotype({g.normal!r}, range(2, 6), {g.reduce!r}, [2, 3, 4, 5])",  # positional
    ]
    for text in variants:
        np.testing.assert_array_equal(SPACE.from_string(text), expected)
    np.testing.assert_array_equal(SPACE.from_genotype(g), expected)


def test_none_is_printed_and_parsed():
    arch = np.zeros(32, np.int32)  # every op 'none', every input 0
    text = SPACE.to_string(arch)
    assert text.count("('none', 0)") == 16
    np.testing.assert_array_equal(SPACE.from_string(text), arch)


def test_random_round_trip_and_canonical():
    archs = np.asarray(jax.jit(jax.vmap(SPACE.sample))(KEYS[:300]))
    for arch in archs:
        np.testing.assert_array_equal(SPACE.from_string(SPACE.to_string(arch)), arch)
        canon = SPACE.canonical(arch)
        np.testing.assert_array_equal(SPACE.canonical(canon), canon)
        assert EVAL.num_params(canon) == EVAL.num_params(arch)
        assert EVAL.flops(canon) == EVAL.flops(arch)


def test_canonical_ignores_input_order_within_a_node():
    g = SPACE.to_genotype(SPACE.from_string(DARTS_V2))
    normal = list(g.normal)
    normal[4], normal[5] = normal[5], normal[4]  # node 2: swap its two inputs
    reduce = list(g.reduce)
    reduce[0], reduce[1] = reduce[1], reduce[0]
    swapped = SPACE.from_genotype(g._replace(normal=normal, reduce=reduce))
    original = SPACE.from_string(DARTS_V2)
    assert not np.array_equal(swapped, original)
    np.testing.assert_array_equal(SPACE.canonical(swapped), SPACE.canonical(original))
    assert SPACE.canonical_key(swapped) == SPACE.canonical_key(original)
    # Different cells stay different.
    assert SPACE.canonical_key(SPACE.from_string(DARTS_V1)) != SPACE.canonical_key(original)


def test_canonical_ignores_the_input_of_none():
    a = SPACE.from_genotype(TINY_GENOTYPE)
    g = TINY_GENOTYPE._replace(normal=[*TINY_GENOTYPE.normal[:5], ("none", 2),
                                       *TINY_GENOTYPE.normal[6:]])
    b = SPACE.from_genotype(g)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(SPACE.canonical(a), SPACE.canonical(b))


def test_mutate_and_crossover_stay_valid_under_jit():
    archs, mutants, children, valid = mutate_and_cross(SPACE, KEYS)
    assert bool(valid.all())
    archs, mutants = np.asarray(archs), np.asarray(mutants)
    assert np.all((archs != mutants).sum(axis=1) == 1)  # exactly one decision changed
    for arch in np.concatenate([mutants[:100], np.asarray(children)[:100]]):
        SPACE.validate(arch)
        SPACE.to_string(arch)
    # No decision leaves its own range.
    for d in range(32):
        assert set(np.unique(mutants[:, d])) <= set(range(NUM_CHOICES[d]))


@jax.jit
def bits_round_trip(keys):
    archs = jax.vmap(SPACE.sample)(keys)
    bits = jax.vmap(SPACE.to_bits)(archs)
    noise = jax.random.bernoulli(keys[0], 0.5, (200, SPACE.num_bits)).astype(np.int32)
    noise_valid = jax.vmap(SPACE.is_valid)(jax.vmap(SPACE.from_bits)(noise))
    return archs, bits, jax.vmap(SPACE.from_bits)(bits), noise_valid


def test_binary_genome_round_trip():
    archs, bits, decoded, noise_valid = bits_round_trip(KEYS[:200])
    # Input indices take 1, 2, 2, 3 bits (nodes 0..3, two inputs each); ops 3 bits.
    assert bits.shape == (200, SPACE.num_bits)
    assert SPACE.num_bits == 2 * (2 * (1 + 2 + 2 + 3) + 8 * 3)
    np.testing.assert_array_equal(decoded, archs)
    assert bool(noise_valid.all())


def test_darts_v2_parameter_count():
    n = EVAL.num_params(EVAL.from_string(DARTS_V2))
    # count_parameters of the reference NetworkCIFAR(36, 10, 20, auxiliary=False, DARTS_V2).
    assert n == 3_349_342
    assert round(n / 1e6, 1) == 3.3  # the paper's "3.3M"
    assert EVAL.num_params(EVAL.from_string(DARTS_V1)) == 3_169_414
    # Multiply-adds per CIFAR image: the commonly quoted ~528M.
    assert EVAL.flops(EVAL.from_string(DARTS_V2)) == 2 * 528_359_040


def test_tiny_costs_by_hand():
    arch = TINY.from_genotype(TINY_GENOTYPE)
    # stem: conv3x3 1->6 (9*1*6=54) + BN (12) = 66
    # cell 0 (normal, C=2, inputs 6 and 6 channels): preprocess 2 x (6*2 + 4) = 32;
    #   sep3 2*(2*9 + 2*2 + 4) = 52, dil5 2*25 + 4 + 4 = 58, sep5 2*(2*25 + 4 + 4) = 116,
    #   dil3 2*9 + 4 + 4 = 26; skip, pools, none 0.            cell 0 = 32 + 252 = 284
    # cell 1 (reduce, C=4, inputs 6 and 8): pre0 6*4 + 8 = 32, pre1 8*4 + 8 = 40;
    #   strided skip (x2) = FactorizedReduce(4, 4) = 2*4*2 + 8 = 24 each,
    #   strided sep3 2*(4*9 + 16 + 8) = 120, strided dil3 36 + 16 + 8 = 60,
    #   skip from node 2 (stride 1) 0.                    cell 1 = 72 + 228 = 300
    # cell 2 (reduce after reduce, C=8, inputs 8 and 16): pre0 FactorizedReduce(8, 8)
    #   = 2*8*4 + 16 = 80, pre1 16*8 + 16 = 144; ops at C=8: FR 80 (x2),
    #   sep3 2*(72 + 64 + 16) = 304, dil3 72 + 64 + 16 = 152. cell 2 = 224 + 616 = 840
    # classifier: 32*3 + 3 = 99
    assert TINY.num_params(arch) == 66 + 284 + 300 + 840 + 99 == 1589
    # Multiply-adds: stem 8*8*9*1*6 = 3456.
    # cell 0 at 8x8: preprocess 2 x 64*6*2 = 1536; ops per pixel sep3 2*(18+4) = 44,
    #   dil5 50+4 = 54, sep5 2*(50+4) = 108, dil3 18+4 = 22 -> 228*64 = 14592.
    # cell 1: preprocess at 8x8: 64*6*4 + 64*8*4 = 3584; ops at 4x4 per pixel:
    #   FR 2*2*4 = 16 (x2), sep3 2*(36+16) = 104, dil3 36+16 = 52 -> 188*16 = 3008.
    # cell 2: preprocess at 4x4: FR 16*8*4*2 = 1024, 16*16*8 = 2048; ops at 2x2:
    #   FR 4*2*8 = 64 (x2), sep3 2*(72+64) = 272, dil3 136 -> 536*4 = 2144.
    # classifier 32*3 = 96.
    macs = 3456 + (1536 + 14592) + (3584 + 3008) + (1024 + 2048 + 2144) + 96
    assert macs == 31488
    assert TINY.flops(arch) == 2 * macs


def test_costs_scale_with_the_skeleton():
    arch = SPACE.from_string(DARTS_V2)
    assert SPACE.num_params(arch) < EVAL.num_params(arch)
    bigger = DartsSpace(input_shape=(64, 64, 3))
    assert bigger.num_params(arch) == SPACE.num_params(arch)
    assert bigger.flops(arch) == 4 * SPACE.flops(arch) - 3 * 2 * 10 * 4 * 64


@pytest.mark.parametrize(
    "text,match",
    [
        (DARTS_V2.replace("('dil_conv_3x3', 2)]", "]", 1), "normal cell needs 8"),
        (DARTS_V2.replace("'dil_conv_3x3'", "'sep_conv_7x7'"), "unknown op 'sep_conv_7x7'"),
        (DARTS_V2.replace("('max_pool_3x3', 1)]", "('max_pool_3x3', 5)]"),
         "reduce cell node 3 input 1: input index 5 out of range"),
        (DARTS_V2.replace("[('sep_conv_3x3', 0)", "[('sep_conv_3x3', 2)"),
         "normal cell node 0 input 0: input index 2"),
        (DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[3, 4, 5]"),
         "normal_concat must be"),
        (DARTS_V2.replace("reduce_concat=[2, 3, 4, 5]", "reduce_concat=range(3, 6)"),
         "reduce_concat must be"),
        (DARTS_V2.replace("('sep_conv_3x3', 0)", "('sep_conv_3x3', '0')", 1),
         r"expected \('op_name', input_index\)"),
        (DARTS_V2.replace(", reduce_concat=[2, 3, 4, 5]", ""), "missing field.*reduce_concat"),
        (DARTS_V2.replace("reduce_concat", "reduction_concat"), "unknown Genotype field"),
        (DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=CONCAT"),
         "'normal_concat' must be a literal"),
        (DARTS_V2.replace("[2, 3, 4, 5])", "range(x))"),
         "range\\(\\) needs integer literals"),
        ("Genotype(normal=[", "not valid Python syntax"),
        ("__import__('os').getcwd()", "must be a call Genotype"),
        ("  ", "string is empty"),
    ],
)
def test_bad_strings_raise(text, match):
    with pytest.raises(ValueError, match=match):
        SPACE.from_string(text)
