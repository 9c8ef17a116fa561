"""GradientSearch: exact second-order hypergradient vs finite differences, a first-order step
against a hand-written update, the Gumbel straight-through sample, collapse diagnostics."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nas_jax import ops
from nas_jax.data.datasets import quadrant_images
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.strategies import collapse
from nas_jax.strategies.gradient import GradientSearch, gumbel_straight_through
from nas_jax.train.steps import cross_entropy

SPACE = NB201Space(channels=2, cells_per_stage=1, input_shape=(8, 8, 1), num_classes=4)
TRAIN = quadrant_images(jax.random.key(0), 6, 4)
VALID = quadrant_images(jax.random.key(1), 6, 4)
HIDDEN = 4
# Numerics, not speed, are tested: skipping XLA's backend optimisations cuts compile time.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


class ToySearch(GradientSearch):
    """The search's update rules on a tiny dense supernet (per edge 5 ops: zero, identity,
    two tanh layers, a halving; edges summed), so the update and hypergradient checks
    compile in seconds; the real supernets run in tests/test_gradient_search.py and the
    opt-in check below."""

    def apply(self, params, stats, weights, x, train=True, graphdef=None):
        del train, graphdef  # one network for every pass
        h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["stem"])  # [B, H]
        a = jnp.tanh(jnp.einsum("bh,ehg->ebg", h, params["a"]))
        b = jnp.tanh(jnp.einsum("bh,ehg->ebg", h, params["b"]) + 0.1)
        same = jnp.broadcast_to(h, a.shape)
        outs = jnp.stack([0.0 * same, same, a, b, 0.5 * same])  # [op, edge, B, H]
        mixed = jnp.tanh(jnp.einsum("ek,kebh->bh", weights, outs))
        return mixed @ params["head"], stats


def toy_network(key):
    k = jax.random.split(key, 4)
    params = {"stem": 0.3 * jax.random.normal(k[0], (64, HIDDEN)),
              "a": jax.random.normal(k[1], (6, HIDDEN, HIDDEN)),
              "b": jax.random.normal(k[2], (6, HIDDEN, HIDDEN)),
              "head": jax.random.normal(k[3], (HIDDEN, 4))}
    return params, {}


def toy_search(**kwargs):
    return ToySearch(SPACE, **{"total_steps": 10, "learning_rate": 0.1,
                               "arch_learning_rate": 0.05, **kwargs})


@pytest.fixture(scope="module")
def two_steps():
    """A first-order toy search, its initial state and the states after one and two steps."""
    search = toy_search(grad_clip=1.0)

    @jit
    def run(key):
        state0 = search.init(key, toy_network(jax.random.key(3)))
        state1, metrics = search.step(state0, TRAIN, VALID)
        return (state0, state1, search.step(state1, TRAIN, VALID)[0]), metrics

    return search, *run(jax.random.key(2))


def test_first_order_step_equals_hand_written_update(two_steps):
    search, (state, new_state, _), metrics = two_steps
    params, alpha, norm = jit(by_hand, static_argnums=0)(search, state.params, state.alpha)
    assert float(norm) > search.grad_clip  # the clip is exercised
    np.testing.assert_allclose(new_state.alpha, alpha, rtol=1e-5, atol=1e-7)
    assert not np.allclose(new_state.alpha, state.alpha)
    for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert int(new_state.step) == 1
    assert float(metrics["learning_rate"]) == pytest.approx(search.learning_rate)
    valid_loss = jit(toy_loss, static_argnums=0)(search, state.params,
                                                      jax.nn.softmax(state.alpha, -1), VALID)
    assert float(metrics["arch_loss"]) == pytest.approx(float(valid_loss), rel=1e-5)


def toy_loss(search, params, weights, batch):
    return cross_entropy(search.apply(params, {}, weights, batch[0])[0], batch[1])


def by_hand(search, params, alpha):
    """One DARTS first-order step written out: Adam on alpha, then clipped SGD on w."""
    # Architecture: torch Adam (L2 in the gradient) after one step from zero moments.
    loss = functools.partial(toy_loss, search)
    g = jax.grad(lambda a: loss(params, jax.nn.softmax(a, -1), VALID))(alpha)
    g = g + search.arch_weight_decay * alpha
    m, v = (1 - search.arch_beta1) * g, (1 - search.arch_beta2) * g * g
    m_hat, v_hat = m / (1 - search.arch_beta1), v / (1 - search.arch_beta2)
    alpha = alpha - search.arch_learning_rate * m_hat / (jnp.sqrt(v_hat) + 1e-8)
    # Weights: clip the global norm, add L2; the momentum buffer is the gradient; lr at 0.
    gw = jax.grad(loss)(params, jax.nn.softmax(alpha, -1), TRAIN)
    norm = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(gw)))
    scale = jnp.minimum(1.0, search.grad_clip / norm)
    params = jax.tree.map(
        lambda w, g: w - search.learning_rate * (scale * g + search.weight_decay * w),
        params, gw)
    return params, alpha, norm


def test_unrolled_step_is_the_next_real_weight_step():
    """Without clipping, w'(alpha) with the state's momentum buffer and learning rate is the
    weight step the search then takes (with the updated alpha), heavy-ball and Nesterov."""
    searches = [toy_search(grad_clip=0.0, nesterov=n) for n in (False, True)]

    @jit
    def run(key):
        out = []
        for search in searches:
            state0 = search.init(key, toy_network(jax.random.key(3)))
            state1, _ = search.step(state0, TRAIN, VALID)
            state2, _ = search.step(state1, TRAIN, VALID)
            out.append((search.unrolled_weights(state1.params, {}, state2.alpha, state1.w_opt,
                                                state1.step, TRAIN), state2.params))
        return out

    for unrolled, real in run(jax.random.key(2)):
        for got, want in zip(jax.tree.leaves(unrolled), jax.tree.leaves(real)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def check_hypergradient(search1, search2, state, dtype_tree):
    """Autodiff d/d alpha of L_valid(w'(alpha), alpha) vs central differences (float64);
    the first-order gradient must be visibly off (the second-order term matters)."""
    with jax.enable_x64(True):
        params, stats, alpha, w_opt, train, valid = jax.tree.map(
            lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
            dtype_tree(state))
        alpha = alpha + 0.3 * jax.random.normal(jax.random.key(5), alpha.shape, jnp.float64)
        step = jnp.asarray(3)

        def objective(search, a):
            return search.arch_loss(a, params, stats, None, step, w_opt, train, valid)[0]

        grads = jit(lambda a: (jax.grad(lambda b: objective(search2, b))(a),
                                   jax.grad(lambda b: objective(search1, b))(a)))
        value = jit(lambda a: objective(search2, a))
        g2, g1 = grads(alpha)
        eps = 1e-5
        for k in range(2):
            d = jax.random.normal(jax.random.key(10 + k), alpha.shape, jnp.float64)
            fd = float((value(alpha + eps * d) - value(alpha - eps * d)) / (2 * eps))
            exact, first = float(jnp.vdot(g2, d)), float(jnp.vdot(g1, d))
            assert exact == pytest.approx(fd, rel=1e-6, abs=1e-9)
            assert abs(first - fd) > 1e-3 * max(abs(fd), 1e-3)


def test_exact_second_order_hypergradient_matches_finite_differences(two_steps):
    search1, (_, state, _), _ = two_steps  # after one step: a non-zero momentum buffer
    check_hypergradient(search1, toy_search(order=2), state,
                        lambda s: (s.params, s.stats, s.alpha, s.w_opt, TRAIN, VALID))


@pytest.mark.skipif(not os.environ.get("NAS_JAX_SLOW_TESTS"),
                    reason="compiles the NB201 supernet's second-order step (~1 min on CPU); "
                    "set NAS_JAX_SLOW_TESTS=1 (the toy cell covers the same update rule)")
def test_second_order_on_nb201_supernet_matches_finite_differences():
    with jax.threefry_partitionable(False):
        search1 = GradientSearch(SPACE, total_steps=10, learning_rate=0.1)
        state, _ = jax.jit(search1.step)(jax.jit(search1.init)(jax.random.key(2)), TRAIN,
                                         VALID)
        check_hypergradient(search1, GradientSearch(SPACE, order=2, total_steps=10,
                                                    learning_rate=0.1), state,
                            lambda s: (s.params, s.stats, s.alpha, s.w_opt, TRAIN, VALID))


def test_weight_step_network_sums_kernel_gradients_over_batch_chunks_on_cpu():
    """NB201's mixture supernet: the weight step's convolutions are ``chunked`` on CPU (only
    that pass computes kernel gradients), unless the options name an implementation or a
    switch; the architecture pass keeps XLA's (forward mode passes no custom VJP)."""
    search = GradientSearch(SPACE)
    state = jit(search.init)(jax.random.key(0))

    def conv_impls(graphdef):
        model = nnx.merge(graphdef, state.params, state.stats)
        return {m.impl for _, m in nnx.iter_modules(model) if isinstance(m, ops.Conv)}

    chunked = jax.default_backend() == "cpu"
    assert conv_impls(search.graphdef) == {"xla"}
    assert conv_impls(search.weight_graphdef) == ({"chunked"} if chunked else {"xla"})
    given = GradientSearch(SPACE, network_options=(("conv_impl", "taps"),))
    assert given.weight_options == given.options == {"conv_impl": "taps"}
    switch = GradientSearch(SPACE, method="gdas", network_options=(("select", "switch"),))
    assert switch.weight_options == switch.options
    assert switch.weight_graphdef is switch.graphdef


def test_gumbel_straight_through_is_one_hot_forward_with_soft_gradients():
    alpha = jnp.array([[0.1, -0.3, 0.2, 0.0, 0.5], [1.0, 0.0, -1.0, 0.3, 0.2]])
    key, tau = jax.random.key(7), 0.7
    c = jnp.arange(10.0).reshape(2, 5)

    def soft(a):
        g = jax.random.gumbel(key, a.shape, a.dtype)
        return jax.nn.softmax((jax.nn.log_softmax(a, -1) + g) / tau, -1)

    @jit
    def run(a):
        grad_st = jax.grad(lambda b: jnp.sum(gumbel_straight_through(key, b, tau) * c))(a)
        grad_soft = jax.grad(lambda b: jnp.sum(soft(b) * c))(a)
        return gumbel_straight_through(key, a, tau), soft(a), grad_st, grad_soft

    sample, probs, grad_st, grad_soft = map(np.asarray, run(alpha))
    np.testing.assert_array_equal(np.sort(sample, -1)[:, :-1], 0.0)
    np.testing.assert_allclose(sample.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.argmax(sample, -1), np.argmax(probs, -1))
    np.testing.assert_allclose(grad_st, grad_soft, rtol=1e-5, atol=1e-7)
    assert np.all(grad_st != 0)


def test_gdas_step_uses_a_one_hot_sample_and_updates_every_logit():
    search = toy_search(method="gdas", tau_max=2.0)

    @jit
    def run(key):
        state = search.init(key, toy_network(jax.random.key(3)))
        new_state, metrics = search.step(state, TRAIN, VALID)
        k_arch = jax.random.split(jax.random.fold_in(state.key, state.step))[0]
        sample = gumbel_straight_through(k_arch, state.alpha, 2.0)
        grad = jax.grad(lambda a: search.arch_loss(a, state.params, state.stats, k_arch,
                                                   state.step, state.w_opt, TRAIN, VALID)[0])
        return (metrics, sample, toy_loss(search, state.params, sample, VALID),
                grad(state.alpha), new_state.step)

    metrics, sample, loss, grad, step = run(jax.random.key(4))
    np.testing.assert_array_equal(np.sort(np.asarray(sample), -1)[:, :-1], 0.0)
    assert float(metrics["arch_loss"]) == pytest.approx(float(loss), rel=1e-6)
    assert float(metrics["tau"]) == pytest.approx(2.0)
    assert np.all(np.asarray(grad) != 0)  # soft gradients reach every logit
    assert int(step) == 1


def test_gdas_temperature_anneals_linearly():
    search = GradientSearch(SPACE, method="gdas", total_steps=5)
    taus = [float(search.tau_at(jnp.asarray(s))) for s in range(5)]
    np.testing.assert_allclose(taus, np.linspace(10.0, 0.1, 5), rtol=1e-5)
    with pytest.raises(ValueError, match="order=2"):
        GradientSearch(SPACE, method="gdas", order=2)


def test_dominant_eigenvalue_and_beta_regularization():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    eig = np.array([-5.0, 3.0, 1.0, 0.5, -0.2, 0.1])
    h = jnp.asarray(q @ np.diag(eig) @ q.T, jnp.float32)

    def loss(a):
        return 0.5 * jnp.vdot(a.reshape(-1), h @ a.reshape(-1))

    got = jit(lambda a, k: collapse.dominant_hessian_eigenvalue(loss, a, k, 60))(
        jnp.ones((2, 3)), jax.random.key(0))
    assert float(got) == pytest.approx(-5.0, rel=1e-3)
    alpha = jnp.array([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]])
    g = jax.grad(collapse.beta_regularization)(alpha)
    np.testing.assert_allclose(g, jax.nn.softmax(alpha, -1) / 2, rtol=1e-6)
    assert collapse.robust_darts_should_stop([1.0] * 3 + [2.0] * 3, window=3)
    assert not collapse.robust_darts_should_stop([1.0] * 3 + [1.2] * 3, window=3)
    assert not collapse.robust_darts_should_stop([1.0, 5.0], window=3)


def test_init_op_by_op_equals_the_compiled_init():
    """Runs call the init op by op (faster than compiling its hundreds of outputs): the same
    state as the compiled init up to float rounding, the same on every call."""
    search = GradientSearch(SPACE, method="darts")
    with jax.threefry_partitionable(False):
        got = search.init(jax.random.key(3))
        again = search.init(jax.random.key(3))
        want = jax.jit(search.init)(jax.random.key(3))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b, c in zip(jax.tree.leaves(got), jax.tree.leaves(again), jax.tree.leaves(want),
                       strict=True):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b, c = (jax.random.key_data(k) for k in (a, b, c))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        if jnp.issubdtype(a.dtype, jnp.floating):
            np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-6, atol=1e-6)
        else:  # keys and the step counter: exact
            np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    assert float(jnp.abs(got.alpha).max()) > 0 and int(got.step) == 0
