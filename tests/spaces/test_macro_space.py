"""MacroCNNSpace and MLPSpace: strings, canonical forms, jitted operators, hand-computed costs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.spaces.macro import ACTIVATIONS, MacroCNNSpace, MLPSpace

KEYS = jax.random.split(jax.random.key(0), 1000)
CNN = MacroCNNSpace()
CNN1D = MacroCNNSpace(num_layers=5, ndim=1, input_shape=(40, 1))
MLP = MLPSpace()
# Tiny configs for hand arithmetic.
TINY_CNN = MacroCNNSpace(num_layers=2, filters=(3, 4), kernel_sizes=(3, 5), strides=(1, 2),
                         activations=("relu", "tanh"), ndim=1, input_shape=(10, 2),
                         num_classes=5)
TINY_MLP = MLPSpace(max_layers=3, units=(4, 8), activations=("relu", "tanh"),
                    input_shape=(2, 3), num_classes=2)


@functools.partial(jax.jit, static_argnums=0)
def operators(space, keys):
    """Everything the shared-operator test checks, in one compiled call."""
    archs = jax.vmap(space.sample)(keys)
    k1, k2 = jax.vmap(jax.random.split, out_axes=1)(keys)
    mutants = jax.vmap(space.mutate)(k1, archs)
    children = jax.vmap(space.crossover)(k2, archs, mutants[::-1])
    bits = jax.vmap(space.to_bits)(archs)
    noise = jax.random.bernoulli(keys[0], 0.5, (100, space.num_bits)).astype(jnp.int32)
    decoded_noise = jax.vmap(space.from_bits)(noise)
    valid = jax.vmap(space.is_valid)
    return dict(archs=archs, mutants=mutants, children_valid=valid(children),
                mutants_valid=valid(mutants), decoded=jax.vmap(space.from_bits)(bits),
                noise_valid=valid(decoded_noise), one_hot=space.one_hot(archs[0]))


# ------------------------------------------------------------------ MacroCNN
def test_cnn_layout():
    assert CNN.num_choices == (4, 3, 2, 4, 2) * 4 and CNN.size == 192**4
    assert CNN1D.num_decisions == 25
    assert dataclasses.replace(CNN, num_layers=2).num_choices == (4, 3, 2, 4, 2) * 2
    assert hash(MacroCNNSpace()) == hash(CNN) and MacroCNNSpace() == CNN
    assert all(a in ACTIVATIONS for a in CNN.activations)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_layers=0), "num_layers"),
        (dict(filters=()), "filters must be a non-empty tuple"),
        (dict(filters=(8, 8)), "filters has duplicates"),
        (dict(kernel_sizes=(0, 3)), "kernel_sizes must hold integers"),
        (dict(activations=("relu", "mish")), "unknown activation"),
        (dict(ndim=3, input_shape=(4, 4, 4, 1)), "ndim must be 1 or 2"),
        (dict(ndim=1), "input_shape"),
    ],
)
def test_cnn_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MacroCNNSpace(**kwargs)


def test_cnn_strings():
    text = ("conv(32,k5,s2,gelu,skip)|conv(8,k3,s1,relu)|conv(64,k7,s1,swish,skip)|"
            "conv(16,k3,s2,tanh)")
    arch = CNN.from_string(text)
    np.testing.assert_array_equal(
        arch, [2, 1, 1, 1, 1, 0, 0, 0, 0, 0, 3, 2, 0, 3, 1, 1, 0, 1, 2, 0])
    assert CNN.to_string(arch) == text
    assert CNN.layers(arch)[0] == (32, 5, 2, "gelu", True)
    for space in (CNN, CNN1D):
        for arch in np.asarray(jax.jit(jax.vmap(space.sample))(KEYS[:300])):
            np.testing.assert_array_equal(space.from_string(space.to_string(arch)), arch)
            np.testing.assert_array_equal(space.canonical(arch), arch)


@pytest.mark.parametrize(
    "text,match",
    [
        ("conv(8,k3,s1,relu)", "4 '\\|'-separated layers"),
        ("conv(8,k3,s1,relu)|" * 3 + "conv(8,k3,s1)", "layer 3: bad MacroCNN layer"),
        ("conv(12,k3,s1,relu)|" + "conv(8,k3,s1,relu)|" * 2 + "conv(8,k3,s1,relu)",
         "layer 0: filters 12 is not a choice; allowed: 8, 16, 32, 64"),
        ("conv(8,k4,s1,relu)|" * 3 + "conv(8,k3,s1,relu)", "layer 0: kernel size 4"),
        ("conv(8,k3,s3,relu)|" * 3 + "conv(8,k3,s1,relu)", "layer 0: stride 3"),
        ("conv(8,k3,s1,relu)|conv(8,k3,s1,elu)|" + "conv(8,k3,s1,relu)|" * 1
         + "conv(8,k3,s1,relu)", "layer 1: activation 'elu'"),
        ("conv(8,k3,s1,relu,noskip)|" * 3 + "conv(8,k3,s1,relu)", "bad MacroCNN layer"),
    ],
)
def test_cnn_bad_strings(text, match):
    with pytest.raises(ValueError, match=match):
        CNN.from_string(text)


def test_cnn_costs_by_hand():
    # Input (10, 2). Layer 0: conv(4,k5,s2,tanh,skip): weights 5*2*4 + bias 4 = 44; channels
    # change, so a projection shortcut 1x1: 2*4 + 4 = 12; output length ceil(10/2) = 5.
    # Layer 1: conv(4,k3,s1,relu,skip): 3*4*4 + 4 = 52; shapes match: identity shortcut.
    # Classifier: 4*5 + 5 = 25.
    arch = TINY_CNN.from_string("conv(4,k5,s2,tanh,skip)|conv(4,k3,s1,relu,skip)")
    assert TINY_CNN.num_params(arch) == 44 + 12 + 52 + 25 == 133
    # Multiply-adds: layer 0 5*5*2*4 = 200, projection 5*2*4 = 40, layer 1 5*3*4*4 = 240,
    # classifier 4*5 = 20.
    assert TINY_CNN.flops(arch) == 2 * (200 + 40 + 240 + 20) == 1000
    # Without skips there are no projections; a stride-1 layer changing channels.
    arch = TINY_CNN.from_string("conv(3,k3,s1,relu)|conv(4,k5,s2,tanh)")
    # 3*2*3 + 3 = 21; 5*3*4 + 4 = 64; 4*5 + 5 = 25.
    assert TINY_CNN.num_params(arch) == 21 + 64 + 25
    # Lengths 10 then 5: 10*3*2*3 = 180; 5*5*3*4 = 300; 20.
    assert TINY_CNN.flops(arch) == 2 * (180 + 300 + 20)


def test_cnn_2d_costs_by_hand():
    space = MacroCNNSpace(num_layers=1, filters=(3,), kernel_sizes=(3,), strides=(1, 2),
                          activations=("relu",), input_shape=(7, 7, 3), num_classes=5)
    strided = space.from_string("conv(3,k3,s2,relu,skip)")
    # conv 3x3 3->3: 9*3*3 + 3 = 84; stride 2 needs a projection 3*3 + 3 = 12; head 3*5 + 5.
    assert space.num_params(strided) == 84 + 12 + 20
    # Output 4x4 = 16 positions: 16*9*3*3 = 1296, projection 16*3*3 = 144, head 15.
    assert space.flops(strided) == 2 * (1296 + 144 + 15)
    same = space.from_string("conv(3,k3,s1,relu,skip)")  # identity shortcut: no parameters
    assert space.num_params(same) == 84 + 20
    assert space.flops(same) == 2 * (49 * 81 + 15)


def test_cnn_enumerate_small():
    space = MacroCNNSpace(num_layers=1, filters=(2, 4), kernel_sizes=(3, 5), strides=(1, 2),
                          activations=("relu", "tanh"), ndim=1, input_shape=(8, 1))
    archs = space.enumerate()
    assert archs.shape == (32, 5) == (space.size, space.num_decisions)
    assert len({space.to_string(a) for a in archs}) == 32


# ---------------------------------------------------------------------- MLP
def test_mlp_layout():
    assert MLP.num_choices == (3, 4, 4, 4, 4, 4, 4) and MLP.num_decisions == 7
    assert dataclasses.replace(MLP, max_layers=1).num_choices == (1, 4, 4)
    with pytest.raises(ValueError, match="units has duplicates"):
        MLPSpace(units=(4, 4))
    with pytest.raises(ValueError, match="max_layers"):
        MLPSpace(max_layers=0)


def test_mlp_strings_and_inactive_genes():
    arch = TINY_MLP.from_string("mlp(8,relu|4,tanh)")
    np.testing.assert_array_equal(arch, [1, 1, 0, 0, 1, 0, 0])
    assert TINY_MLP.to_string(arch) == "mlp(8,relu|4,tanh)"
    junk = np.array([1, 1, 0, 0, 1, 1, 1], np.int32)  # third layer inactive but set
    assert TINY_MLP.to_string(junk) == "mlp(8,relu|4,tanh)"
    np.testing.assert_array_equal(TINY_MLP.canonical(junk), arch)
    assert TINY_MLP.canonical_key(junk) == TINY_MLP.canonical_key(arch)
    np.testing.assert_array_equal(jax.jit(TINY_MLP.mask_inactive)(jnp.asarray(junk)), arch)
    np.testing.assert_array_equal(TINY_MLP.active_layers(jnp.asarray(junk)), [1, 1, 0])
    assert TINY_MLP.num_params(junk) == TINY_MLP.num_params(arch)
    archs = jax.jit(jax.vmap(MLP.sample))(KEYS[:300])
    masked = np.asarray(jax.jit(jax.vmap(MLP.mask_inactive))(archs))
    for a, m in zip(np.asarray(archs), masked):
        np.testing.assert_array_equal(MLP.from_string(MLP.to_string(a)), MLP.canonical(a))
        np.testing.assert_array_equal(m, MLP.canonical(a))


def test_mlp_enumerate_and_canonical_classes():
    space = MLPSpace(max_layers=2, units=(4, 8), activations=("relu", "tanh"))
    archs = space.enumerate()
    assert len(archs) == space.size == 2 * 4 * 4
    # Distinct networks: 4 with one layer + 16 with two.
    assert len({space.canonical_key(a) for a in archs}) == 20
    assert len({space.to_string(a) for a in archs}) == 20


@pytest.mark.parametrize(
    "text,match",
    [
        ("mlp()", "0 layers; allowed 1..3"),
        ("mlp(4,relu|4,relu|4,relu|4,relu)", "4 layers; allowed 1..3"),
        ("mlp(4,relu|16,relu)", "layer 1: units 16 is not a choice"),
        ("mlp(4,relu|4,gelu)", "layer 1: activation 'gelu'"),
        ("mlp(4 relu)", "layer 0: bad MLP layer"),
        ("dense(4,relu)", "must look like mlp"),
    ],
)
def test_mlp_bad_strings(text, match):
    with pytest.raises(ValueError, match=match):
        TINY_MLP.from_string(text)


def test_mlp_costs_by_hand():
    # 6 inputs -> 8 -> 4 -> 2 classes: (6*8 + 8) + (8*4 + 4) + (4*2 + 2) = 56 + 36 + 10.
    arch = TINY_MLP.from_string("mlp(8,relu|4,tanh)")
    assert TINY_MLP.num_params(arch) == 56 + 36 + 10 == 102
    assert TINY_MLP.flops(arch) == 2 * (48 + 32 + 8) == 176
    one = TINY_MLP.from_string("mlp(4,tanh)")  # 6*4 + 4 + 4*2 + 2 = 38
    assert TINY_MLP.num_params(one) == 38 and TINY_MLP.flops(one) == 2 * (24 + 8)


# ---------------------------------------------------------- shared operators
# ndim and the choice values do not change the operators, only the number of choices: one
# CNN and one MLP cover them (each compile costs seconds on CPU).
@pytest.mark.parametrize("space", [CNN1D, MLP], ids=["cnn", "mlp"])
def test_mutate_crossover_and_bits(space):
    out = operators(space, KEYS)
    assert bool(out["mutants_valid"].all()) and bool(out["children_valid"].all())
    assert out["mutants"].dtype == jnp.int32
    archs, mutants = np.asarray(out["archs"]), np.asarray(out["mutants"])
    assert np.all((archs != mutants).sum(axis=1) == 1)
    for a in mutants[:50]:
        space.from_string(space.to_string(a))
    np.testing.assert_array_equal(out["decoded"], archs)  # binary genome round trip
    assert bool(out["noise_valid"].all())  # any bit string decodes to a valid architecture
    assert out["one_hot"].shape == (space.num_decisions, space.max_choices)
