"""Cost of one MetaNAS meta-step per way of running the DARTS supernet, side by side.

``run_metanas_benchmark(config)`` builds the MetaNAS learner of the size
``configs/metanas_glyphs.py`` had before its Reptile-protocol default (by default) once per
variant ``(edge_execution, depthwise_impl)`` and times, in one process on the same episodes,
the jitted ``metanas.meta_step`` (a meta-batch of tasks, each adapted for ``inner_steps``
Adam steps, then the Reptile update): tracing (lowering), XLA compilation, the first call,
and the mean of ``config.steps`` further calls, plus the size of the lowered program. Only
ratios within one run are meaningful on a shared machine.

On the 2-core CPU the compile time dominates a short run: the unrolled supernet (14 edges x 7
ops per cell in the program) compiled for ~8 minutes; ``edge_execution="scan"`` (one mixed
edge per scan body, two scans per cell) is the runner's default.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections

from nas_jax.data.tasks import Episode
from nas_jax.meta import metanas
from nas_jax.ops import DEPTHWISE_IMPLS
from nas_jax.spaces.darts import DartsSpace
from nas_jax.supernet.darts import EDGE_EXECUTIONS


def metanas_benchmark_config() -> ml_collections.ConfigDict:
    """Defaults: the offline glyph config's earlier learner (3 cells x 4 channels, 28x28x1, 5-way
    1-shot with 5 queries, meta-batch 2, 3 inner steps), four variants, 3 timed steps."""
    c = ml_collections.ConfigDict()
    c.kind = "metanas"
    c.seed = 0
    c.channels = 4
    c.num_cells = 3
    c.input_shape = (28, 28, 1)
    c.ways = 5
    c.shots = 1
    c.queries = 5
    c.meta_batch = 2
    c.inner_steps = 3
    c.steps = 3
    # (edge_execution, depthwise_impl) pairs, in order.
    c.variants = (("scan", "slices"), ("scan", "xla"), ("unrolled", "slices"),
                  ("unrolled", "xla"))
    return c


def _episodes(key, c) -> Episode:
    k_s, k_q = jax.random.split(key)
    support = c.ways * c.shots
    query = c.ways * c.queries
    labels = jnp.arange(c.ways, dtype=jnp.int32)
    return Episode(
        support_x=jax.random.normal(k_s, (c.meta_batch, support, *c.input_shape)),
        support_y=jnp.tile(jnp.repeat(labels, c.shots), (c.meta_batch, 1)),
        query_x=jax.random.normal(k_q, (c.meta_batch, query, *c.input_shape)),
        query_y=jnp.tile(jnp.repeat(labels, c.queries), (c.meta_batch, 1)),
        classes=jnp.tile(labels, (c.meta_batch, 1)))


def time_variant(c, edge_execution: str, depthwise_impl: str) -> dict:
    """Trace / compile / first-call seconds, seconds per meta-step, program size."""
    if edge_execution not in EDGE_EXECUTIONS:
        raise ValueError(f"config.variants: edge_execution {edge_execution!r}; allowed: "
                         f"{', '.join(EDGE_EXECUTIONS)}")
    if depthwise_impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"config.variants: depthwise_impl {depthwise_impl!r}; allowed: "
                         f"{', '.join(DEPTHWISE_IMPLS)}")
    space = DartsSpace(channels=c.channels, num_cells=c.num_cells, stem_multiplier=1,
                       input_shape=tuple(c.input_shape), num_classes=c.ways)
    key = jax.random.key(c.seed)
    learner, state = metanas.make_learner(
        key, "metanas", space=space, inner_steps=c.inner_steps,
        network_options={"edge_execution": edge_execution, "depthwise_impl": depthwise_impl})
    episodes = _episodes(jax.random.fold_in(key, 1), c)
    temperature = jnp.float32(1.0)
    t0 = time.perf_counter()
    lowered = metanas.meta_step.lower(learner, key, state, episodes, temperature)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    jax.block_until_ready(compiled(key, state, episodes, temperature))
    t3 = time.perf_counter()
    for i in range(c.steps):
        state, metrics = compiled(jax.random.fold_in(key, i), state, episodes, temperature)
    jax.block_until_ready((state, metrics))
    t4 = time.perf_counter()
    return {"edge_execution": edge_execution, "depthwise_impl": depthwise_impl,
            "trace_s": t1 - t0, "compile_s": t2 - t1, "first_call_s": t3 - t2,
            "seconds_per_step": (t4 - t3) / max(c.steps, 1),
            "program_lines": lowered.as_text().count("\n")}


def format_row(r: dict) -> str:
    return (f"{r['edge_execution']:>8} {r['depthwise_impl']:>7}  trace {r['trace_s']:6.1f} s  "
            f"compile {r['compile_s']:6.1f} s  first call {r['first_call_s']:5.2f} s  "
            f"{r['seconds_per_step']:6.3f} s/meta-step  {r['program_lines']:,} program lines")


def run_metanas_benchmark(config: ml_collections.ConfigDict, workdir: str | None = None,
                          log=print) -> list[dict]:
    """Time every variant; print one row each; write ``metanas_benchmark.json``."""
    if config.steps < 1:
        raise ValueError(f"config.steps={config.steps}: must be >= 1")
    log(f"MetaNAS meta-step, {config.num_cells} cells x {config.channels} channels on "
        f"{tuple(config.input_shape)}, {config.ways}-way {config.shots}-shot, meta-batch "
        f"{config.meta_batch}, {config.inner_steps} inner steps; backend "
        f"{jax.default_backend()}")
    rows = []
    for edge_execution, depthwise_impl in config.variants:
        rows.append(time_variant(config, edge_execution, depthwise_impl))
        log(format_row(rows[-1]))
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "metanas_benchmark.json"), "w") as f:
            json.dump({"config": config.to_dict(), "rows": rows}, f, indent=2, default=str)
    return rows
