"""Training pieces: epoch-wise batches, masked evaluation, optimizers, train_and_score."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from nas_jax.train.steps import (
    RECIPE_FIELDS,
    Recipe,
    cross_entropy,
    draw_batch,
    evaluate,
    recipe_from_config,
    train_and_score,
    value_and_grad_params,
)

KEY = jax.random.key(0)


@functools.partial(jax.jit, static_argnums=(3, 4))
def batches(key, x, y, batch_size, num_steps):
    return jax.vmap(lambda i: draw_batch(key, i, x, y, batch_size))(jnp.arange(num_steps))


def test_each_example_once_per_epoch():
    x = jnp.arange(12)
    bx, by = batches(KEY, x, 10 * x, 4, 9)  # 3 epochs of 3 batches
    assert bx.shape == (9, 4)
    np.testing.assert_array_equal(by, 10 * bx)  # inputs and labels stay paired
    epochs = np.asarray(bx).reshape(3, 12)
    for e in epochs:
        np.testing.assert_array_equal(np.sort(e), np.arange(12))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], np.arange(12))  # shuffled
    other, _ = batches(jax.random.key(1), x, x, 4, 9)
    assert not np.array_equal(other, bx)
    again, _ = batches(KEY, x, x, 4, 9)
    np.testing.assert_array_equal(again, bx)


def test_partial_last_batch_is_dropped_without_repeats():
    x = jnp.arange(10)
    bx, _ = batches(KEY, x, x, 4, 6)  # 2 full batches per epoch
    for e in np.asarray(bx).reshape(3, 8):
        assert len(set(e.tolist())) == 8
    assert len(set(np.asarray(bx).ravel().tolist())) == 10  # every example gets its turn


def test_batch_larger_than_the_data():
    x = jnp.arange(5)
    bx, _ = batches(KEY, x, x, 8, 2)
    assert bx.shape == (2, 5)
    for e in np.asarray(bx):
        np.testing.assert_array_equal(np.sort(e), np.arange(5))


def linear_apply(params, stats, x, train):
    del train
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"], stats


@pytest.mark.parametrize("batch_size", [3, 10, 64])
def test_evaluate_matches_full_batch(batch_size):
    kx, ky, kw = jax.random.split(KEY, 3)
    x = jax.random.normal(kx, (10, 2, 2, 1))
    y = jax.random.randint(ky, (10,), 0, 3)
    params = {"w": jax.random.normal(kw, (4, 3)), "b": jnp.array([0.1, -0.2, 0.0])}
    logits, _ = linear_apply(params, {}, x, False)
    expected_acc = float(jnp.mean(jnp.argmax(logits, -1) == y))
    expected_loss = float(cross_entropy(logits, y))
    assert 0.0 < expected_acc < 1.0
    ev = jax.jit(evaluate, static_argnums=(0, 4))
    out = ev(linear_apply, params, {}, (x, y), batch_size)
    np.testing.assert_allclose(out["valid_accuracy"], expected_acc, rtol=1e-6)
    np.testing.assert_allclose(out["valid_loss"], expected_loss, rtol=1e-5)


def test_make_optimizer_rejects_unknown_names():
    with pytest.raises(ValueError, match="Recipe.optimizer='rmsprop'; allowed: sgd, adam"):
        Recipe(optimizer="rmsprop").make_optimizer()
    for name in ("sgd", "adam"):
        assert isinstance(Recipe(optimizer=name).make_optimizer(), optax.GradientTransformation)
    hash(Recipe())


def test_sgd_schedule_clip_and_weight_decay():
    recipe = Recipe(steps=10, optimizer="sgd", learning_rate=0.1, min_learning_rate=0.01,
                    momentum=0.0, weight_decay=0.0, grad_clip=0.0)
    tx = recipe.make_optimizer()
    p = {"w": jnp.ones(3)}
    g = {"w": jnp.array([1.0, -2.0, 0.5])}
    state = tx.init(p)
    first, state = tx.update(g, state, p)
    np.testing.assert_allclose(first["w"], -0.1 * g["w"], rtol=1e-6)
    for _ in range(9):
        _, state = tx.update(g, state, p)
    last, _ = tx.update(g, state, p)  # cosine-decayed to the minimum after `steps`
    np.testing.assert_allclose(last["w"], -0.01 * g["w"], rtol=1e-5)
    # Clipping by global norm bounds the step; weight decay pulls towards zero.
    clip = Recipe(steps=10, learning_rate=1.0, momentum=0.0, weight_decay=0.0, grad_clip=1.0)
    tx = clip.make_optimizer()
    up, _ = tx.update({"w": jnp.array([30.0, 40.0, 0.0])}, tx.init(p), p)
    np.testing.assert_allclose(up["w"], [-0.6, -0.8, 0.0], rtol=1e-5)
    wd = Recipe(steps=10, learning_rate=1.0, momentum=0.0, weight_decay=0.1, grad_clip=0.0)
    tx = wd.make_optimizer()
    up, _ = tx.update({"w": jnp.zeros(3)}, tx.init(p), p)
    np.testing.assert_allclose(up["w"], -0.1 * p["w"], rtol=1e-6)


def test_recipe_from_config_takes_known_fields():
    cfg = ml_collections.ConfigDict(dict(steps=7, learning_rate=0.2, name="population",
                                         execution="loop"))
    assert recipe_from_config(cfg) == Recipe(steps=7, learning_rate=0.2)
    assert set(RECIPE_FIELDS) == set(Recipe.__dataclass_fields__)


def blobs(key, n):
    """Two well separated Gaussian blobs in 4 dimensions, as (n, 2, 2, 1) 'images'."""
    ky, kx = jax.random.split(key)
    y = jax.random.randint(ky, (n,), 0, 2)
    x = jax.random.normal(kx, (n, 4)) * 0.5 + jnp.where(y[:, None] == 1, 1.5, -1.5)
    return x.reshape(n, 2, 2, 1), y


RECIPE = Recipe(steps=30, batch_size=16, optimizer="sgd", learning_rate=0.2, weight_decay=0.0,
                eval_batch_size=24)


@functools.partial(jax.jit, static_argnums=(0, 5))
def train_linear(apply, key, train_xy, valid_xy, params, recipe):
    return train_and_score(apply, params, {}, key, train_xy, valid_xy, recipe)


def test_train_and_score_learns_and_flags_non_finite():
    train_xy, valid_xy = blobs(jax.random.key(1), 64), blobs(jax.random.key(2), 40)
    params = {"w": jnp.zeros((4, 2)), "b": jnp.zeros(2)}
    out = train_linear(linear_apply, KEY, train_xy, valid_xy, params, RECIPE)
    assert set(out) == {"valid_accuracy", "valid_loss", "train_loss", "finite"}
    assert bool(out["finite"])
    assert float(out["valid_accuracy"]) > 0.9
    assert float(out["train_loss"]) < 0.5 * np.log(2)
    again = train_linear(linear_apply, KEY, train_xy, valid_xy, params, RECIPE)
    assert jax.tree.map(float, again) == jax.tree.map(float, out)
    # NaN in the training data, or in the validation data, marks the run as not finite.
    bad_x = train_xy[0].at[3].set(jnp.nan)
    out = train_linear(linear_apply, KEY, (bad_x, train_xy[1]), valid_xy, params, RECIPE)
    assert not bool(out["finite"])
    bad_valid = (valid_xy[0].at[0].set(jnp.nan), valid_xy[1])
    out = train_linear(linear_apply, KEY, train_xy, bad_valid, params, RECIPE)
    assert not bool(out["finite"])


def _mixture_loss(p, w, s):
    """A toy supernet loss: two "ops" on x mixed by ``w``; aux carries ``s`` through."""
    x = jnp.array([1.0, -2.0, 0.5])
    out = w[0] * jnp.tanh(p["a"] * x) + w[1] * p["b"] * x
    return jnp.sum(out ** 2), s


def test_value_and_grad_params_equals_value_and_grad():
    params = {"a": jnp.array(0.3), "b": jnp.array(-1.2)}
    w = jnp.array([0.25, 0.75])
    (loss, aux), grads = value_and_grad_params(_mixture_loss, params, w, "stats")
    (ref, _), ref_grads = jax.value_and_grad(_mixture_loss, has_aux=True)(params, w, "stats")
    assert aux == "stats"
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    for name in params:
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-6)
    # Without an architecture input (standalone networks): the plain gradient.
    (loss, _), grads = value_and_grad_params(lambda p, w, s: (jnp.sum(p["a"] ** 2), s),
                                             params, None, 0)
    np.testing.assert_allclose(loss, 0.09, rtol=1e-6)
    np.testing.assert_allclose(grads["a"], 0.6, rtol=1e-6)


def test_value_and_grad_params_flags_a_non_finite_mixture_gradient():
    params = {"a": jnp.array(0.3), "b": jnp.array(-1.2)}

    def loss_fn(p, w, s):  # d/dw of sqrt(w) at 0 is inf; the loss and p-gradient are finite
        return jnp.sqrt(w[0]) + p["a"] ** 2, s

    (loss, _), grads = value_and_grad_params(loss_fn, params, jnp.array([0.0, 1.0]), None)
    assert np.isnan(float(loss))
    np.testing.assert_allclose(grads["a"], 0.6, rtol=1e-6)
    (loss, _), _ = value_and_grad_params(loss_fn, params, jnp.array([0.25, 1.0]), None)
    np.testing.assert_allclose(loss, 0.5 + 0.09, rtol=1e-6)


def test_params_finite_checks_every_leaf():
    from nas_jax.train.steps import params_finite

    params = {"a": jnp.ones((2, 3)), "b": [jnp.zeros(4), jnp.ones(())]}
    assert bool(params_finite(params)) and bool(params_finite({}))
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        assert not bool(params_finite({**params, "b": [jnp.zeros(4).at[2].set(bad),
                                                       jnp.ones(())]}))
    assert not bool(jax.jit(params_finite)({**params, "c": jnp.array(jnp.nan)}))
