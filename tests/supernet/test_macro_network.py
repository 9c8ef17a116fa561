"""MacroCNNNetwork / MLPNetwork: the supernet with one-hot weights computes the standalone
network (1-D and 2-D, every kernel size, strides 1-3, identity and projection skips, inactive
MLP layers), parameter counts match the space, vmap, gradients, training, init rescaling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nas_jax import ops
from nas_jax.evaluators.population import init_candidate, network_graphdef
from nas_jax.spaces.macro import MacroCNNSpace, MLPSpace
from nas_jax.supernet.macro import (
    MacroCNNNetwork,
    MLPNetwork,
    extract_standalone,
    match_standalone_init,
)
from nas_jax.train.steps import Recipe, cross_entropy, make_apply, train_and_score

CNN1D = MacroCNNSpace(num_layers=3, filters=(1, 3), kernel_sizes=(2, 3, 5), strides=(1, 2, 3),
                      activations=("relu", "tanh", "gelu"), ndim=1, input_shape=(40, 1),
                      num_classes=3)
CNN2D = MacroCNNSpace(num_layers=2, filters=(3, 1), kernel_sizes=(1, 3, 5), strides=(1, 2),
                      activations=("relu", "swish", "sigmoid"), ndim=2, input_shape=(8, 8, 1),
                      num_classes=3)
MLP = MLPSpace(max_layers=3, units=(3, 5, 2), activations=("relu", "tanh", "elu"),
               input_shape=(8, 8, 1), num_classes=3)
SPACES = {"cnn1d": (CNN1D, MacroCNNNetwork), "cnn2d": (CNN2D, MacroCNNNetwork),
          "mlp": (MLP, MLPNetwork)}
CASES = {
    # identity skip (1 -> 1, s1); projections for a stride and for a channel change.
    "cnn1d": ["conv(1,k3,s1,relu,skip)|conv(3,k5,s2,tanh,skip)|conv(3,k2,s3,gelu,skip)",
              "conv(3,k2,s2,gelu)|conv(3,k3,s1,relu,skip)|conv(1,k5,s1,tanh,skip)",
              "conv(3,k5,s3,tanh,skip)|conv(1,k2,s3,relu)|conv(1,k3,s2,gelu,skip)"],  # 40-14-5-2
    "cnn2d": ["conv(1,k5,s2,swish,skip)|conv(1,k1,s1,sigmoid,skip)",
              "conv(3,k3,s1,relu,skip)|conv(3,k5,s2,relu,skip)",
              "conv(3,k1,s2,sigmoid)|conv(1,k3,s2,swish)"],
    "mlp": ["mlp(5,relu)", "mlp(2,tanh|5,elu|3,relu)", "mlp(3,elu|3,tanh)"],
}
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # numerics, not speed, are tested here


def case_archs(name):
    space = SPACES[name][0]
    archs = [space.from_string(s) for s in CASES[name]]
    archs.append(np.asarray(space.sample(jax.random.key(7))))
    if name == "mlp":  # junk genes in the inactive layers must not matter
        archs.append(np.array([0, 1, 2, 2, 1, 0, 2], np.int32))
    return archs


def inputs(space, seed=1):
    return jax.random.normal(jax.random.key(seed), (4,) + space.input_shape)


def random_params(space, network, arch=None, seed=0):
    """A network's graphdef and parameters with random weights and biases (numpy-filled:
    cheaper than compiling the initialisers)."""
    abstract = nnx.eval_shape(lambda: network(space, arch, rngs=ops.ParamKeys(0)))
    graphdef, params = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    return graphdef, jax.tree.map(
        lambda a: jnp.asarray(0.6 * rng.normal(size=a.shape).astype(np.float32)), params)


@pytest.fixture(scope="module", autouse=True)
def non_partitionable_threefry():
    with jax.threefry_partitionable(False):
        yield


@functools.cache
def supernet(name):
    space, network = SPACES[name]
    graphdef, params = random_params(space, network)

    def forward(params, weights, x):
        return nnx.merge(graphdef, params, copy=True)(x, weights)

    return params, forward, jax.jit(forward, compiler_options=FAST_COMPILE)


def standalone(name, arch, super_params):
    space, network = SPACES[name]
    graphdef, params = random_params(space, network, arch, seed=1)
    params = extract_standalone(super_params, params)
    return graphdef, params


@pytest.mark.parametrize("name", list(SPACES))
def test_one_hot_supernet_equals_standalone(name):
    space = SPACES[name][0]
    params, _, forward = supernet(name)
    x = inputs(space)
    for arch in case_archs(name):
        graphdef, sa_params = standalone(name, arch, params)
        ref = jax.jit(lambda p, x, g=graphdef: nnx.merge(g, p)(x),
                      compiler_options=FAST_COMPILE)(sa_params, x)
        out = forward(params, space.one_hot(jnp.asarray(arch)), x)
        assert out.shape == (4, 3)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5,
                                   err_msg=space.to_string(arch))


def test_cases_cover_every_choice():
    for name in ("cnn1d", "cnn2d"):
        space = SPACES[name][0]
        used = np.stack(case_archs(name)[:3]).reshape(-1, 5)
        for gene, choices in enumerate(space.num_choices[:5]):
            assert set(used[:, gene]) == set(range(choices)), (name, gene)


@pytest.mark.parametrize("name", list(SPACES))
def test_standalone_has_the_space_parameter_count(name):
    space, network = SPACES[name]
    for i in range(20):
        arch = np.asarray(space.sample(jax.random.key(i)))
        model = nnx.eval_shape(lambda a=arch: network(space, a, rngs=ops.ParamKeys(0)))
        count = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
        assert count == space.num_params(arch), space.to_string(arch)
    # A 1x1-channel stride-1 skip is an identity (no parameters); a strided one projects.
    a = CNN1D.from_string("conv(1,k3,s1,relu,skip)|conv(1,k3,s2,relu,skip)|conv(1,k3,s1,relu)")
    model = nnx.eval_shape(lambda: MacroCNNNetwork(CNN1D, a, rngs=ops.ParamKeys(0)))
    assert model.layers[0].proj is None and model.layers[1].proj is not None


def test_supernet_under_vmap_over_weights():
    for name in ("cnn1d",):
        space = SPACES[name][0]
        params, raw, forward = supernet(name)
        x = inputs(space)
        archs = jnp.asarray(np.stack(case_archs(name)[:3]))
        soft = jax.nn.softmax(jax.random.normal(jax.random.key(2), (space.num_decisions,
                                                                    space.max_choices)))
        weights = jnp.concatenate([jax.vmap(space.one_hot)(archs), soft[None]])
        batched = jax.jit(jax.vmap(raw, in_axes=(None, 0, None)),
                          compiler_options=FAST_COMPILE)(params, weights, x)
        assert batched.shape == (4, 4, 3) and bool(jnp.all(jnp.isfinite(batched)))
        for i in range(4):
            np.testing.assert_allclose(batched[i], forward(params, weights[i], x), rtol=1e-5,
                                       atol=1e-5)


def test_one_hot_gradients_are_the_standalone_gradients_embedded():
    name = "cnn2d"
    space = CNN2D
    params, raw, _ = supernet(name)
    x = inputs(space)
    r = jax.random.normal(jax.random.key(3), (4, 3))
    arch = space.from_string(CASES[name][1])
    graphdef, sa_params = standalone(name, arch, params)
    loss = jax.jit(jax.grad(lambda p, w: jnp.sum(raw(p, w, x) * r)),
                   compiler_options=FAST_COMPILE)
    grads = loss(params, space.one_hot(jnp.asarray(arch)))
    ref = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x) * r)),
                  compiler_options=FAST_COMPILE)(sa_params)
    for got, want in zip(jax.tree.leaves(extract_standalone(grads, ref)), jax.tree.leaves(ref),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Weights outside the chosen shapes get exactly zero gradient: layer 0 is a 3x3 kernel
    # inside the 5x5 one (its border is unused), with all 3 filters.
    k0 = np.asarray(grads["layers"][0]["conv"]["kernel"][...])
    assert np.all(k0[[0, 4]] == 0) and np.all(k0[:, [0, 4]] == 0)
    assert np.all(k0[1:4, 1:4] != 0)
    for leaf in jax.tree.leaves(grads):
        assert bool(jnp.all(jnp.isfinite(leaf)))


@pytest.mark.parametrize("name", ["cnn1d", "mlp"])
def test_soft_weights_gradients_are_finite_and_reach_every_decision(name):
    space = SPACES[name][0]
    params, raw, _ = supernet(name)
    x = inputs(space)
    alphas = jax.random.normal(jax.random.key(4), (space.num_decisions, space.max_choices))
    w = jax.nn.softmax(jnp.where(space.choice_mask(), alphas, -jnp.inf), axis=-1)
    g_params, g_w = jax.jit(jax.grad(lambda p, w: jnp.sum(raw(p, w, x) ** 2), argnums=(0, 1)),
                            compiler_options=FAST_COMPILE)(params, w)
    for leaf in jax.tree.leaves(g_params) + [g_w]:
        assert bool(jnp.all(jnp.isfinite(leaf)))
    # Every decision moves the output (the skip's "off" entry is the only structural zero).
    assert np.all(np.abs(np.asarray(g_w)).max(axis=1) > 0)


def test_supernet_rejects_missing_or_misshaped_weights():
    for name in ("cnn2d", "mlp"):
        space, network = SPACES[name]
        model = nnx.eval_shape(lambda s=space, n=network: n(s, rngs=ops.ParamKeys(0)))
        assert model.is_supernet
        with pytest.raises(ValueError, match=r"supernet needs weights float\["):
            model(inputs(space))
        with pytest.raises(ValueError, match="got \\(2, 3\\)"):
            model(inputs(space), jnp.zeros((2, 3)))
        with pytest.raises(ValueError, match="decision 0"):
            network(space, np.full(space.num_decisions, 9), rngs=ops.ParamKeys(0))


def test_match_standalone_init_gives_the_standalone_init_scale():
    space = MacroCNNSpace(num_layers=2, filters=(16, 64), kernel_sizes=(1, 5), strides=(1,),
                          activations=("relu",), ndim=2, input_shape=(8, 8, 3), num_classes=10)
    arch = space.from_string("conv(16,k1,s1,relu,skip)|conv(64,k1,s1,relu,skip)")
    params, _, _ = jax.jit(functools.partial(init_candidate, space, None),
                           compiler_options=FAST_COMPILE)(jax.random.key(0))
    fitted = match_standalone_init(space, params, space.one_hot(jnp.asarray(arch)))
    _, sa_params = nnx.split(nnx.eval_shape(lambda: MacroCNNNetwork(space, arch,
                                                                    rngs=ops.ParamKeys(0))))
    crop = extract_standalone(fitted, sa_params)
    # Layer 1: 1x1 over 16 channels (He: std sqrt(2/16)), not 5x5 over 64 (sqrt(2/1600)).
    k1 = np.asarray(crop["layers"][1]["conv"]["kernel"][...])
    assert k1.shape == (1, 1, 16, 64)
    np.testing.assert_allclose(k1.std(), np.sqrt(2 / 16), rtol=0.1)
    p1 = np.asarray(crop["layers"][1]["proj"]["kernel"][...])
    np.testing.assert_allclose(p1.std(), np.sqrt(2 / 16), rtol=0.1)
    # Classifier: uniform(+-1/sqrt(64)) over 64 inputs either way (the largest is chosen).
    np.testing.assert_allclose(crop["classifier"]["kernel"][...],
                               params["classifier"]["kernel"][...], rtol=1e-6)
    mlp_arch = MLP.from_string("mlp(2,relu|3,relu)")
    _, mlp_params = random_params(MLP, MLPNetwork)
    fitted = match_standalone_init(MLP, mlp_params, MLP.one_hot(jnp.asarray(mlp_arch)))
    # Layer 1 sees layer 0's 2 units, the classifier layer 1's 3 (5 at most); layer 2 is
    # inactive (its factor is irrelevant), layer 0 sees the fixed input.
    for new, old, factor in ((fitted["layers"][1], mlp_params["layers"][1], np.sqrt(5 / 2)),
                             (fitted["classifier"], mlp_params["classifier"], np.sqrt(5 / 3)),
                             (fitted["layers"][0], mlp_params["layers"][0], 1.0)):
        np.testing.assert_allclose(new["kernel"][...], factor * old["kernel"][...], rtol=1e-6)
        np.testing.assert_array_equal(new["bias"][...], old["bias"][...])


def levels(key, n, space):
    """Class c: a constant level c - 1 plus noise (separable after global pooling)."""
    k_perm, k_noise = jax.random.split(key)
    y = jax.random.permutation(k_perm, jnp.arange(n) % 3)
    noise = 0.5 * jax.random.normal(k_noise, (n,) + space.input_shape)
    return (y - 1.0).reshape((n,) + (1,) * len(space.input_shape)) + noise, y


# The MLP standalone network is left out: its forward pass equals the supernet's (tested
# above) and the standalone path through the trainer is covered by the CNN.
@pytest.mark.parametrize("name,supernet_mode", [("cnn1d", True), ("cnn1d", False),
                                                ("mlp", True)])
def test_training_decreases_the_loss(name, supernet_mode):
    space = SPACES[name][0]
    data = levels(jax.random.key(0), 96, space)
    recipe = Recipe(steps=30, batch_size=32, optimizer="adam", learning_rate=0.02,
                    weight_decay=0.0, grad_clip=0.0, eval_batch_size=96)
    arch = space.from_string(CASES[name][0 if name == "cnn1d" else 1])
    net_arch = None if supernet_mode else tuple(arch)
    w = space.one_hot(jnp.asarray(arch)) if supernet_mode else None
    graphdef = network_graphdef(space, net_arch)

    def run(key, w):
        params, stats, k_data = init_candidate(space, net_arch, key)
        if supernet_mode:
            params = match_standalone_init(space, params, w)
        apply = make_apply(graphdef, w)
        before = cross_entropy(apply(params, stats, data[0], False)[0], data[1])
        return before, train_and_score(apply, params, stats, k_data, data, data, recipe)

    before, out = jax.jit(run, compiler_options=FAST_COMPILE)(jax.random.key(1), w)
    assert bool(out["finite"])
    assert float(out["valid_loss"]) < 0.7 * float(before), (before, out)
