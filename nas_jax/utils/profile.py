"""Time per compiled operation of a jitted program: where a step spends its time.

``profile_program(fn, *args)`` compiles ``fn`` (a ``jax.jit`` function), runs it a few times
under ``jax.profiler.trace``, reads the trace's XSpace protobuf back and joins each executed
thunk's duration with the compiled HLO instruction of the same name. Operations are then
grouped by what they compute, so that e.g. all 3x3 convolutions' kernel gradients at one
shape, or all BatchNorm-moment reductions, form one row:

- a convolution: its ``dim_labels``, window and output shape (``dim_labels`` tells forward,
  input-gradient and kernel-gradient convolutions apart);
- a fusion: its kind (``kLoop``, ``kInput``, ``kOutput``, ``kCustom``) and the operations
  inside it (for fusions around a convolution or dot: that convolution or dot);
- anything else: its opcode and output shape.

Control flow (``conditional``, ``while``) is not a row: the operations of its bodies are
traced, and counted, on their own.

The program is profiled as compiled for the caller's arguments (donations included).
Tracing slows it (the NB201 DARTS step: 4.6 s per call traced, 2.5 s untraced): the rows'
shares are the measurement, the traced wall time is not the benchmark's. Written
for and tried on XLA:CPU, whose trace names each thunk after its HLO instruction. Used by
``experiments/profile_step.py``; it found that the 3x3 pools' ``reduce_window`` took 22% of
the NB201 DARTS step on XLA:CPU.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re
import tempfile
import time

import jax

# Operations that only move or name data inside a fusion: left out of its description.
_TRIVIAL = frozenset({"parameter", "constant", "broadcast", "bitcast", "reshape", "slice",
                      "get-tuple-element", "tuple", "iota"})
# Control flow: its events span the operations of its bodies, which are traced themselves.
_CONTAINERS = frozenset({"conditional", "while", "call", "async-start", "async-done"})
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    opcode: str
    shape: str
    line: str


def parse_hlo(text: str) -> tuple[dict[str, Instruction], dict[str, list[Instruction]]]:
    """``(instructions by name, computations by name)`` of a compiled module's HLO text
    (``compiled.as_text()``)."""
    instructions: dict[str, Instruction] = {}
    computations: dict[str, list[Instruction]] = {}
    current = None
    for line in text.splitlines():
        if not line.startswith(" "):
            match = _COMPUTATION.match(line)
            if match:
                current = computations.setdefault(match.group(1), [])
                continue
            if line.strip() == "}":
                current = None
                continue
        match = _INSTRUCTION.match(line)
        if match:
            inst = Instruction(match.group(1), match.group(3), match.group(2), line)
            instructions[inst.name] = inst
            if current is not None:
                current.append(inst)
    return instructions, computations


def _attribute(line: str, name: str) -> str:
    match = re.search(rf"\b{name}=([^,\s}}]+)", line)
    return match.group(1) if match else ""


def _convolution(inst: Instruction) -> str:
    window = re.search(r"window=\{([^}]*)\}", inst.line)
    return (f"convolution {_attribute(inst.line, 'dim_labels')} "
            f"window[{window.group(1) if window else ''}] -> {inst.shape}")


def describe(inst: Instruction, computations: dict[str, list[Instruction]]) -> str:
    """What an instruction computes: the grouping key of ``profile_program``'s rows."""
    if inst.opcode == "convolution":
        return _convolution(inst)
    if inst.opcode == "fusion":
        kind = _attribute(inst.line, "kind")
        body = computations.get(_attribute(inst.line, "calls").lstrip("%"), [])
        heavy = [i for i in body if i.opcode in ("convolution", "dot")]
        if heavy:
            return f"fusion {kind}: " + " | ".join(
                _convolution(i) if i.opcode == "convolution" else f"dot -> {i.shape}"
                for i in heavy)
        ops = collections.Counter(i.opcode for i in body if i.opcode not in _TRIVIAL)
        inner = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in sorted(ops.items()))
        return f"fusion {kind} -> {inst.shape}: {inner}"
    return f"{inst.opcode} -> {inst.shape}"


def category(description: str) -> str:
    """A coarse class of a ``describe`` string: convolution / dot / reduce-window / ..."""
    if "convolution" in description:
        return "convolution"
    if description.startswith("dot") or "dot ->" in description:
        return "dot"
    for name in ("select-and-scatter", "reduce-window", "reduce", "scatter", "gather",
                 "sort", "copy", "transpose", "custom-call"):
        if re.search(rf"(^|[ :,]){re.escape(name)}\b", description):
            return name
    return "elementwise" if description.startswith("fusion") else description.split(" ")[0]


@dataclasses.dataclass
class Profile:
    wall_s: float  # wall-clock seconds per call, traced
    rows: list[dict]  # {"op", "category", "count", "ms"} per group, longest first; per call
    executor_ms: float  # per call: XLA:CPU's thunk executor spans (0 on other backends)

    def by_category(self) -> list[tuple[str, float]]:
        total = collections.Counter()
        for row in self.rows:
            total[row["category"]] += row["ms"]
        return total.most_common()

    def table(self, top: int = 30) -> str:
        op_ms = sum(r["ms"] for r in self.rows)
        executor = (f"; thunk-executor spans {self.executor_ms:.1f} ms (nested ones included)"
                    if self.executor_ms else "")
        lines = [f"wall {self.wall_s * 1e3:.1f} ms per call{executor}; operations "
                 f"{op_ms:.1f} ms (summed over threads)", "", "by category:"]
        lines += [f"  {ms:9.1f} ms  {100 * ms / max(op_ms, 1e-9):5.1f}%  {name}"
                  for name, ms in self.by_category() if ms >= 0.05]
        lines += ["", f"top {top} operations (ms per call, count per call):"]
        lines += [f"  {r['ms']:9.1f} ms {r['count']:5d}x  {r['op'][:200]}"
                  for r in self.rows[:top]]
        return "\n".join(lines)


def _events(trace_dir: str):
    from jax._src.lib import _profile_data  # the trace reader JAX ships (no TensorFlow)

    paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise RuntimeError(f"jax.profiler.trace wrote no .xplane.pb under {trace_dir}")
    data = _profile_data.ProfileData.from_file(max(paths, key=os.path.getmtime))
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                yield event.name.split(":")[0], event.duration_ns


def profile_program(fn, *args, calls: int = 2, warm_up: int = 1,
                    carry=None, trace_dir: str | None = None) -> Profile:
    """Profile ``fn(*args)`` (a ``jax.jit`` function) over ``calls`` traced calls after
    ``warm_up`` untraced ones. ``carry(args, out) -> args`` feeds each call's output back as
    the next call's arguments (for a step that donates its state); default: same args."""
    compiled = fn.lower(*args).compile()
    instructions, computations = parse_hlo(compiled.as_text())
    out = None
    for _ in range(warm_up):
        out = compiled(*args)
        args = carry(args, out) if carry else args
    jax.block_until_ready(out)
    with tempfile.TemporaryDirectory() as scratch:
        trace_dir = trace_dir or scratch
        options = jax.profiler.ProfileOptions()
        options.python_tracer_level = 0  # Python frames would slow the calls, not explain them
        start = time.perf_counter()
        with jax.profiler.trace(trace_dir, profiler_options=options):
            for _ in range(calls):
                out = compiled(*args)
                args = carry(args, out) if carry else args
            jax.block_until_ready(out)
        wall = (time.perf_counter() - start) / calls
        ms = collections.Counter()
        count = collections.Counter()
        executor = 0.0
        for name, duration_ns in _events(trace_dir):
            inst = instructions.get(name)
            if inst is not None and inst.opcode in _CONTAINERS:
                continue  # its operations are traced (and counted) on their own
            if inst is None:
                if name == "ThunkExecutor":  # XLA:CPU's run of the program, per call
                    executor += duration_ns / 1e6 / calls
                continue
            key = describe(inst, computations)
            ms[key] += duration_ns / 1e6 / calls
            count[key] += 1
    rows = [{"op": key, "category": category(key), "count": count[key] // calls, "ms": value}
            for key, value in ms.most_common()]
    return Profile(wall_s=wall, rows=rows, executor_ms=executor)
