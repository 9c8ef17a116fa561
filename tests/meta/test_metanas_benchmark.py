"""The MetaNAS meta-step benchmark's plumbing on a tiny supernet (timings are not asserted)."""

import json

import pytest

from nas_jax.meta.metanas_benchmark import metanas_benchmark_config, run_metanas_benchmark


@pytest.mark.slow
def test_times_each_variant_and_writes_json(tmp_path):
    c = metanas_benchmark_config()
    c.channels, c.num_cells, c.input_shape = 2, 1, (8, 8, 1)
    c.ways, c.queries, c.meta_batch, c.inner_steps, c.steps = 2, 1, 1, 1, 1
    c.variants = (("scan", "xla"),)  # each variant compiles a meta-step
    lines = []
    rows = run_metanas_benchmark(c, str(tmp_path), log=lines.append)
    assert [(r["edge_execution"], r["depthwise_impl"]) for r in rows] == [("scan", "xla")]
    row = rows[0]
    assert row["compile_s"] > 0 and row["seconds_per_step"] > 0 and row["program_lines"] > 100
    saved = json.loads((tmp_path / "metanas_benchmark.json").read_text())
    assert saved["rows"] == rows and saved["config"]["num_cells"] == 1
    assert lines[0].startswith("MetaNAS meta-step, 1 cells x 2 channels")
    assert "s/meta-step" in lines[1]


@pytest.mark.parametrize("variant, message", [(("vmap", "xla"), "edge_execution 'vmap'"),
                                              (("scan", "fft"), "depthwise_impl 'fft'")])
def test_unknown_variant_is_named(variant, message):
    c = metanas_benchmark_config()
    c.variants = (variant,)
    with pytest.raises(ValueError, match=f"config.variants: {message}"):
        run_metanas_benchmark(c)
