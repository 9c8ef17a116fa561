"""Metric output: a JSONL file plus TensorBoard events in the workdir, and a text progress line.

`metrics.jsonl` holds one JSON object per `write` call, `{"step": step, **metrics}`, flushed as it
is written. Non-finite floats are written as `null` so that the file stays strict JSON (pandas
reads `null` as NaN); TensorBoard gets the raw value. Only process 0 writes by default.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any, Self, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
TB_DIR = "tb"


def to_python(value: Any) -> Any:
    """Converts a numpy/jax scalar, array or container to plain python for JSON.

    Non-finite floats become None (JSON null); nested `ConfigDict`s become dicts.
    """
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_python(v) for v in value]
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        value = np.asarray(value)
        value = value.item() if value.ndim == 0 else value.tolist()
        return to_python(value) if isinstance(value, list) else _finite_or_none(value)
    return _finite_or_none(value)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _scalar(name: str, value: Any) -> bool | int | float | str:
    """Returns `value` as a python scalar; strings pass through (JSONL only)."""
    if isinstance(value, (str, bool, int, float)):
        return value
    arr = np.asarray(value)
    numeric = arr.dtype.kind in "biuf" or jnp.issubdtype(arr.dtype, jnp.floating)  # + bfloat16
    if arr.size != 1 or not numeric:
        raise ValueError(f"Metric {name!r} must be a numeric scalar; got {arr.dtype}{arr.shape}.")
    value = arr.reshape(()).item()
    return float(value) if arr.dtype.kind == "V" else value


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Reads a JSONL file; a torn final line (no newline, not parseable) is ignored.

    Raises:
      ValueError: a complete line is not valid JSON.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # The last piece has no newline: a write cut short.
                break
            raise ValueError(f"{path}:{i + 1}: invalid JSON line: {e}") from e
    return records


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None],
                 binary: bool = False) -> str:
    """Write ``path`` atomically: ``write(f)`` fills a temp file in the same directory (parents
    created), which then replaces ``path``; a crash leaves the old file or none. Returns it."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else
                                                         {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _atomic_write_text(path: str, text: str) -> None:
    """Writes `text` to `path` through a temp file in the same directory and `os.replace`."""
    atomic_write(path, lambda f: f.write(text))


def _drop_torn_tail(path: str) -> None:
    """Cuts a final line without newline (a write killed half-way) so appends stay valid JSONL."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


class MetricWriter:
    """Appends scalar metrics to `workdir/metrics.jsonl` and TensorBoard events in `workdir/tb`.

    Args:
      workdir: output directory, created if missing.
      enabled: whether this process writes; default `jax.process_index() == 0`. A disabled
        writer accepts every call and writes nothing.
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool | None = None):
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.enabled = jax.process_index() == 0 if enabled is None else bool(enabled)
        self.path = os.path.join(self.workdir, METRICS_FILE)
        self._file: TextIO | None = None
        self._tb: SummaryWriter | None = None
        self._purge_step: int | None = None
        if self.enabled:
            os.makedirs(self.workdir, exist_ok=True)
            _drop_torn_tail(self.path)
            self._open()

    def _open(self) -> None:
        # Held open across writes and closed in close(), so no `with` block.
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def _tb_writer(self) -> SummaryWriter:
        """Opens the TensorBoard writer on first use.

        tensorboardX names event files by the second; the nanosecond suffix keeps a writer opened
        in the same second (a reopen, a quick restart) from overwriting the previous file.
        """
        if self._tb is None:
            self._tb = SummaryWriter(
                os.path.join(self.workdir, TB_DIR),
                purge_step=self._purge_step,
                flush_secs=30,
                filename_suffix=f".{time.time_ns()}.{os.getpid()}",
            )
            self._purge_step = None
        return self._tb

    def _close_outputs(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends `{"step": step, **metrics}` as one JSON line and logs numbers to TensorBoard.

        Values are python/numpy/jax numeric scalars (bools and strings too; strings go to the
        JSONL file only). Raises ValueError for arrays with more than one element or a "step" key.
        """
        if "step" in metrics:
            raise ValueError("Metric name 'step' is reserved.")
        values = {str(k): _scalar(str(k), v) for k, v in metrics.items()}
        if not self.enabled:
            return
        step = int(step)
        record = {"step": step, **{k: _finite_or_none(v) for k, v in values.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        for name, value in values.items():
            if not isinstance(value, str):
                self._tb_writer().add_scalar(name, float(value), global_step=step)

    def write_config(self, config: Any) -> None:
        """Saves a `ConfigDict` or mapping as `workdir/config.json` (indented, sorted keys)."""
        if not self.enabled:
            return
        text = json.dumps(to_python(config), indent=2, sort_keys=True, default=str)
        _atomic_write_text(os.path.join(self.workdir, CONFIG_FILE), text + "\n")

    def truncate_after(self, step: int) -> None:
        """Drops JSONL lines with step > `step` and hides later TensorBoard events.

        A run resumed from the checkpoint at `step` calls this so that what a killed run wrote
        after that checkpoint is not duplicated. The JSONL rewrite is atomic (temp file +
        `os.replace`); TensorBoard events are purged through a `purge_step` marker.
        """
        if not self.enabled:
            return
        self._close_outputs()
        if os.path.exists(self.path):
            kept = [to_python(r) for r in read_jsonl(self.path) if int(r.get("step", 0)) <= step]
            text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
            _atomic_write_text(self.path, text)
        self._purge_step = int(step) + 1
        self._open()

    def flush(self) -> None:
        """Flushes both outputs (the JSONL file is already flushed per write)."""
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes the outputs; later calls write nothing."""
        self._close_outputs()
        self.enabled = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Prints `step i/n, elapsed, ETA, metrics` at most every `interval_s` seconds.

    Args:
      total: the last step of the loop.
      interval_s: minimum seconds between lines; the final step always prints.
      start: the step the loop starts from (a resumed run's checkpoint step), for the ETA.
      name: a prefix for the line.
      stream: where lines go; default sys.stderr.
      clock: a monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        total: int,
        *,
        interval_s: float = 30.0,
        start: int = 0,
        name: str = "",
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total = int(total)
        self.interval_s = float(interval_s)
        self.start = int(start)
        self.name = name
        self.stream = stream
        self._clock = clock
        self._t0 = clock()
        self._last: float | None = None

    def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> str | None:
        """Prints a progress line for `step` if one is due; returns the line or None."""
        now = self._clock()
        due = self._last is None or now - self._last >= self.interval_s or step >= self.total
        if not due:
            return None
        self._last = now
        elapsed = now - self._t0
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        pct = 100.0 * step / self.total if self.total else 100.0
        parts = [
            f"{self.name + ': ' if self.name else ''}step {step}/{self.total} ({pct:.1f}%)",
            f"elapsed {_hms(elapsed)}",
            f"ETA {_hms(eta) if math.isfinite(eta) else '?'}",
        ]
        for key, value in (metrics or {}).items():
            value = _scalar(str(key), value)
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        line = ", ".join(parts)
        print(line, file=self.stream or sys.stderr, flush=True)
        return line
