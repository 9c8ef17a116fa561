"""The floor benchmark: exact cell op counts, the floors' arithmetic, and its plumbing on a
tiny network (timings are not asserted)."""

import json

import pytest

from nas_jax.floor_benchmark import (
    cell_counts,
    floor_benchmark_config,
    floors,
    method_passes,
    run_floor_benchmark,
)
from nas_jax.spaces.nb201 import NB201Space


def test_cell_counts_by_hand():
    """P(edge live) with each op uniform over 5 (``none`` with 1/5): (1,0) 0.8 * 0.928 (node 1
    reaches node 3 directly, or through node 2: 1 - 0.2 * (1 - 0.8^2)); (2,0) 0.8^2; (2,1)
    0.8^3; (3,0) 0.8; (3,1) 0.8^2; (3,2) 0.8 * 0.928. A live edge's op is uniform over the 4
    others, so each op kind gets a quarter of the expected live edges."""
    live = 0.8 * 0.928 + 0.8 ** 2 + 0.8 ** 3 + 0.8 + 0.8 ** 2 + 0.8 * 0.928
    gdas = cell_counts("gdas")
    assert gdas["axpy"] == pytest.approx(live)
    for name in ("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3"):
        assert gdas[name] == pytest.approx(live / 4)
    path = cell_counts("random_path")
    assert path["axpy"] == 0 and path["nor_conv_3x3"] == pytest.approx(live / 4)
    # node sums: node 1 never sums (one input); node 2 sums iff both its edges are live;
    # node 3 sums (k - 1) of its live inputs; all between 0 and 3 per cell
    assert 0 < path["add"] < 3
    assert cell_counts("darts1") == {"nor_conv_3x3": 6, "nor_conv_1x1": 6, "avg_pool_3x3": 6,
                                     "add": 0, "axpy": 24}


def test_floors_add_units_per_cell_and_pass():
    space = NB201Space(channels=2, cells_per_stage=3, input_shape=(8, 8, 1), num_classes=2)
    units = {"stem": {"weights": 1.0, "inputs": 0.5}, "head": {"weights": 2.0, "inputs": 1.0}}
    for name in ("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "add", "axpy"):
        units[f"{name}@8x8x2"] = {"weights": 10.0, "inputs": 100.0}
    per_cell = {m: sum(cell_counts(m).values()) for m in ("random_path", "gdas")}
    assert method_passes("random_path") == ("weights",)
    assert floors(space, units, "random_path") == pytest.approx(
        3 + 3 * 10 * per_cell["random_path"])
    assert floors(space, units, "gdas") == pytest.approx(
        3 + 1.5 + 3 * 110 * per_cell["gdas"])


def test_runs_on_a_tiny_network(tmp_path):
    c = floor_benchmark_config()
    c.channels, c.cells_per_stage, c.input_shape, c.batch_size = 2, 1, (8, 8, 3), 2
    c.repeats, c.conv_impls = 1, ("xla",)
    lines = []
    out = run_floor_benchmark(c, str(tmp_path), log=lines.append)
    assert [r["method"] for r in out["rows"]] == ["random_path", "gdas", "darts1"]
    assert all(r["floor_s"] > 0 for r in out["rows"])
    assert set(out["units"]) >= {"stem", "reduction1", "reduction2", "head",
                                 "nor_conv_3x3@8x8x2", "axpy@2x2x8"}
    saved = json.loads((tmp_path / "floor_benchmark.json").read_text())
    assert [r["floor_s"] for r in saved["rows"]] == [r["floor_s"] for r in out["rows"]]
    assert any(line.startswith("darts1") for line in lines)


def test_unknown_method_and_impl_are_named():
    c = floor_benchmark_config()
    c.methods = ("enas",)
    with pytest.raises(ValueError, match="config.methods: 'enas'"):
        run_floor_benchmark(c)
    c = floor_benchmark_config()
    c.conv_impls = ("fft",)
    with pytest.raises(ValueError, match="config.conv_impls: 'fft'"):
        run_floor_benchmark(c)
