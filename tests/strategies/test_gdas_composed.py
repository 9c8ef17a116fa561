"""GDAS through the composed execution computes the switch supernet's GDAS step (NB201), and
the mixture supernet's step restricted to the sampled ops (DARTS)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.spaces.darts import DartsSpace
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.strategies.gdas_composed import ComposedGDAS
from nas_jax.strategies.gradient import GradientSearch, gumbel_straight_through

SPACE = NB201Space(channels=3, cells_per_stage=1, input_shape=(8, 8, 2), num_classes=4)
SWITCH = (("select", "switch"),)


def _search(**kw):
    # a large architecture learning rate and a small temperature, so that alpha moves and
    # the samples change over the steps (Adam's steps have about this size whatever the
    # gradient: on an edge whose gradient is near zero, float rounding moves alpha by a
    # fraction of a step, hence the tolerance on alpha below)
    return GradientSearch(SPACE, method="gdas", network_options=SWITCH, total_steps=4,
                          arch_learning_rate=0.05, tau_max=1.0, tau_min=0.5, **kw)


def _batches(seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return ((jax.random.normal(k1, (6, 8, 8, 2)), jnp.arange(6) % 4),
            (jax.random.normal(k2, (6, 8, 8, 2)), (jnp.arange(6) + 1) % 4))


def _close(a, b, atol, rtol=1e-4):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def state():
    with jax.threefry_partitionable(False):
        return _search().init(jax.random.key(0))  # op by op, as runs do


def test_architecture_gradient_equals_autodiff_through_the_switch_supernet(state):
    """d valid loss / d alpha: composed (scales' gradient, then the sample's VJP) against
    jax.grad of the search's own architecture loss, for several samples."""
    archs = _assert_arch_gradients(ComposedGDAS(_search()), _search().arch_loss, state,
                                   _batches(1)[1], seeds=(10, 11, 12))
    seen = {tuple(a.tolist()) for a in archs}
    assert len(seen) > 1


def _assert_arch_gradients(composed, arch_loss, state, valid, seeds) -> list[np.ndarray]:
    """For the sample of each seed: the composed architecture gradient (the scales'
    gradient, then the sample's VJP), loss and accuracy equal ``jax.grad(arch_loss)``'s.
    Returns the sampled architectures."""
    search = composed.search
    prepared = composed.prepare(state)
    reference = jax.jit(jax.value_and_grad(arch_loss, has_aux=True))
    archs = []
    for seed in seeds:
        key = jax.random.key(seed)
        d_scales, loss, accuracy, arch = composed.arch_gradient(prepared, valid, key)
        archs.append(np.asarray(arch))

        def scales_of(a, key=key):
            h = gumbel_straight_through(key, a, search.tau_at(state.step))
            return jnp.take_along_axis(h, jnp.argmax(h, -1)[..., None], -1).reshape(-1)

        got = jax.vjp(scales_of, state.alpha)[1](d_scales)[0]
        (want_loss, (_, want_acc)), want = reference(
            state.alpha, state.params, state.stats, key, state.step, state.w_opt, None, valid)
        assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
        assert float(accuracy) == float(want_acc)
        assert float(jnp.abs(want).max()) > 0  # the check is not vacuous
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-3, atol=1e-6)
    return archs


def test_steps_equal_the_switch_supernet_steps(state):
    """Three whole steps (architecture, then weights), with the beta regulariser on: alpha,
    the optimizer states, every weight and the metrics equal the jitted switch-supernet
    step's (tests/test_gradient_search.py runs both executions without it)."""
    search = _search(beta_weight=0.5)
    _assert_steps_equal(ComposedGDAS(search), jax.jit(search.step), state, _batches)


def _assert_steps_equal(composed, reference_step, state, batches):
    """Three steps of ``composed`` and of the jitted ``reference_step`` from ``state`` on
    ``batches(2 + i)``: the metrics, alpha, both optimizer states and every weight agree."""
    ref = state
    cur = composed.prepare(jax.tree.map(jnp.copy, state))
    for i in range(3):
        train, valid = batches(2 + i)
        ref, ref_metrics = reference_step(ref, train, valid)
        cur, metrics = composed.step(cur, train, valid)
        assert set(metrics) == set(ref_metrics)
        for name in ref_metrics:
            assert float(metrics[name]) == pytest.approx(float(ref_metrics[name]), rel=1e-4,
                                                         abs=1e-6), name
    # 1% of a step (a wrong sample, key or order moves it by steps; rounding moved it by
    # 7e-6 and, with the other PRNG mode's samples, by 5e-5)
    np.testing.assert_allclose(np.asarray(cur.alpha), np.asarray(ref.alpha), atol=5e-4)
    assert not np.allclose(np.asarray(ref.alpha), np.asarray(state.alpha), atol=5e-2)
    _close(cur.a_opt, ref.a_opt, atol=1e-5, rtol=1e-3)
    back = composed.restore(cur, ref)
    _close(back.params, ref.params, atol=1e-5)
    _close(back.w_opt, ref.w_opt, atol=1e-5)
    assert int(back.step) == int(ref.step) == 3


def test_needs_gdas():
    with pytest.raises(ValueError, match="method='gdas'"):
        ComposedGDAS(GradientSearch(SPACE, method="darts"))


# ----------------------------------------------------------------------------- DARTS

# one op of each kind but the dilated convolution (a pool with its BN, skip / factorized
# reduce, a separable convolution, none): the kinds of unit at a fraction of all eight ops'
# compiles (the composed network's every op, the dilated ones included, is checked against
# the supernet in tests/supernet/test_composed_darts.py). 16x16 inputs: at 8x8 the reduction
# cells' BatchNorms normalise over 6 x 2 x 2 values, which amplified float rounding until the
# two executions' momentum buffers differed by 1e-3 after three steps (in float64 they agree
# to 2e-16); at 16x16 by 5e-7.
DARTS = DartsSpace(channels=4, num_cells=3, input_shape=(16, 16, 3), num_classes=4,
                   primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"))


class SampledOnly(GradientSearch):
    """GDAS on the mixture supernet with ``one_hot(arg max) * sample`` as op weights: only
    each edge's sampled op contributes, scaled by its weight, and only that weight gets a
    gradient (AutoDL's GDAS), computed by autodiff through the whole supernet."""

    def mixture(self, key, alpha, step):
        h = super().mixture(key, alpha, step)
        return jax.nn.one_hot(jnp.argmax(h, -1), h.shape[-1], dtype=h.dtype) * h


def _darts_search(cls=GradientSearch, **kw):
    return cls(DARTS, method="gdas", total_steps=4, arch_learning_rate=0.05, tau_max=1.0,
               tau_min=0.5, network_options=(("edge_execution", "scan"),), **kw)


def _darts_batches(seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return ((jax.random.normal(k1, (6, 16, 16, 3)), jnp.arange(6) % 4),
            (jax.random.normal(k2, (6, 16, 16, 3)), (jnp.arange(6) + 1) % 4))


@pytest.fixture(scope="module")
def darts_state():
    with jax.threefry_partitionable(False):
        return _darts_search().init(jax.random.key(0))


def _compiled(composed) -> tuple:
    """How many programs the composed graph and its shared sum programs hold (one per unit
    structure; the sums' jit caches count arities and shapes)."""
    from nas_jax.supernet import composed as module

    return (len(composed.graph._programs), module._scaled_sum_vjp._cache_size(),
            module._add._cache_size())


@pytest.fixture(scope="module")
def darts_composed(darts_state):
    """One composed search for the DARTS tests, warmed up, so they share its compiled unit
    programs (the architecture gradient does not read the beta regulariser). The samples
    of the tests below must compile nothing more (the last test checks)."""
    composed = ComposedGDAS(_darts_search(beta_weight=0.5))
    composed.warm_up(composed.prepare(darts_state), *_darts_batches(7))
    composed.compiled_after_warm_up = _compiled(composed)
    return composed


def test_darts_architecture_gradient_equals_autodiff_through_the_sampled_mixture(
        darts_state, darts_composed):
    archs = _assert_arch_gradients(darts_composed, _darts_search(SampledOnly).arch_loss,
                                   darts_state, _darts_batches(1)[1], seeds=(20, 21))
    assert all(a.shape == (2, 14) for a in archs)
    ops_seen = set(np.concatenate(archs, axis=None).tolist())
    assert len(ops_seen) == len(DARTS.primitives)  # the samples drew every op


def test_darts_steps_equal_the_sampled_mixture_steps(darts_state, darts_composed):
    """Three whole steps with the beta regulariser: alpha, the optimizer states, every
    weight and the metrics equal the jitted mixture step's with the sampled-only weights."""
    reference = jax.jit(_darts_search(SampledOnly, beta_weight=0.5).step)
    _assert_steps_equal(darts_composed, reference, darts_state, _darts_batches)


def test_darts_warm_up_compiles_what_steps_need(darts_state, darts_composed):
    """Since ``warm_up`` (in the fixture), the samples of the tests above and of three more
    steps compiled no new unit or sum program."""
    composed = darts_composed
    cur = composed.prepare(jax.tree.map(jnp.copy, darts_state))
    for i in range(3):
        cur, _ = composed.step(cur, *_darts_batches(30 + i))
    assert _compiled(composed) == composed.compiled_after_warm_up
