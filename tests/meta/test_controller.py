"""The task-conditioned controller: exact policy gradient vs finite differences, meta-training
on a synthetic family (reward improves, resume equals a straight run, zero-shot finds an
unseen task's best), fine-tuning through the ordinary strategy machinery, the orbax round
trip and config errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.config import ConfigError
from nas_jax.meta.controller import (
    ConditionedController,
    FinetuneController,
    load_controller,
    save_controller,
)
from nas_jax.meta.meta_train import (
    FAST_COMPILE,
    _greedy_regret_fast,
    build_family,
    meta_train_config,
    run_meta_train,
    validate_meta_train,
)
from nas_jax.meta.tasks import Task, table_fitness
from nas_jax.spaces.base import SearchSpace
from nas_jax.strategies.base import scan_search
from nas_jax.utils.metrics import read_jsonl

SPACE = SearchSpace(num_choices=(3, 3, 3, 3))


def _config(steps):
    c = meta_train_config()
    c.steps, c.log_every, c.checkpoint_every = steps, 10, 100
    c.family.num_train, c.family.num_test, c.family.num_choices = 16, 8, SPACE.num_choices
    c.progress_interval_s = 1e6
    return c


@pytest.fixture(scope="module", autouse=True)
def non_partitionable_threefry():
    with jax.threefry_partitionable(False):
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Meta-train 300 steps twice: straight through, and stopped at 150 then resumed."""
    work = tmp_path_factory.mktemp("meta")
    run_meta_train(_config(150), str(work / "resumed"))
    results = run_meta_train(_config(300), str(work / "resumed"))
    run_meta_train(_config(300), str(work / "straight"))
    controller, params = load_controller(str(work / "resumed" / "controller"))
    family = build_family(_config(300).family)
    return dict(work=work, results=results, controller=controller, params=params,
                family=family)


def test_meta_training_raises_the_normalised_reward(trained):
    lines = read_jsonl(trained["work"] / "resumed" / "metrics.jsonl")
    # The resume left no duplicate lines.
    assert [r["step"] for r in lines] == list(range(10, 301, 10))
    reward = [r["mean_normalised_reward"] for r in lines]
    assert reward[-1] > reward[0] + 0.1 and reward[-1] > 0.97, reward


def test_resumed_run_equals_an_uninterrupted_one(trained):
    _, straight = load_controller(str(trained["work"] / "straight" / "controller"))
    for name, value in trained["params"].items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(straight[name]))


def test_zero_shot_proposal_finds_an_unseen_tasks_best(trained):
    controller, family = trained["controller"], trained["family"]
    tasks = family.stacked("test")
    best = np.stack([family.best_arch(i) for i in family.ids("test")])
    assert len({tuple(b) for b in best}) > 2  # the best architecture moves with the task
    table = np.sort(np.asarray(tasks.fitness), axis=1)
    span = table[:, -1] - table[:, 0]
    margin = (table[:, -1] - table[:, -2]) / span  # how far the runner-up trails the best
    results = trained["results"]  # run_meta_train's greedy proposals for the unseen tasks
    assert results["task_ids"] == family.ids("test").tolist()
    archs, regret = np.asarray(results["archs"]), np.asarray(results["regret"]) / span
    found = np.all(np.asarray(archs) == best, axis=1)
    # Every unseen task gets its best or, where the two are nearly tied, its runner-up; a
    # task whose best is clear gets the best.
    assert np.all(regret <= margin + 1e-6), (regret, margin)
    assert np.all(found[margin > 0.05]) and found.mean() >= 0.5, (found, margin)
    before = np.asarray(trained["results"]["before_meta_training"]["regret"]) / span
    assert regret.mean() < 0.05 and regret.mean() < 0.25 * before.mean(), (regret, before)
    assert results["fraction_found_best"] == found.mean()
    # The loaded controller's greedy proposals are the ones run_meta_train reported.
    np.testing.assert_array_equal(np.asarray(_greedy_regret_fast(
        controller, trained["params"], tasks)[0]), archs)
    # Sampled proposals concentrate on the greedy one (the policy, not only its mode).
    i = int(np.argmax(margin))
    propose = jax.jit(controller.propose, static_argnums=3, compiler_options=FAST_COMPILE)
    proposals = propose(trained["params"], family.task(int(family.ids("test")[i])),
                        jax.random.key(3), 64)
    hits = np.all(np.asarray(proposals) == best[i], axis=1).mean()
    assert hits > 0.5, hits


def test_exact_policy_gradient_matches_finite_differences():
    space = SearchSpace(num_choices=(2, 3))
    rc = ConditionedController(space=space, hidden_size=4, init_scale=1.0, temperature=1.0,
                               tanh_constant=0.0, entropy_weight=0.0, mode="data",
                               embed_size=3, feature_size=2, encoder_hidden=4)
    every = jnp.asarray(space.enumerate())
    eps = 1e-6
    with jax.enable_x64(True):
        task = Task(task_id=jnp.asarray(0), features=jnp.array([[0.3, -1.2], [0.8, 0.1]]))
        reward = jnp.linspace(-1.0, 2.0, every.shape[0])

        def expected(p):  # sum over pi(a) and E_pi[R], exactly, by enumeration
            probs = jnp.exp(jax.vmap(lambda a: rc.log_prob(p, a, rc.embed(p, task)))(every))
            return jnp.sum(probs), jnp.sum(probs * reward), probs

        @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
        def check(key):
            params = jax.tree.map(lambda x: x.astype(jnp.float64), rc.init_params(key))
            total, _, probs = expected(params)
            # REINFORCE over the exact distribution: E_pi[R grad log pi] = grad E_pi[R].
            adv = reward * probs * every.shape[0]
            grads = jax.grad(rc.task_loss)(params, every, adv, task)
            # A fixed, dense direction (no float64 random bits: they compile slowly).
            phase = jax.random.uniform(key, (), jnp.float64, 0.0, 6.0)
            direction = jax.tree.map(
                lambda x: jnp.sin(1.7 * jnp.arange(x.size, dtype=x.dtype) + phase)
                .reshape(x.shape), params)
            shifted = jax.tree.map(lambda x, v: x + jnp.array([eps, -eps])
                                   .reshape((2,) + (1,) * x.ndim) * v, params, direction)
            plus, minus = jax.vmap(lambda p: expected(p)[1])(shifted)
            numeric = (plus - minus) / (2 * eps)
            analytic = -sum(jnp.vdot(g, d) for g, d in
                            zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
            return total, numeric, analytic, jnp.abs(grads["phi1_w"]).max()

        for seed in range(2):
            total, numeric, analytic, encoder_grad = check(jax.random.key(seed))
            np.testing.assert_allclose(float(total), 1.0, rtol=1e-12)
            np.testing.assert_allclose(float(numeric), float(analytic), rtol=1e-6)
            assert abs(float(analytic)) > 1e-3
            # The encoder is trained through the context: its gradient is not zero.
            assert float(encoder_grad) > 1e-6


def test_learned_embeddings_and_modes():
    learned = ConditionedController(space=SPACE, hidden_size=4, mode="learned", num_tasks=3,
                                    embed_size=2)
    table = jnp.arange(6.0).reshape(3, 2)
    params = {"task_embed": table}
    task = lambda i: Task(task_id=jnp.asarray(i), features=jnp.zeros((1, 1)))
    assert learned.context_size == 2
    np.testing.assert_array_equal(learned.embed(params, task(1)), [2.0, 3.0])
    np.testing.assert_allclose(learned.embed(params, task(7)), [2.0, 3.0])  # unseen: mean row
    shapes = jax.eval_shape(learned.init_params, jax.random.key(0))
    assert shapes["task_embed"].shape == (3, 2) and shapes["w_x"].shape == (4 + 2, 16)
    none = ConditionedController(space=SPACE, hidden_size=4, mode="none")
    assert none.context_size == 0
    assert "task_embed" not in jax.eval_shape(none.init_params, jax.random.key(0))
    with pytest.raises(ValueError, match="mode='bad'"):
        ConditionedController(space=SPACE, mode="bad")
    data = ConditionedController(space=SPACE, hidden_size=4, feature_size=2)
    with pytest.raises(ValueError, match="feature_size is 2"):
        data.encode({}, jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="pass key="):
        learned.finetune(params, task(7))


def test_finetune_runs_as_an_ordinary_strategy(trained):
    controller, params, family = trained["controller"], trained["params"], trained["family"]
    task = family.task(int(family.ids("test")[1]))
    strategy = controller.finetune(params, task, batch_size=8)
    assert isinstance(strategy, FinetuneController)
    fitness_fn = functools.partial(table_fitness, task, space=SPACE)
    state, metrics = jax.jit(scan_search, static_argnums=(0, 1, 3),
                             compiler_options=FAST_COMPILE)(strategy, fitness_fn,
                                                            jax.random.key(5), 3)
    best = float(np.asarray(task.fitness).max())
    # It starts from the meta-trained policy, so the first round already finds the best.
    np.testing.assert_allclose(np.asarray(metrics["best_fitness"])[0], best, rtol=1e-6)
    assert int(state.best.num_told) == 24
    np.testing.assert_allclose(np.asarray(strategy.init(jax.random.key(9)).params["context"]),
                               np.asarray(controller.embed(params, task)), rtol=1e-6)


def test_save_and_load_round_trip(trained, tmp_path):
    meta, trained_params = trained["controller"], trained["params"]
    save_controller(str(tmp_path / "ctrl"), meta, trained_params, step=7)
    controller, params = load_controller(str(tmp_path / "ctrl"))
    assert controller == meta and controller.mode == "data"
    assert set(params) == set(trained_params)
    for name in params:
        np.testing.assert_array_equal(np.asarray(params[name]), np.asarray(trained_params[name]))
    with pytest.raises(FileNotFoundError, match="meta-train one first"):
        load_controller(str(tmp_path / "nothing"))


def test_config_errors_name_the_field():
    validate_meta_train(_config(200))
    for field, value, match in (("steps", 125, "config.steps=125"),
                                ("tasks_per_step", 17, "config.tasks_per_step=17"),
                                ("controller.mode", "bad", "config.controller.mode='bad'"),
                                ("controller.batch_size", 1, "config.controller.batch_size=1"),
                                ("family.space", "nb201", "config.family.space='nb201'")):
        c = _config(200)
        section, _, name = field.rpartition(".")
        (c[section] if section else c)[name] = value
        with pytest.raises(ConfigError, match=match):
            validate_meta_train(c)
