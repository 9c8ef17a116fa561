"""A floor under the NB201 search steps' time on this backend: the sum of their units alone.

``run_floor_benchmark(config)`` takes the network of ``configs/benchmark_darts.py`` (NB201
C=16, N=5, 32x32x3, batch 64), times each kind of unit it is made of on its own (a ReLU-conv-BN
block per kernel size and stage, the 3x3 average pool, a node sum, an edge scaled by its
weight and added, the stem, the two residual reductions, the head with the loss), each as
one jitted program of its forward and backward pass in steady state, and adds them up as
the search methods use them:

- ``random_path``: one SPOS weight step: the live edges of a uniformly drawn cell (an edge
  is live when its op is not ``none`` and it lies on a path from the cell's input to its
  output), forward and backward with respect to inputs and weights.
- ``gdas``: an architecture pass (backward with respect to inputs only: the scales'
  gradients) and a weight pass over the live edges of a uniformly drawn cell, each live
  edge's output scaled by its straight-through weight.
- ``darts1``: the same two passes over every op of every edge, mixed by the softmax weights.

Cell op counts are expectations over all 5^6 cells (exact, by enumeration), so the floors
have no sampling noise. Each conv unit is timed with every implementation in
``config.conv_impls`` (``ops.conv2d``) and the fastest counts.

What the floor is and is not: a step adds what it leaves out (the glue between units, the
optimizer update). It is also optimistic per unit: given its cotangent as an argument, a
unit's forward and backward are independent, so XLA runs them concurrently on the cores
and drops a linear unit's forward (pool, sums) when only its gradient is returned. But it
is not a strict lower bound: a step that runs independent units concurrently (the ops of
one edge, the edges leaving one node) can beat the sum, as DARTS' fused mixture step does.
Where each unit alone keeps at least one core busy, no step on ``n`` cores gets below
``floor / n``: a goal below that needs faster kernels, not a better program around them.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from nas_jax import ops
from nas_jax.spaces.nb201 import CONV_KERNEL, EDGES, NUM_NODES, OPS, NB201Space, _live_edges
from nas_jax.train.steps import cross_entropy

METHODS = ("random_path", "gdas", "darts1")


def floor_benchmark_config() -> ml_collections.ConfigDict:
    """Defaults: the search benchmark's NB201 network, 20 timed calls per unit."""
    c = ml_collections.ConfigDict()
    c.kind = "floor"
    c.channels = 16
    c.cells_per_stage = 5
    c.input_shape = (32, 32, 3)
    c.batch_size = 64
    c.repeats = 20
    c.conv_impls = ("xla", "chunked", "taps")
    c.methods = METHODS
    return c


def cell_counts(method: str) -> dict[str, float]:
    """Expected units per cell of one pass of ``method``, over uniformly drawn cells.

    Keys: ``nor_conv_3x3``, ``nor_conv_1x1``, ``avg_pool_3x3`` (op units), ``add`` (two-input
    node sums) and ``axpy`` (an edge's output times its weight, added to its node)."""
    if method not in METHODS:
        raise ValueError(f"config.methods: {method!r}; allowed: {', '.join(METHODS)}")
    if method == "darts1":  # every op of every edge (``none`` adds nothing)
        return {"nor_conv_3x3": 6.0, "nor_conv_1x1": 6.0, "avg_pool_3x3": 6.0, "add": 0.0,
                "axpy": 24.0}
    totals = dict.fromkeys(("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "add", "axpy"),
                           0.0)
    cells = list(itertools.product(range(len(OPS)), repeat=len(EDGES)))
    for arch in cells:
        live = _live_edges(arch)
        for e, on in enumerate(live):
            name = OPS[arch[e]]
            if on and name in totals:
                totals[name] += 1
        if method == "gdas":  # every live edge scaled and accumulated
            totals["axpy"] += sum(live)
        else:  # a node with k live inputs: k - 1 sums
            for node in range(1, NUM_NODES):
                k = sum(on for on, (dst, _) in zip(live, EDGES) if dst == node)
                totals["add"] += max(k - 1, 0)
    return {k: v / len(cells) for k, v in totals.items()}


def method_passes(method: str) -> tuple[str, ...]:
    """The passes one step of ``method`` runs over the network."""
    return ("weights",) if method == "random_path" else ("inputs", "weights")


def _module_fn(module: nnx.Module, call):
    graphdef, params, stats = nnx.split(module, nnx.Param, nnx.BatchStat)

    def fn(x, p):
        return call(nnx.merge(graphdef, p, stats, copy=True), x)

    return fn, params


def network_units(space: NB201Space, batch: int, conv_impl: str) -> dict:
    """``name -> (fn(x, params), x, params, kind)`` for every unit kind of the network; kind
    is ``cell`` (per cell, per stage), ``scale`` (per cell; its weight's gradient is needed
    in both passes), ``fixed`` (once per pass) or ``stem`` (no input gradient)."""
    rngs = ops.ParamKeys(0)
    h, w, c_in = space.input_shape
    c = space.channels
    key = jax.random.key(1)
    units = {}

    def act(shape):
        return jax.random.normal(jax.random.fold_in(key, len(units)), (batch, *shape))

    stem = nnx.Sequential(ops.Conv(c_in, c, 3, impl=conv_impl, rngs=rngs), ops.BatchNorm(c))
    fn, p = _module_fn(stem, lambda m, x: m.layers[1](m.layers[0](x), True))
    units["stem"] = (fn, act((h, w, c_in)), p, "stem")
    for stage, ch in enumerate((c, 2 * c, 4 * c)):
        if stage > 0:
            block = ops.ResidualReduction(ch // 2, ch, impl=conv_impl, rngs=rngs)
            fn, p = _module_fn(block, lambda m, x: m(x, True))
            units[f"reduction{stage}"] = (fn, act((h, w, ch // 2)), p, "fixed")
            h, w = (h + 1) // 2, (w + 1) // 2
        tag = f"@{h}x{w}x{ch}"
        for name, k in CONV_KERNEL.items():
            block = ops.ReLUConvBN(ch, ch, k, impl=conv_impl, rngs=rngs)
            fn, p = _module_fn(block, lambda m, x: m(x, True))
            units[name + tag] = (fn, act((h, w, ch)), p, "cell")
        units["avg_pool_3x3" + tag] = (lambda x, p: ops.avg_pool_3x3(x), act((h, w, ch)), {},
                                       "cell")
        units["add" + tag] = (lambda x, p: x[0] + x[1], (act((h, w, ch)), act((h, w, ch))),
                              {}, "cell")
        units["axpy" + tag] = (lambda x, p: x[0] + p["w"] * x[1],
                               (act((h, w, ch)), act((h, w, ch))), {"w": jnp.float32(0.3)},
                               "scale")
    head_bn = ops.BatchNorm(4 * c)
    classifier = ops.Dense(4 * c, space.num_classes, rngs=rngs)
    labels = jnp.arange(batch) % space.num_classes
    head = nnx.Sequential(head_bn, classifier)

    def head_call(m, x):
        z = jax.nn.relu(m.layers[0](x, True))
        return cross_entropy(m.layers[1](jnp.mean(z, axis=(1, 2))), labels)

    fn, p = _module_fn(head, head_call)
    units["head"] = (fn, act((h, w, 4 * c)), p, "fixed")
    return units


# What a unit kind computes in each pass of a step (default: the pass itself): the stem has
# nothing before it (no input gradient; the architecture pass needs its forward only); a
# scaled edge's weight gets its gradient in both passes.
PROGRAM_OF_PASS = {"stem": {"weights": "params", "inputs": "forward"},
                   "scale": {"inputs": "weights"}}


def _pass_program(fn, x, params, which: str):
    """A jitted program of one pass of ``fn`` and its arguments: ``weights`` (forward, then
    the VJP with respect to ``x`` and the parameters), ``inputs`` (the VJP with respect to
    ``x`` only), ``params`` (with respect to the parameters only), ``forward``. The
    output's cotangent is an argument: as a constant, XLA folds parts of the backward pass
    at compile time (the pool's, for seconds)."""
    if which == "forward":
        return jax.jit(fn), (x, params)
    out = jax.eval_shape(fn, x, params)
    seed = jax.tree.map(lambda s: jax.random.normal(jax.random.key(3), s.shape, s.dtype), out)
    if which == "inputs":
        return jax.jit(lambda x, p, g: jax.vjp(lambda x_: fn(x_, p), x)[1](g)), (x, params, seed)
    if which == "params":
        return jax.jit(lambda x, p, g: jax.vjp(lambda p_: fn(x, p_), p)[1](g)), (x, params, seed)
    return jax.jit(lambda x, p, g: jax.vjp(fn, x, p)[1](g)), (x, params, seed)


def _seconds(program, args, repeats: int) -> float:
    jax.block_until_ready(program(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(program(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_units(space: NB201Space, batch: int, conv_impls, repeats: int) -> dict:
    """``{unit: {pass: seconds}}``, the fastest of ``conv_impls`` for units holding
    convolutions (``PROGRAM_OF_PASS``: what each kind computes per pass)."""
    table: dict = {}
    for impl in conv_impls:
        for name, (fn, x, params, kind) in network_units(space, batch, impl).items():
            has_conv = any(leaf.ndim == 4 for leaf in jax.tree.leaves(params))
            if impl != conv_impls[0] and not has_conv:
                continue  # the same program whatever the conv impl
            for which in ("weights", "inputs"):
                program = PROGRAM_OF_PASS.get(kind, {}).get(which, which)
                s = _seconds(*_pass_program(fn, x, params, program), repeats)
                best = table.setdefault(name, {}).get(which)
                table[name][which] = s if best is None else min(best, s)
    return table


def floors(space: NB201Space, unit_seconds: dict, method: str) -> float:
    """Seconds of one step of ``method`` if it took only its units' time alone."""
    counts = cell_counts(method)
    total = 0.0
    for which in method_passes(method):
        for name, per_pass in unit_seconds.items():
            base = name.split("@")[0]
            if "@" in name:
                total += space.cells_per_stage * counts[base] * per_pass[which]
            else:  # stem, reductions, head: once per pass
                total += per_pass[which]
    return total


def run_floor_benchmark(config: ml_collections.ConfigDict, workdir: str | None = None,
                        log=print) -> dict:
    """Time the units, print them and each method's floor; write ``floor_benchmark.json``."""
    for method in config.methods:
        cell_counts(method)  # names checked up front
    for impl in config.conv_impls:
        if impl not in ops.CONV_IMPLS:
            raise ValueError(f"config.conv_impls: {impl!r}; allowed: "
                             f"{', '.join(ops.CONV_IMPLS)}")
    space = NB201Space(channels=config.channels, cells_per_stage=config.cells_per_stage,
                       input_shape=tuple(config.input_shape), num_classes=10)
    log(f"backend {jax.default_backend()}, NB201 C={config.channels} "
        f"N={config.cells_per_stage}, input {tuple(config.input_shape)}, batch "
        f"{config.batch_size}; fastest of conv impls {tuple(config.conv_impls)}")
    with jax.threefry_partitionable(False):
        units = time_units(space, config.batch_size, tuple(config.conv_impls), config.repeats)
    log(f"{'unit':26s} {'weights ms':>10s} {'inputs ms':>10s}")
    for name, per_pass in units.items():
        log(f"{name:26s} {1e3 * per_pass['weights']:10.3f} {1e3 * per_pass['inputs']:10.3f}")
    log(f"{'method':12s} {'floor s / step':>14s}   units per cell and pass")
    rows = []
    for method in config.methods:
        floor = floors(space, units, method)
        counts = cell_counts(method)
        rows.append({"method": method, "floor_s": floor, "cell_counts": counts})
        described = ", ".join(f"{k} {v:.2f}" for k, v in counts.items() if v)
        log(f"{method:12s} {floor:14.3f}   {described}")
    out = {"backend": jax.default_backend(), "config": config.to_dict(), "units": units,
           "rows": rows}
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "floor_benchmark.json"), "w") as f:
            json.dump(out, f, indent=1, default=str)
    return out

