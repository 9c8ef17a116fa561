"""The REINFORCE LSTM controller: a proper distribution, consistent log-probs, gradients,
the policy-gradient step, non-finite fitness, and a toy search inside scan/vmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.spaces.base import SearchSpace
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.strategies.base import scan_search
from nas_jax.strategies.evolution import RandomSearch
from nas_jax.strategies.reinforce import ReinforceController

TINY = SearchSpace(num_choices=(3, 2, 2))
ODD = SearchSpace(num_choices=(5, 3, 2))  # one head of 5 logits, padded choices masked
KEYS = jax.random.split(jax.random.key(0), 4000)
# A larger init scale makes the initial policy far from uniform, so the checks have teeth.
RC = ReinforceController(space=TINY, batch_size=4, hidden_size=8, init_scale=1.0,
                         temperature=1.0, entropy_weight=0.01, learning_rate=0.05)
RC_ODD = ReinforceController(space=ODD, batch_size=4, hidden_size=8, init_scale=1.0,
                             temperature=1.0, context_size=3)
EVERY = jnp.asarray(TINY.enumerate())


@functools.partial(jax.jit, static_argnums=0)
def sample_many(rc, params, keys, context=None):
    return jax.vmap(rc.sample, in_axes=(None, 0, None))(params, keys, context)


@functools.partial(jax.jit, static_argnums=0)
def log_probs(rc, params, archs, context=None):
    return jax.vmap(rc.log_prob_and_entropy, in_axes=(None, 0, None))(params, archs, context)


@functools.partial(jax.jit, static_argnums=0)
def tell(rc, state, archs, fitness):
    return rc.tell(state, archs, fitness)


@functools.partial(jax.jit, static_argnums=0)
def init_ask(rc, key):
    return rc.ask(jax.random.fold_in(key, 1), rc.init(key))[::-1]


def init_ask_tell(rc, key, fitness):
    state, archs = init_ask(rc, key)
    return (state, archs, *tell(rc, state, archs, fitness))


@pytest.mark.parametrize("rc", [RC, RC_ODD], ids=["tiny", "odd_with_context"])
def test_the_policy_is_a_distribution_and_sampling_agrees_with_log_prob(rc):
    params = jax.jit(rc.init_params)(KEYS[0])
    context = None if rc.context_size == 0 else jnp.array([0.5, -1.0, 2.0])
    every = jnp.asarray(rc.space.enumerate())
    logp, ent = log_probs(rc, params, every, context)
    probs = np.exp(np.asarray(logp, np.float64))
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    assert probs.max() > 2.5 / len(probs)  # not uniform
    archs, s_logp, s_ent = sample_many(rc, params, KEYS, context)
    assert archs.shape == (4000, rc.space.num_decisions) and archs.dtype == jnp.int32
    assert bool(jax.vmap(rc.space.is_valid)(archs).all())
    # The log-prob and path entropy returned by sampling equal the teacher-forced ones.
    t_logp, t_ent = log_probs(rc, params, archs, context)
    np.testing.assert_allclose(s_logp, t_logp, atol=1e-5)
    np.testing.assert_allclose(s_ent, t_ent, atol=1e-5)
    # Sample frequencies match the enumerated probabilities.
    index = np.ravel_multi_index(np.asarray(archs).T, rc.space.num_choices)
    freq = np.bincount(index, minlength=len(probs)) / len(index)
    np.testing.assert_allclose(freq, probs, atol=0.03)
    if context is not None:  # the context is an input: another context, another policy
        other, _ = log_probs(rc, params, every, jnp.zeros(3))
        assert np.abs(np.asarray(other) - np.asarray(logp)).max() > 1e-3
        np.testing.assert_allclose(np.exp(np.asarray(other, np.float64)).sum(), 1.0, rtol=1e-5)
        with pytest.raises(ValueError, match="context_size is 3"):
            rc.log_prob(params, every[0], jnp.zeros(2))


def test_loss_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: p.astype(jnp.float64), RC.init_params(KEYS[0]))
        archs = jnp.asarray(TINY.enumerate()[::3])
        adv = jnp.linspace(-1.0, 1.0, archs.shape[0])
        value_and_grad = jax.jit(jax.value_and_grad(lambda p: RC.loss(p, archs, adv)))
        loss = lambda p: value_and_grad(p)[0]
        grads = value_and_grad(params)[1]
        direction = jax.tree.map(lambda p: jax.random.normal(KEYS[1], p.shape, p.dtype), params)
        eps = 1e-6
        shift = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, params, direction)
        numeric = (loss(shift(1.0)) - loss(shift(-1.0))) / (2 * eps)
        analytic = sum(jnp.vdot(g, d) for g, d in
                       zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
        np.testing.assert_allclose(float(numeric), float(analytic), rtol=1e-6)
        # One parameter on its own: a recurrent weight.
        bump = lambda s: {**params, "w_h": params["w_h"].at[2, 5].add(s * eps)}
        numeric = (loss(bump(1.0)) - loss(bump(-1.0))) / (2 * eps)
        np.testing.assert_allclose(float(numeric), float(grads["w_h"][2, 5]), rtol=1e-6,
                                   atol=1e-10)
        assert float(jnp.abs(grads["w_h"][2, 5])) > 1e-6


def test_policy_gradient_step_raises_the_log_prob_of_a_better_arch():
    state, archs, _, _ = init_ask_tell(RC, KEYS[0], jnp.zeros(4))
    good, bad = jnp.array([2, 1, 0]), jnp.array([0, 0, 1])
    told = jnp.stack([good, bad, good, bad])
    new, metrics = tell(RC, state, told, jnp.array([3.0, 1.0, 3.0, 1.0]))
    index = [int(np.ravel_multi_index(tuple(a), TINY.num_choices)) for a in (good, bad)]
    before = log_probs(RC, state.params, EVERY)[0][np.array(index)]
    after = log_probs(RC, new.params, EVERY)[0][np.array(index)]
    assert float(after[0]) > float(before[0]) + 1e-3  # advantage +1
    assert float(after[1]) < float(before[1]) - 1e-3  # advantage -1
    # The first tell sets the baseline to its mean; later ones move it by 1 - decay.
    assert float(state.baseline) == 0.0
    np.testing.assert_allclose(float(new.baseline), 2.0)
    newer, _ = tell(RC, new, told, jnp.full(4, 12.0))
    np.testing.assert_allclose(float(newer.baseline), 0.99 * 2.0 + 0.01 * 12.0, rtol=1e-6)
    assert int(newer.best.num_told) == 8 and float(newer.best.fitness) == 12.0
    assert float(metrics["best_fitness"]) == 3.0
    np.testing.assert_array_equal(new.best.arch, good)


def test_non_finite_fitness_never_reaches_the_params():
    np.testing.assert_array_equal(
        ReinforceController.rewards(jnp.array([jnp.nan, 2.0, jnp.inf, 1.0, -jnp.inf]), 0.0),
        [1.0, 2.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(ReinforceController.rewards(jnp.full(2, jnp.nan), 7.0), 7.0)
    state, archs, new, _ = init_ask_tell(RC, KEYS[0], jnp.array([jnp.nan, 1.0, jnp.inf, 3.0]))
    fitness_list = [jnp.full(4, jnp.nan), jnp.array([-jnp.inf, 2.0, 1e38, jnp.nan]),
                    jnp.array([3e38, 3e38, -3e38, 1.0])]
    for fitness in fitness_list:
        new, metrics = tell(RC, new, archs, fitness)
        assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(new.params))
        assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(new.opt_state))
        assert bool(jnp.isfinite(new.baseline))
    assert new.best.fitness == np.float32(3e38) and int(new.best.num_told) == 16
    assert not jax.tree.all(jax.tree.map(jnp.array_equal, new.params, state.params))


def test_same_key_same_search():
    fitness = jnp.array([1.0, 2.0, 0.5, 4.0])
    first = init_ask_tell(RC, KEYS[3], fitness)
    again = init_ask_tell(RC, KEYS[3], fitness)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    other = init_ask_tell(RC, KEYS[4], fitness)
    assert not np.array_equal(first[1], other[1]) or not np.array_equal(
        first[2].params["w_h"], other[2].params["w_h"])


NB201 = NB201Space()
TARGET = jnp.array([3, 1, 4, 2, 0, 3], jnp.int32)


def toy_fitness(archs):
    return jnp.sum(archs == TARGET, axis=-1).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 2))
def search_many(strategy, keys, num_rounds):
    """init + ask/evaluate/tell inside lax.scan, vmapped over seeds; batch mean per round."""

    def run(key):
        state, metrics = scan_search(strategy, toy_fitness, key, num_rounds)
        return state, metrics["batch_mean_fitness"]

    return jax.vmap(run)(keys)


def test_controller_learns_a_toy_problem_faster_than_random_search():
    # 6 decisions x 5 choices; fitness = decisions equal to a hidden target (random: 1.2).
    # ENAS' learning rate (3.5e-4) is tuned for thousands of steps; 40 steps need a larger one.
    rc = ReinforceController(space=NB201, batch_size=10, hidden_size=16, learning_rate=0.02)
    seeds = jax.random.split(jax.random.key(1), 4)
    state, curve = search_many(rc, seeds, 40)  # 400 evaluations per seed
    _, rs_curve = search_many(RandomSearch(space=NB201, batch_size=10), seeds, 40)
    late, rs_late = np.asarray(curve)[:, -10:].mean(), np.asarray(rs_curve)[:, -10:].mean()
    assert late > rs_late + 2.0, (late, rs_late)
    assert np.asarray(curve)[:, :5].mean() < 2.0  # it starts near random
    np.testing.assert_array_equal(state.best.num_told, 400)
    np.testing.assert_allclose(state.best.fitness, toy_fitness(state.best.arch))
    again, again_curve = search_many(rc, seeds[::-1], 40)
    np.testing.assert_array_equal(np.asarray(again_curve)[::-1], curve)
