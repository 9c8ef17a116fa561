"""Tests for nas_jax.utils.checkpoint: round trips, retention, and crash safety."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from nas_jax.utils.checkpoint import Checkpointer

TMP_SUFFIX = ".orbax-checkpoint-tmp"


@struct.dataclass
class _State:
    params: jax.Array
    count: jax.Array
    name: str = struct.field(pytree_node=False, default="s")


def _tree(seed: int = 0):
    return {
        "key": jax.random.key(seed),
        "keys": jax.random.split(jax.random.key(seed + 1), 3),
        "pair": (jnp.arange(3, dtype=jnp.int32) + seed, jnp.full((2, 2), 0.5 + seed, jnp.float32)),
        "nested": {"a": {"b": jnp.float32(seed)}, "np": np.arange(4, dtype=np.int32)},
        "state": _State(params=jnp.ones(3, jnp.float32) * seed, count=jnp.int32(seed)),
        "step": seed,
        "lr": 0.1 * seed,
        "npscalar": np.float32(seed + 0.25),
    }


def _assert_tree_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert type(g) is type(w), (type(g), type(w))
        if isinstance(w, jax.Array) and jnp.issubdtype(w.dtype, jax.dtypes.prng_key):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(jax.random.key_data(g), jax.random.key_data(w))
        elif isinstance(w, (jax.Array, np.ndarray, np.generic)):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
        else:
            assert g == w


def test_round_trip_keeps_types(tmp_path):
    tree = _tree(3)
    with Checkpointer(tmp_path / "ck") as ck:
        assert ck.latest_step() is None
        assert ck.save(5, tree)
        got = ck.restore(_tree(0))
    _assert_tree_equal(got, tree)
    assert isinstance(got["pair"], tuple)
    assert isinstance(got["state"], _State)
    # The typed key still works as a key after the round trip.
    np.testing.assert_array_equal(
        jax.random.normal(got["key"], (2,)), jax.random.normal(tree["key"], (2,))
    )


def test_restore_from_abstract_like(tmp_path):
    tree = _tree(2)
    with Checkpointer(tmp_path) as ck:
        ck.save(1, tree)
    with Checkpointer(tmp_path) as ck:
        got = ck.restore(jax.eval_shape(lambda: _tree(0)))
    np.testing.assert_array_equal(jax.random.key_data(got["key"]), jax.random.key_data(tree["key"]))
    np.testing.assert_array_equal(got["pair"][1], tree["pair"][1])


def test_latest_max_to_keep_and_specific_step(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=2) as ck:
        for step in range(4):
            assert ck.save(step, _tree(step), meta={"step": step})
        assert ck.latest_step() == 3
        assert ck.all_steps() == [2, 3]
        _assert_tree_equal(ck.restore(_tree(0), step=2), _tree(2))
        with pytest.raises(FileNotFoundError):
            ck.restore(_tree(0), step=0)
    assert sorted(os.listdir(tmp_path)) == ["2", "3"]


def test_save_interval_force_and_existing_step(tmp_path):
    with Checkpointer(tmp_path, save_interval_steps=5) as ck:
        assert ck.save(2, _tree(2))  # The first save into an empty directory is always written.
        assert not ck.save(3, _tree(3))
        assert ck.save(4, _tree(4), force=True)
        assert ck.save(5, _tree(5))
        assert not ck.save(5, _tree(6), force=True)  # never overwrites a step on disk
        _assert_tree_equal(ck.restore(_tree(0)), _tree(5))
        assert ck.all_steps() == [4, 5]


def test_meta_round_trip(tmp_path):
    history = [{"step": 0, "acc": np.float32(0.5), "loss": float("nan")}, {"step": 1, "acc": 0.75}]
    with Checkpointer(tmp_path) as ck:
        ck.save(1, _tree(1), meta={"history": history, "best": jnp.float32(0.75)})
        tree, meta = ck.restore(_tree(0), with_meta=True)
    _assert_tree_equal(tree, _tree(1))
    assert meta["best"] == 0.75
    assert meta["history"][0]["acc"] == 0.5 and np.isnan(meta["history"][0]["loss"])
    assert meta["history"][1] == {"step": 1, "acc": 0.75}


def test_empty_directory_restore_raises(tmp_path):
    with Checkpointer(tmp_path / "none") as ck, pytest.raises(FileNotFoundError):
        ck.restore(_tree(0))


def test_leftover_tmp_dir_is_ignored_and_removed(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(1, _tree(1), meta={"step": 1})
    # What a save killed half-way leaves: the next step's tmp dir with a partial item inside.
    partial = tmp_path / f"2{TMP_SUFFIX}" / f"state{TMP_SUFFIX}"
    partial.mkdir(parents=True)
    (partial / "_METADATA").write_text("{trunc")
    with Checkpointer(tmp_path) as ck:
        assert ck.latest_step() == 1
        tree, meta = ck.restore(_tree(0), with_meta=True)
        _assert_tree_equal(tree, _tree(1))
        assert meta == {"step": 1}
        assert ck.save(2, _tree(2), meta={"step": 2})  # the same step saves cleanly again
        _assert_tree_equal(ck.restore(_tree(0)), _tree(2))
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


_CHILD = textwrap.dedent(
    """
    import sys
    import jax.numpy as jnp
    from nas_jax.utils.checkpoint import Checkpointer

    ck = Checkpointer(sys.argv[1], max_to_keep=2)
    start = (ck.latest_step() or 0) + 1
    for step in range(start, start + 1000):
        tree = {"w": jnp.full((N,), step, jnp.float32), "step": jnp.int32(step)}
        ck.save(step, tree, meta={"step": step})
        print(step, flush=True)
    """
)
_N = 4_000_000  # 16 MB per save: slow enough that a kill often lands inside a save.


def _run_and_kill(script, directory, min_saves):
    """Starts the saving child, waits for `min_saves` saves, kills it mid-save; returns steps."""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    saved = []
    try:
        while len(saved) < min_saves:
            line = proc.stdout.readline()
            assert line, "child exited before saving"
            saved.append(int(line))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:  # Aim the kill at a moment a tmp dir exists.
            if any(TMP_SUFFIX in n for n in os.listdir(directory)):
                break
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return saved + [int(s) for s in out.split()]


def test_sigkill_during_save_leaves_last_complete_step(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD.replace("(N,)", f"({_N},)"))
    directory = tmp_path / "ck"
    like = {"w": jnp.zeros((_N,), jnp.float32), "step": jnp.int32(0)}
    for _ in range(2):  # The second child resumes over whatever the first one left behind.
        reported = _run_and_kill(script, directory, min_saves=2)
        with Checkpointer(directory) as ck:
            latest = ck.latest_step()
            # The child may die after the rename but before printing: latest >= last reported.
            assert latest in (reported[-1], reported[-1] + 1)
            tree, meta = ck.restore(like, with_meta=True)
            assert int(tree["step"]) == latest and meta == {"step": latest}
            np.testing.assert_array_equal(np.asarray(tree["w"]), np.full(_N, latest, np.float32))
        assert not any(TMP_SUFFIX in n for n in os.listdir(directory))


def test_zero_size_leaves_round_trip(tmp_path):
    """orbax cannot write a zero-size array: such leaves are not stored and come back from
    `like` with their shape and dtype (e.g. a baseline learner's empty architecture)."""
    tree = {"w": jnp.arange(3.0), "alpha": jnp.zeros((0,), jnp.float32),
            "host": np.zeros((2, 0), np.int32)}
    with Checkpointer(str(tmp_path)) as ckpt:
        assert ckpt.save(1, tree, force=True)
        ckpt.wait()
        abstract = ckpt.restore(jax.eval_shape(lambda: tree), 1)
        concrete = ckpt.restore(tree, 1)
    for restored in (abstract, concrete):
        np.testing.assert_array_equal(restored["w"], tree["w"])
        assert restored["alpha"].shape == (0,) and restored["alpha"].dtype == jnp.float32
        assert restored["host"].shape == (2, 0) and restored["host"].dtype == np.int32
    assert isinstance(concrete["host"], np.ndarray)
