"""MetaNAS core on tiny shapes: Reptile and first-order MAML updates equal their formulas,
adaptation is deterministic and lowers the support loss, the temperature schedule, pruning on
hand-made alphas, and meta-test statistics. One compiled program per learner (DARTS supernet
programs compile slowly on CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nas_jax.data.datasets import quadrant_images
from nas_jax.data.tasks import EpisodeSampler
from nas_jax.meta import metanas as M
from nas_jax.spaces.darts import DartsSpace, decision_index
from nas_jax.strategies.derive import derive
from nas_jax.supernet.darts import edge_index

WAYS = 3
SPACE = DartsSpace(channels=2, num_cells=1, stem_multiplier=1, input_shape=(8, 8, 1),
                   num_classes=WAYS)
FAST = {"xla_backend_optimization_level": 0}
# XLA:CPU's default fusion emitters (the suite turns them off; tests/conftest.py): the tiny
# Conv-4 is ill-conditioned (a relative change of 1e-6 in its weights moved some query
# gradients by percents), so the FOMAML test compares the meta step with a reference copy
# of the same computation in one program, which these emitters compute alike.
FAST_FOMAML = {**FAST, "xla_cpu_use_fusion_emitters": True}
NET = {"depthwise_impl": "xla", "edge_execution": "scan"}  # the fastest to compile
STEPS = 3
# A per-step in-task anneal (the MetaNAS code's linear schedule), as a traced argument.
TEMPS = M.temperature(jnp.arange(STEPS), start=1.0, end=0.2, steps=STEPS - 1, mode="linear")
SAMPLER = EpisodeSampler.create(quadrant_images(jax.random.key(0), 60, WAYS), ways=WAYS,
                                shots=2, queries=2)
EPISODES = SAMPLER.sample_batch(jax.random.key(1), 2)
@pytest.fixture(scope="module", autouse=True)
def non_partitionable_threefry():
    """Network inits compile several times faster with the non-partitionable threefry."""
    with jax.threefry_partitionable(False):
        yield


def _close(a, b, **kw):
    return all(np.allclose(x, y, **kw) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _step_and_reference_fn(learner, key, state, episodes, temps):
    """``meta_step`` and, for the same tasks, ``adapt`` called on its own plus each task's
    query-loss gradient at its adapted weights (the fomaml reference)."""
    new_state, metrics = M.meta_step(learner, key, state, episodes, temps)
    t_last = temps[-1]

    def reference(sx, sy, qx, qy):
        p, a, r, losses = M.adapt(learner, key, state.params, state.rest, state.alpha, sx, sy,
                                  temps)

        def query_loss(p, a):
            out, _ = M.logits(learner, p, r, a, qx, t_last)
            return optax.softmax_cross_entropy_with_integer_labels(out, qy).mean()

        grads = jax.grad(query_loss, (0, 1))(p, a) if learner.outer == "fomaml" else ()
        return p, a, losses, grads

    # The same task batching as meta_step (lax.map on CPU): Adam's first steps turn rounding
    # noise in near-zero gradients into +-lr steps, so vmap and map differ there.
    ref = M._over_tasks(learner, reference)(episodes.support_x, episodes.support_y,
                                             episodes.query_x, episodes.query_y)
    return new_state, metrics, ref


_step_and_reference = jax.jit(_step_and_reference_fn, static_argnums=0, compiler_options=FAST)
_fomaml_step_and_reference = jax.jit(_step_and_reference_fn, static_argnums=0,
                                     compiler_options=FAST_FOMAML)


def _reptile_run(kind, **options):
    learner, state = M.make_learner(jax.random.key(2), kind, space=SPACE, inner_steps=STEPS,
                                    inner_lr_w=0.05, inner_lr_alpha=0.05, meta_lr_w=0.5,
                                    meta_lr_alpha=0.3, **options)
    key = jax.random.key(3)
    first = _step_and_reference(learner, key, state, EPISODES, TEMPS)
    again = _step_and_reference(learner, key, state, EPISODES, TEMPS)
    return learner, state, first, again


@pytest.fixture(scope="module")
def conv4_reptile():
    return _reptile_run("conv4", conv_channels=2)


@pytest.fixture(scope="module")
def metanas_reptile():
    return _reptile_run("metanas", network_options=NET)


# The supernet runs its edges as scans: its meta-step compiles in ~30-40 s here, not minutes;
# still opt-in (NAS_JAX_SLOW_TESTS=1) to keep the suite under 10 minutes on 2 cores.
REPTILE_RUNS = ["conv4_reptile", pytest.param("metanas_reptile", marks=pytest.mark.slow)]


@pytest.mark.parametrize("run", REPTILE_RUNS)
def test_reptile_update_equals_formula(run, request):
    learner, state, (new, _, (p_t, a_t, _, _)), _ = request.getfixturevalue(run)
    want = jax.tree.map(lambda w, wt: w + 0.5 * (wt.mean(0) - w), state.params, p_t)
    assert _close(new.params, want, atol=1e-6)
    assert not _close(new.params, state.params, atol=1e-4)
    np.testing.assert_allclose(new.alpha, state.alpha + 0.3 * (a_t.mean(0) - state.alpha),
                               atol=1e-7)
    if learner.searches:
        assert not np.allclose(new.alpha, state.alpha)  # the architecture was adapted
    assert int(new.step) == 1 and new.outer_opt == ()


@pytest.mark.parametrize("run", REPTILE_RUNS)
def test_adapt_is_deterministic_and_lowers_support_loss(run, request):
    _, _, first, again = request.getfixturevalue(run)
    assert _close(first, again, atol=0, rtol=0)
    _, metrics, (_, _, losses, _) = first
    assert losses.shape == (2, STEPS)
    assert np.all(losses[:, -1] < losses[:, 0])
    assert metrics["support_loss_after"] < metrics["support_loss_before"]
    np.testing.assert_allclose(metrics["support_loss_before"], losses[:, 0].mean(), rtol=1e-5)
    assert 0.0 <= metrics["query_accuracy"] <= 1.0


@pytest.fixture(scope="module")
def conv4_fomaml():
    learner, state = M.make_learner(jax.random.key(4), "conv4", space=SPACE, conv_channels=2,
                                    inner_steps=STEPS, inner_lr_w=0.05, outer="fomaml",
                                    meta_lr_w=0.01)
    runs = []
    for i in range(2):  # two meta-steps: the second tests Adam's use of the gradients' scale
        new, metrics, ref = _fomaml_step_and_reference(learner, jax.random.key(5 + i), state,
                                                       EPISODES, TEMPS)
        runs.append((state, new, ref))
        state = new
    return learner, runs


def test_meta_lr_scale_scales_the_reptile_step(conv4_reptile):
    """Reptile's annealed meta step: ``meta_lr_scale`` multiplies the meta learning rate."""
    learner, state, (full, _, _), _ = conv4_reptile
    half, _ = jax.jit(M.meta_step, static_argnums=0, compiler_options=FAST)(
        learner, jax.random.key(3), state, EPISODES, TEMPS, meta_lr_scale=0.5)
    want = jax.tree.map(lambda w, f: w + 0.5 * (f - w), state.params, full.params)
    assert _close(half.params, want, atol=1e-6)
    assert not _close(half.params, full.params, atol=1e-4)


def test_fomaml_outer_gradient_is_mean_query_gradient(conv4_fomaml):
    learner, runs = conv4_fomaml
    adam = optax.adam(learner.meta_lr_w)
    opt = adam.init(runs[0][0].params)
    # Adam divides by |g|: entries whose gradient is rounding noise (< 1e-5, e.g. a BN
    # shift cancelled by the pooling) get arbitrary +-lr steps, so only the others are
    # compared exactly; every entry moves by at most ~lr.
    signal = jax.tree.map(lambda p: np.ones(p.shape, bool), runs[0][0].params)
    for old, new, (_, _, _, (g_params, _)) in runs:
        mean_grad = jax.tree.map(lambda g: g.mean(0), g_params)
        signal = jax.tree.map(lambda s, g: s & (np.abs(g) > 1e-5), signal, mean_grad)
        update, opt = adam.update(mean_grad, opt, old.params)
        want = optax.apply_updates(old.params, update)
        for got, w, s, o in zip(*(jax.tree.leaves(t) for t in (new.params, want, signal,
                                                                 old.params)), strict=True):
            np.testing.assert_allclose(np.asarray(got)[s], np.asarray(w)[s], atol=1e-6)
            assert np.all(np.abs(np.asarray(got) - np.asarray(o)) <= 1.01 * learner.meta_lr_w)
        assert sum(int(s.sum()) for s in jax.tree.leaves(signal)) > 100
        assert new.alpha.shape == (0,)


def test_conv4_parameter_count_and_evaluate(conv4_fomaml):
    learner, runs = conv4_fomaml
    state = runs[-1][1]
    c = 2  # 4 bias-free 3x3 convs, 4 affine BNs, a linear layer on the 1x1x2 feature map
    assert M.num_params(learner, state) == 9 * c + 3 * 9 * c * c + 4 * 2 * c + c * WAYS + WAYS
    kwargs = dict(episodes=5, chunk=2, temperature=1.0, threshold=0.01)
    result = M.evaluate(learner, jax.random.key(7), state, SAMPLER, **kwargs)
    accs = result["accuracies"]
    assert accs.shape == (5,) and "alphas" not in result
    assert result["accuracy"] == pytest.approx(accs.mean())
    assert result["ci95"] == pytest.approx(1.96 * accs.std() / np.sqrt(5))
    np.testing.assert_allclose(accs * WAYS * 2, np.round(accs * WAYS * 2), atol=1e-6)
    again = M.evaluate(learner, jax.random.key(7), state, SAMPLER, **kwargs)
    np.testing.assert_array_equal(again["accuracies"], accs)


def test_temperature_schedule():
    steps = jnp.arange(15)
    for mode in M.TEMPERATURE_MODES:
        fn = jax.jit(lambda s, mode=mode: M.temperature(s, start=1.0, end=0.05, steps=10,
                                                        mode=mode))
        t = np.asarray(fn(steps))
        assert t[0] == pytest.approx(1.0) and t[10] == pytest.approx(0.05)
        assert np.all(np.diff(t[:11]) < 0) and np.all(t[10:] == t[10])
    geometric = M.temperature(5, start=1.0, end=0.04, steps=10)
    assert float(geometric) == pytest.approx(0.2)  # the geometric mean of the endpoints
    linear = M.temperature(5, start=1.0, end=0.04, steps=10, mode="linear")
    assert float(linear) == pytest.approx(0.52)


def test_prune_hand_made_alpha():
    alpha = np.zeros((2, 14, 8), np.float32)
    alpha[0, 0, 4] = 5.0  # node 0: edge 0 keeps op 4 only
    alpha[0, 1, [3, 5]] = 3.0  # node 0: edge 1 keeps ops 3 and 5 (others 0.022 < 0.05)
    alpha[0, 2, 6] = 6.0  # node 1: edge 2 strong; edges 3, 4 are `none` and dropped
    alpha[0, [3, 4], 0] = 8.0
    alpha[0, 5:9, 0] = 8.0  # node 2: every edge weak; edge 7 is the strongest
    alpha[0, 7, 2] = 1.0
    w = np.asarray(M.prune(jnp.asarray(alpha), 1.0, 0.05))
    kept = w > 0
    assert np.flatnonzero(kept[0, 0]).tolist() == [4]
    assert np.flatnonzero(kept[0, 1]).tolist() == [3, 5]
    np.testing.assert_allclose(w[0, 1, [3, 5]], 0.5, rtol=1e-6)
    assert np.flatnonzero(kept[0, 2]).tolist() == [6] and not kept[0, 3:5].any()
    assert not kept[0, [5, 6, 8]].any() and np.flatnonzero(kept[0, 7]).tolist() == [0, 2]
    np.testing.assert_allclose(w[0, 9:], 1 / 8)  # node 3 and the uniform reduce cell stay
    np.testing.assert_allclose(w[1], 1 / 8)
    sums = w.sum(-1)
    assert np.allclose(sums[sums > 0], 1.0)
    for cell in range(2):
        for node in range(4):
            edges = np.flatnonzero(M._NODE_OF_EDGE[node])
            assert (sums[cell, edges] > 0).any()  # every node keeps an input edge
    assert np.all(w[..., 1:].sum(-1)[sums > 0] > 0)  # every kept edge keeps a real op
    # Extreme thresholds: nothing pruned at 0; one real op per node at 1.
    np.testing.assert_allclose(M.prune(jnp.asarray(alpha), 1.0, 0.0),
                               jax.nn.softmax(alpha, -1), rtol=1e-6)
    strict = np.asarray(M.prune(jnp.asarray(alpha), 1.0, 1.0))
    assert int((strict.sum(-1) > 0).sum()) == 8 and int((strict > 0).sum()) == 8
    arch = derive(SPACE, np.log(w + 1e-30))
    SPACE.validate(arch)


def test_genotype_random_cell_and_errors():
    learner, _ = M.make_learner(jax.random.key(8), "random_cell", space=SPACE,
                                arch_key=jax.random.key(9))
    arch = M.genotype(learner, None)
    np.testing.assert_array_equal(arch, SPACE.sample(jax.random.key(9)))
    with pytest.raises(ValueError, match="kind='foo'; allowed: metanas, conv4, random_cell"):
        M.make_learner(jax.random.key(0), "foo", space=SPACE)
    with pytest.raises(ValueError, match="outer='maml'; allowed: reptile, fomaml"):
        M.make_learner(jax.random.key(0), "conv4", space=SPACE, outer="maml")
    with pytest.raises(ValueError, match="mode='cosine'"):
        M.temperature(0, start=1.0, end=0.1, steps=5, mode="cosine")


def test_metanas_cold_softmax_is_the_pruned_network():
    """At a low temperature the supernet's mixture is the pruned (one op per edge) network:
    the reason MetaNAS anneals the temperature before pruning."""
    learner, state = M.make_learner(jax.random.key(11), "metanas", space=SPACE,
                                    network_options=NET)
    assert state.alpha.shape == (2, 14, 8) and float(jnp.abs(state.alpha).max()) < 0.01
    ops = jax.random.randint(jax.random.key(12), (2, 14), 1, 8)
    alpha = jax.nn.one_hot(ops, 8)
    forward = jax.jit(M._forward, static_argnums=0, compiler_options=FAST)
    x = EPISODES.support_x[0]
    cold = forward(learner, state.params, state.rest, jax.nn.softmax(alpha / 0.01, -1), x)[0]
    pruned = M.prune(alpha, 0.01, 0.5)
    np.testing.assert_array_equal(pruned, jax.nn.one_hot(ops, 8))
    hard = forward(learner, state.params, state.rest, pruned, x)[0]
    warm = forward(learner, state.params, state.rest, jax.nn.softmax(alpha, -1), x)[0]
    np.testing.assert_allclose(cold, hard, atol=1e-5)
    assert not np.allclose(warm, hard, atol=1e-3)
    assert M.num_params(learner, state) > 1000
    arch = M.genotype(learner, alpha)  # equal edge strengths: inputs 0 and 1 win the ties
    for cell, node, slot in np.ndindex(2, 4, 2):
        assert arch[decision_index(cell, node, slot, 0)] == slot
        assert arch[decision_index(cell, node, slot, 1)] == ops[cell, edge_index(node, slot)]


def test_task_batching_vmap_equals_map(conv4_reptile):
    learner, state, _, _ = conv4_reptile
    assert learner.task_batching == "auto"  # lax.map on this CPU
    step = jax.jit(M.meta_step, static_argnums=0, compiler_options=FAST)
    # One inner step: later steps would amplify the difference below into every weight.
    one = learner.replace(inner_steps=1)
    new, metrics = step(one.replace(task_batching="map"), jax.random.key(3), state, EPISODES,
                        1.0)
    new_v, metrics_v = step(one.replace(task_batching="vmap"), jax.random.key(3), state,
                            EPISODES, 1.0)
    np.testing.assert_allclose(metrics_v["support_loss_before"],
                               metrics["support_loss_before"], rtol=1e-6)
    # Kernels only: a BN shift whose gradient is rounding noise on these 8x8 inputs gets an
    # arbitrary +-lr first Adam step, which differs between the two.
    for name in ("convs", "classifier"):
        assert _close(new_v.params[name], new.params[name], atol=1e-5), name
    with pytest.raises(ValueError, match="task_batching='pmap'; allowed: auto, vmap, map"):
        M.make_learner(jax.random.key(0), "conv4", space=SPACE, task_batching="pmap")
