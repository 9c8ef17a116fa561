"""Tests for nas_jax.utils.metrics: JSONL, config, truncation, TensorBoard, progress."""

import io
import json
import os
import struct

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from nas_jax.utils.metrics import MetricWriter, Progress, read_jsonl, to_python


def test_jsonl_content_and_types(tmp_path):
    with MetricWriter(tmp_path, enabled=True) as w:
        w.write(
            0,
            {
                "loss": jnp.float32(0.5),
                "n": np.int64(3),
                "acc": 0.25,
                "ok": np.bool_(True),
                "h": jnp.bfloat16(2),
            },
        )
        w.write(np.int32(1), {"loss": float("nan"), "best": jnp.array([np.inf]), "arch": "a|b"})
        # Flushed per write: readable before close.
        assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 2
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # Strict JSON per line.
    assert records[0] == {"step": 0, "loss": 0.5, "n": 3, "acc": 0.25, "ok": True, "h": 2.0}
    assert type(records[0]["n"]) is int and type(records[0]["loss"]) is float
    assert records[1] == {"step": 1, "loss": None, "best": None, "arch": "a|b"}
    assert "NaN" not in lines[1] and "Infinity" not in lines[1]


def test_write_rejects_non_scalars(tmp_path):
    with MetricWriter(tmp_path, enabled=True) as w:
        with pytest.raises(ValueError, match="vec"):
            w.write(0, {"vec": np.zeros(3)})
        with pytest.raises(ValueError, match="step"):
            w.write(0, {"step": 1})


def test_appends_across_writers_and_drops_torn_line(tmp_path):
    with MetricWriter(tmp_path, enabled=True) as w:
        w.write(0, {"a": 1})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 1, "a"')  # A write cut short by a kill.
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 0, "a": 1}]
    with MetricWriter(tmp_path, enabled=True) as w:
        w.write(1, {"a": 2})
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 0, "a": 1}, {"step": 1, "a": 2}]


def test_read_jsonl_rejects_bad_middle_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_jsonl(path)


def test_config_round_trip(tmp_path):
    config = ml_collections.ConfigDict(
        {"seed": 0, "lr": np.float32(0.5), "space": {"name": "nb201", "shape": (3, 4)}, "b": True}
    )
    with MetricWriter(tmp_path, enabled=True) as w:
        w.write_config(config)
    text = (tmp_path / "config.json").read_text()
    loaded = json.loads(text)
    assert loaded == {"b": True, "lr": 0.5, "seed": 0, "space": {"name": "nb201", "shape": [3, 4]}}
    assert list(loaded) == sorted(loaded) and "\n  " in text
    assert ml_collections.ConfigDict(loaded).space.name == "nb201"


def test_truncate_after(tmp_path):
    with MetricWriter(tmp_path, enabled=True) as w:
        for step in range(6):
            w.write(step, {"x": step})
    with MetricWriter(tmp_path, enabled=True) as w:  # A resumed run from the step-3 checkpoint.
        w.truncate_after(3)
        assert [r["step"] for r in read_jsonl(w.path)] == [0, 1, 2, 3]
        w.write(4, {"x": 40})
    assert read_jsonl(tmp_path / "metrics.jsonl")[-1] == {"step": 4, "x": 40}
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_disabled_writer_writes_nothing(tmp_path):
    workdir = tmp_path / "w"
    with MetricWriter(workdir, enabled=False) as w:
        w.write(0, {"a": 1.0})
        w.write_config({"a": 1})
        w.truncate_after(0)
    assert not workdir.exists()


def test_tensorboard_event_file(tmp_path):
    with MetricWriter(tmp_path, enabled=True) as w:
        w.write(0, {"loss": 1.0, "note": "text is JSONL only"})
        w.write(1, {"loss": 0.5})
    events = [n for n in os.listdir(tmp_path / "tb") if n.startswith("events.out.tfevents")]
    assert events and os.path.getsize(tmp_path / "tb" / events[0]) > 0


def _events(path):
    """Yields (step, kind) for each record of a TensorBoard event file."""
    data = path.read_bytes()
    i = 0
    while i < len(data):
        (size,) = struct.unpack("<Q", data[i : i + 8])
        event = event_pb2.Event.FromString(data[i + 12 : i + 12 + size])
        yield event.step, event.WhichOneof("what")
        i += 12 + size + 4


def test_tensorboard_reopen_keeps_events_and_marks_purge(tmp_path):
    with MetricWriter(tmp_path, enabled=True) as w:
        for step in range(5):
            w.write(step, {"x": step})
    with MetricWriter(tmp_path, enabled=True) as w:  # Same second: must not overwrite the file.
        w.truncate_after(2)
        w.write(3, {"x": 30})
    files = sorted((tmp_path / "tb").iterdir())
    assert len(files) == 2
    first, second = (list(_events(f)) for f in files)
    assert [step for step, kind in first if kind == "summary"] == [0, 1, 2, 3, 4]
    assert (3, "session_log") in second and (3, "summary") in second


def test_to_python():
    inner = ml_collections.ConfigDict({"x": 1})
    got = to_python({"a": np.arange(2), "b": (jnp.float32(1.5), np.nan), 3: np.int8(2), "c": inner})
    assert got == {"a": [0, 1], "b": [1.5, None], "3": 2, "c": {"x": 1}}


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_rate_limit_and_eta():
    clock, out = _Clock(), io.StringIO()
    progress = Progress(100, interval_s=10.0, name="search", stream=out, clock=clock)
    clock.t = 5.0
    first = progress.update(10, {"loss": np.float32(0.123456), "gen": 2})
    assert first == "search: step 10/100 (10.0%), elapsed 0:00:05, ETA 0:00:45, loss=0.1235, gen=2"
    clock.t = 9.0
    assert progress.update(15) is None  # Within interval_s of the last line.
    clock.t = 20.0
    assert progress.update(40) is not None
    clock.t = 20.5
    assert progress.update(100) is not None  # The last step always prints.
    assert out.getvalue().count("\n") == 3


def test_progress_resumed_start_and_zero_work():
    clock, out = _Clock(), io.StringIO()
    progress = Progress(10, start=5, stream=out, clock=clock)
    assert "ETA ?" in progress.update(5)
    clock.t = 100.0
    assert "ETA 0:00:25" in progress.update(9, {})
