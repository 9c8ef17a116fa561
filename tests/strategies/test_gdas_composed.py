"""GDAS through the composed execution computes the switch supernet's GDAS step."""

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
        return jax.jit(_search().init)(jax.random.key(0))


def test_architecture_gradient_equals_autodiff_through_the_switch_supernet(state):
    """d valid loss / d alpha: composed (scales' gradient, then the sample's VJP) against
    jax.grad of the search's own architecture loss, for several samples."""
    search = _search()
    composed = ComposedGDAS(search)
    prepared = composed.prepare(state)
    _, valid = _batches(1)
    reference = jax.jit(jax.value_and_grad(search.arch_loss, has_aux=True))
    seen = set()
    for i in range(3):
        key = jax.random.key(10 + i)
        d_scales, loss, accuracy, arch = composed.arch_gradient(prepared, valid, key)
        seen.add(tuple(np.asarray(arch)))

        def scales_of(a, key=key):
            h = gumbel_straight_through(key, a, search.tau_at(state.step))
            return h[jnp.arange(6), jnp.argmax(h, -1)]

        _, vjp = jax.vjp(scales_of, state.alpha)
        got = vjp(d_scales)[0]
        (want_loss, (_, want_acc)), want = reference(
            state.alpha, state.params, state.stats, key, state.step, state.w_opt, None, valid)
        assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
        assert float(accuracy) == float(want_acc)
        assert float(jnp.abs(want).max()) > 0  # the check is not vacuous
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-3, atol=1e-6)
    assert len(seen) > 1


def test_steps_equal_the_switch_supernet_steps(state):
    """Three whole steps (architecture, then weights), with the beta regulariser on: alpha,
    the optimizer states, every weight and the metrics equal the jitted switch-supernet
    step's (tests/test_gradient_search.py runs both executions without it)."""
    search = _search(beta_weight=0.5)
    composed = ComposedGDAS(search)
    ref = state
    cur = composed.prepare(jax.tree.map(jnp.copy, state))
    step = jax.jit(search.step)
    for i in range(3):
        train, valid = _batches(2 + i)
        ref, ref_metrics = step(ref, train, valid)
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


def test_needs_gdas_on_nb201():
    with pytest.raises(ValueError, match="method='gdas'"):
        ComposedGDAS(GradientSearch(SPACE, method="darts"))
    darts = DartsSpace(channels=4, num_cells=2, input_shape=(8, 8, 3), num_classes=4)
    with pytest.raises(ValueError, match="NB201 space"):
        ComposedGDAS(GradientSearch(darts, method="gdas"))
