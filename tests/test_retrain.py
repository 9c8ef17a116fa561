"""Retraining: augmentation, DARTS drop-path and auxiliary head, config errors, and a run that
is killed and resumed ends with the same numbers and metrics as an uninterrupted one."""

import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nas_jax import ops, registry, retrain
from nas_jax.config import ConfigError
from nas_jax.evaluators.population import init_candidate, network_graphdef
from nas_jax.retrain import (
    RetrainProgram,
    RetrainSpec,
    count_params,
    resolve_arch,
    retrain_config,
    run_retrain,
    validate_retrain_config,
)
from nas_jax.spaces.darts import DARTS_V2, DartsSpace
from nas_jax.supernet import darts as darts_module
from nas_jax.supernet.darts import DartsNetwork, drop_path
from nas_jax.train.augment import cutout, random_crop, random_flip
from nas_jax.utils.metrics import read_jsonl


@pytest.fixture(scope="module", autouse=True)
def non_partitionable_threefry():
    """Network inits compile several times faster with the non-partitionable threefry."""
    with jax.threefry_partitionable(False):
        yield


# ------------------------------------------------------------------ augmentation
def test_cutout_zeroes_one_square_clipped_at_the_borders():
    size, h, w = 4, 12, 10
    x = jnp.ones((128, h, w, 2))
    out = np.asarray(jax.jit(cutout, static_argnums=2)(jax.random.key(0), x, size))
    assert np.array_equal(out[..., 0], out[..., 1])  # the same square in every channel
    full = 0
    for img in out[..., 0]:
        rows = np.flatnonzero((img == 0).any(1))
        cols = np.flatnonzero((img == 0).any(0))
        assert len(rows) and len(cols)
        # One rectangle: contiguous rows and columns, every cell in it zero, nothing outside.
        assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))
        assert np.array_equal(cols, np.arange(cols[0], cols[-1] + 1))
        assert (img == 0).sum() == len(rows) * len(cols)
        assert set(np.unique(img)) == {0.0, 1.0}
        # Side `size`, unless the square is cut by a border.
        assert len(rows) == size or rows[0] == 0 or rows[-1] == h - 1
        assert len(cols) == size or cols[0] == 0 or cols[-1] == w - 1
        assert len(rows) <= size and len(cols) <= size
        full += (len(rows), len(cols)) == (size, size)
    assert full > 20  # interior centres: (h - 3)(w - 3) / (h w) of examples, ~50% here


def test_random_crop_is_a_shifted_window_and_flip_mirrors():
    x = jnp.arange(16 * 5 * 6 * 2, dtype=jnp.float32).reshape(16, 5, 6, 2)
    fill = jnp.array([-1.0, -2.0])

    @jax.jit
    def both(key):
        k1, k2 = jax.random.split(key)
        return random_crop(k1, x, 2, fill), random_flip(k2, x)

    crops, flips = map(np.asarray, both(jax.random.key(1)))
    canvas = np.broadcast_to(np.asarray(fill), (16, 9, 10, 2)).copy()
    canvas[:, 2:7, 2:8] = np.asarray(x)
    offsets = set()
    for i in range(16):
        found = [(a, b) for a in range(5) for b in range(5)
                 if np.array_equal(crops[i], canvas[i, a:a + 5, b:b + 6])]
        assert found, f"example {i} is no window of the padded image"
        offsets.add(found[0])
    assert len(offsets) > 3
    mirrored = [np.array_equal(flips[i], np.asarray(x)[i, :, ::-1]) for i in range(16)]
    kept = [np.array_equal(flips[i], np.asarray(x)[i]) for i in range(16)]
    assert all(m != k for m, k in zip(mirrored, kept)) and 0 < sum(mirrored) < 16


# --------------------------------------------------------------- drop-path
def test_drop_path_keeps_each_example_with_prob_keep_and_rescales():
    x = jnp.ones((4000, 2, 2, 3))
    fn = jax.jit(drop_path)
    out = np.asarray(fn(jax.random.key(2), x, 0.3))
    per_example = out.reshape(4000, -1)
    assert np.all(per_example == per_example[:, :1])  # one draw per example
    assert set(np.unique(out)) == {0.0, np.float32(1.0) / np.float32(0.7)}
    kept = (per_example[:, 0] > 0).mean()
    assert abs(kept - 0.7) < 4 * np.sqrt(0.7 * 0.3 / 4000)
    assert abs(out.mean() - 1.0) < 0.05  # unbiased
    np.testing.assert_array_equal(fn(jax.random.key(2), x * 3.0, 0.0), x * 3.0)
    other = np.asarray(fn(jax.random.key(3), x, 0.3)).reshape(4000, -1)[:, 0] > 0
    assert (other != (per_example[:, 0] > 0)).any()  # the key decides


SMALL = DartsSpace(channels=2, num_cells=1, input_shape=(8, 8, 1), num_classes=3)  # 1 reduce cell


def test_drop_path_in_the_darts_network(monkeypatch):
    arch = SMALL.from_string(DARTS_V2)
    options = {"depthwise_impl": "xla"}
    graphdef = network_graphdef(SMALL, tuple(arch), **options)
    params, stats, _ = jax.jit(functools.partial(init_candidate, SMALL, tuple(arch), **options))(
        jax.random.key(0))
    state = nnx.merge_state(params, stats)
    x = jax.random.normal(jax.random.key(4), (6, 8, 8, 1))

    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
    def outputs(state, key, p):
        def call(**kw):
            return nnx.merge(graphdef, state, copy=True)(x, train=True, **kw)

        return call(), call(drop_path_prob=p, key=key)

    plain, zero = outputs(state, jax.random.key(5), jnp.float32(0.0))
    # Traced probability 0: the identity (up to XLA fusing the two calls differently).
    np.testing.assert_allclose(zero, plain, rtol=1e-5, atol=1e-6)
    _, dropped = outputs(state, jax.random.key(5), jnp.float32(0.9))
    assert np.all(np.isfinite(dropped)) and not np.allclose(dropped, plain)
    with pytest.raises(ValueError, match="needs key="):
        nnx.merge(graphdef, state)(x, train=True, drop_path_prob=0.2)
    g_super, s_super = nnx.split(nnx.eval_shape(lambda: DartsNetwork(SMALL, rngs=ops.ParamKeys(0))))
    with pytest.raises(ValueError, match="supernet takes no key"):
        jax.eval_shape(lambda s: nnx.merge(g_super, s)(x, jnp.zeros((32, 8)),
                                                        key=jax.random.key(0)), s_super)

    # Which ops get a mask: every op but the stride-1 skip_connect (an identity), in train
    # mode only. DARTS-V2 in 3 cells: normal cell 6 of 8, each reduce cell 5 of 8.
    calls = []
    real = darts_module.drop_path
    monkeypatch.setattr(darts_module, "drop_path",
                        lambda k, h, p: calls.append(h.shape) or real(k, h, p))
    three = DartsSpace(channels=2, num_cells=3, input_shape=(8, 8, 1), num_classes=3)
    g3, s3 = nnx.split(nnx.eval_shape(lambda: DartsNetwork(three, arch, rngs=ops.ParamKeys(0))))
    for train, expected in ((True, 16), (False, 0)):
        calls.clear()
        jax.eval_shape(lambda s, train=train: nnx.merge(g3, s)(
            x, train=train, drop_path_prob=0.5, key=jax.random.key(0)), s3)
        assert len(calls) == expected


# ------------------------------------------------------------ auxiliary head
@pytest.mark.parametrize("side,grid", [(32, 1), (64, 3)])
def test_auxiliary_head_shapes_and_parameter_count(side, grid):
    space = DartsSpace(channels=2, num_cells=3, input_shape=(side, side, 3), num_classes=5)
    arch = space.from_string(DARTS_V2)
    model = nnx.eval_shape(lambda: DartsNetwork(space, arch, auxiliary=True, rngs=ops.ParamKeys(0)))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    net, aux = count_params(params)
    assert net == space.num_params(arch)
    c = 4 * 4 * 2  # 4 nodes x (C doubled twice) after the second reduction cell
    assert aux == c * 128 + 2 * 128 + 128 * 768 * 4 + 2 * 768 + 768 * grid * grid * 5 + 5

    def call(p, s, train):
        return nnx.merge(graphdef, p, s)(jnp.zeros((4, side, side, 3)), train=train)

    logits, aux_logits = jax.eval_shape(functools.partial(call, train=True), params, stats)
    assert logits.shape == aux_logits.shape == (4, 5)
    eval_logits = jax.eval_shape(functools.partial(call, train=False), params, stats)
    assert eval_logits.shape == (4, 5)  # eval mode: the main logits only


def test_auxiliary_head_errors():
    arch = SMALL.from_string(DARTS_V2)
    with pytest.raises(ValueError, match="at least 8x8"):
        nnx.eval_shape(lambda: DartsNetwork(SMALL, arch, auxiliary=True, rngs=ops.ParamKeys(0)))
    with pytest.raises(ValueError, match="needs a standalone"):
        nnx.eval_shape(lambda: DartsNetwork(SMALL, auxiliary=True, rngs=ops.ParamKeys(0)))


# ------------------------------------------------------------------- config
def tiny_config(**train):
    c = retrain_config()
    c.space.name = "mlp"
    c.arch = "mlp(32,relu)"
    c.train.update({"steps": 6, "batch_size": 32, "learning_rate": 0.05,
                    "eval_batch_size": 200, **train})
    c.log_every_steps = 1
    c.eval_every_steps = 3
    c.checkpoint.every_steps = 2
    c.runtime.compilation_cache_dir = ""
    c.runtime.progress_interval_s = 0.0
    return c


def _set(c, field, value):
    *sections, name = field.split(".")
    for s in sections:
        c = c[s]
    c[name] = value


@pytest.mark.parametrize("changes,field", [
    ({"arch": ""}, "config.arch / config.arch_from"),
    ({"arch_from": "/somewhere"}, "config.arch / config.arch_from"),
    ({"arch": "mlp(33,relu)"}, "config.arch="),
    ({"train.epochs": 3}, "config.train.steps=6, config.train.epochs=3"),
    ({"train.batch_size": 0}, "config.train.batch_size"),
    ({"train.cutout": -1}, "config.train.cutout"),
    ({"train.drop_path_prob": 0.2}, "config.train.drop_path_prob=0.2: DARTS networks only"),
    ({"train.auxiliary_weight": 0.4}, "config.train.auxiliary_weight=0.4: DARTS networks only"),
    ({"space.name": "darts", "arch": DARTS_V2, "train.drop_path_prob": 1.0},
     "config.train.drop_path_prob=1.0: must be in [0, 1)"),
    ({"dataset.name": "imagenet"}, "config.dataset.name"),
    ({"checkpoint.every_steps": 0}, "config.checkpoint.every_steps"),
    ({"space.name": "nope"}, "config.space.name"),
])
def test_config_errors_name_the_field(changes, field):
    c = tiny_config()
    for k, v in changes.items():
        _set(c, k, v)
    with pytest.raises(ConfigError, match=re.escape(field)):
        validate_retrain_config(c)


def test_unknown_field_and_missing_search_result(tmp_path):
    c = tiny_config()
    with c.unlocked():
        c.train.lr = 0.1
    with pytest.raises(ConfigError, match="config.train.lr: unknown field"):
        validate_retrain_config(c)
    c = tiny_config()
    c.arch, c.arch_from = "", str(tmp_path)
    with pytest.raises(ConfigError, match="config.arch_from=.*no best_architecture.json"):
        validate_retrain_config(c)
    (tmp_path / "best_architecture.json").write_text(json.dumps({"space": "nb201",
                                                                 "arch": [0] * 6}))
    with pytest.raises(ConfigError, match="ran space 'nb201'"):
        validate_retrain_config(c)
    space = registry.SPACES.build("mlp", c.space, input_shape=(8, 8, 1))
    arch = space.from_string("mlp(64,tanh|32,relu)")
    (tmp_path / "best_architecture.json").write_text(json.dumps({"space": "mlp",
                                                                 "arch": arch.tolist()}))
    validate_retrain_config(c)
    np.testing.assert_array_equal(resolve_arch(c, space), arch)


# -------------------------------------------------------------- runs, resume
class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    return workdir, run_retrain(tiny_config(), str(workdir))


def _without_time(result):
    return {k: v for k, v in result.items() if k != "seconds"}


def test_result_file(uninterrupted):
    workdir, result = uninterrupted
    with open(os.path.join(workdir, "retrain.json")) as f:
        assert json.load(f) == result
    assert result["num_params"] == result["num_params_space"] == 64 * 32 + 32 + 32 * 10 + 10
    assert result["aux_params"] == 0 and result["steps"] == 6 and result["finite"]
    assert result["flops"] > 0 and 0 <= result["test_accuracy"] <= 1
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 6]
    assert "valid_accuracy" in rows[2] and "valid_accuracy" not in rows[1]
    assert rows[-1]["test_accuracy"] == result["test_accuracy"]
    assert rows[0]["learning_rate"] == pytest.approx(0.05)
    assert rows[5]["learning_rate"] == pytest.approx(0.05 * 0.5 * (1 + np.cos(np.pi * 5 / 6)))


def test_killed_and_resumed_run_ends_identically(uninterrupted, tmp_path, monkeypatch,
                                                capsys):
    full_dir, full = uninterrupted
    update = retrain.Progress.update

    def die_at_5(self, step, metrics=None):
        if step == 5:
            raise Killed  # after step 5's metrics, one step past the checkpoint at 4
        return update(self, step, metrics)

    monkeypatch.setattr(retrain.Progress, "update", die_at_5)
    with pytest.raises(Killed):
        run_retrain(tiny_config(), str(tmp_path))
    monkeypatch.setattr(retrain.Progress, "update", update)
    capsys.readouterr()
    resumed = run_retrain(tiny_config(), str(tmp_path))
    assert "from step 4/6" in capsys.readouterr().err  # the checkpoint before the kill
    assert _without_time(resumed) == _without_time(full)
    metrics = read_jsonl
    assert metrics(tmp_path / "metrics.jsonl") == metrics(full_dir / "metrics.jsonl")
    # A finished run started again trains nothing and reports the same.
    again = run_retrain(tiny_config(), str(tmp_path))
    assert _without_time(again) == _without_time(full)
    assert metrics(tmp_path / "metrics.jsonl") == metrics(full_dir / "metrics.jsonl")
    changed = tiny_config()
    changed.train.learning_rate = 0.1
    with pytest.raises(ConfigError, match="config.train: differs from the run"):
        run_retrain(changed, str(tmp_path))


# ------------------------------------------------------ DARTS training (opt-in)
@pytest.mark.skipif(not os.environ.get("NAS_JAX_SLOW_TESTS"),
                    reason="compiles a DARTS training step with auxiliary head (~60 s on 2 "
                    "busy cores); set NAS_JAX_SLOW_TESTS=1")
def test_darts_step_with_auxiliary_head_and_drop_path():
    space = DartsSpace(channels=2, num_cells=3, input_shape=(32, 32, 3), num_classes=4)
    spec = RetrainSpec(space=space, arch=tuple(int(a) for a in space.from_string(DARTS_V2)),
                       steps=4, steps_per_epoch=2, batch_size=8, learning_rate=0.025,
                       momentum=0.9, nesterov=False, weight_decay=3e-4, grad_clip=5.0,
                       eval_batch_size=8, crop_padding=4, flip=True, cutout=16,
                       crop_fill=(0.0, 0.0, 0.0), drop_path_prob=0.2, auxiliary_weight=0.4)
    program = RetrainProgram(spec)
    x = jax.random.normal(jax.random.key(0), (16, 32, 32, 3))
    y = jnp.arange(16) % 4
    params, stats, opt, k_data = program.init(jax.random.key(1))
    head = np.asarray(params["auxiliary_head"]["conv1"]["kernel"][...])
    sums = jnp.zeros(3)
    for i in range(2):
        params, stats, opt, sums = program.step(params, stats, opt, sums, i, k_data, x, y)
    assert np.isfinite(np.asarray(sums)).all() and float(sums[2]) == 2
    assert not np.allclose(head, params["auxiliary_head"]["conv1"]["kernel"][...])
    scores = program.evaluate(params, stats, x, y)
    assert 0 <= scores["accuracy"] <= 1 and np.isfinite(scores["loss"])
