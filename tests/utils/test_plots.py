"""Tests for nas_jax.utils.plots: each plot writes a sane PNG, NaN inputs included."""

import os
import struct

import numpy as np
import pytest

from nas_jax.utils.plots import (
    cell_arrows,
    plot_alpha,
    plot_cell,
    plot_curves,
    plot_search_curve,
    running_best,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    """Checks the PNG signature and returns (width, height) from its IHDR chunk."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _assert_sane_png(path):
    width, height = _png_size(path)
    assert 200 <= width <= 4000 and 150 <= height <= 4000
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".plot.")]


def test_running_best():
    got = running_best([np.nan, 0.2, 0.1, np.inf, 0.5, np.nan])
    np.testing.assert_allclose(got, [np.nan, 0.2, 0.2, 0.2, 0.5, 0.5])
    np.testing.assert_allclose(running_best([3.0, 1.0, 2.0], minimize=True), [3.0, 1.0, 1.0])


@pytest.mark.parametrize("with_nan", [False, True])
def test_plot_search_curve(tmp_path, with_nan):
    rng = np.random.default_rng(0)
    fitness = rng.uniform(0.1, 0.9, 50)
    if with_nan:
        fitness[[0, 7, 30]] = [np.nan, np.inf, np.nan]
    path = plot_search_curve(tmp_path / "sub" / "search.png", np.arange(50), fitness, title="RS")
    _assert_sane_png(path)


def test_plot_search_curve_all_nan(tmp_path):
    _assert_sane_png(plot_search_curve(tmp_path / "s.png", np.arange(3), np.full(3, np.nan)))


def test_plot_search_curve_length_mismatch(tmp_path):
    with pytest.raises(ValueError, match="fitness"):
        plot_search_curve(tmp_path / "s.png", np.arange(3), np.zeros(4))


def test_plot_curves(tmp_path):
    x = np.arange(1, 21)
    mean = np.log(x)
    mean_nan = mean.copy()
    mean_nan[5] = np.nan
    std = np.full(20, 0.1)
    std[3] = np.nan
    curves = {"random": (x, mean, std), "evolution": (x, mean_nan + 0.2, None)}
    for logx in (False, True):
        path = plot_curves(
            tmp_path / f"c{logx}.png", curves, xlabel="evaluations", ylabel="acc", logx=logx
        )
        _assert_sane_png(path)


def test_plot_curves_styles_and_many_curves(tmp_path):
    """Per-curve line keywords reach the lines; more than 6 curves still make a sane PNG
    (legend beside the axes)."""
    x = np.arange(1, 11)
    curves = {f"m{i}": (x, x * (i + 1.0), None) for i in range(8)}
    styles = {"m0": dict(color="black", linestyle=":"), "m7": dict(linewidth=3.0)}
    _assert_sane_png(plot_curves(tmp_path / "many.png", curves, xlabel="e", ylabel="r",
                                 styles=styles))
    with pytest.raises((AttributeError, TypeError)):
        plot_curves(tmp_path / "bad.png", curves, xlabel="e", ylabel="r",
                    styles={"m1": dict(not_a_line_property=1)})


def test_plot_alpha(tmp_path):
    alpha = np.random.default_rng(1).dirichlet(np.ones(5), size=6)
    alpha[2, 1] = np.nan
    rows = [f"edge {i}" for i in range(6)]
    cols = ["none", "skip", "conv1x1", "conv3x3", "avgpool"]
    _assert_sane_png(plot_alpha(tmp_path / "alpha.png", alpha, rows, cols, "DARTS alpha"))
    with pytest.raises(ValueError, match="labels"):
        plot_alpha(tmp_path / "bad.png", alpha, rows[:2], cols, "bad")


def test_plot_cell_draws_exactly_the_kept_operations(tmp_path):
    from nas_jax.spaces.darts import DARTS_V2, PRIMITIVES, DartsSpace, decision_index

    space = DartsSpace()
    arch = space.from_string(DARTS_V2)
    w = np.zeros((14, 8))
    want = set()
    for node in range(4):
        for slot in range(2):
            src = int(arch[decision_index(0, node, slot, 0)])
            op = int(arch[decision_index(0, node, slot, 1)])
            w[node * (node + 3) // 2 + src, op] = 1.0
            want.add((src, node, PRIMITIVES[op], 1.0))
    w[0, 0] = 0.9  # 'none' is never drawn
    assert set(cell_arrows(w, PRIMITIVES)) == want and len(want) == 8
    w[7, 4], w[7, 1] = 0.3, 0.05  # node 2 from node 0 (source 2): one op kept, one below 0.1
    assert (2, 2, "sep_conv_3x3", 0.3) in cell_arrows(w, PRIMITIVES, min_weight=0.1)
    assert len(cell_arrows(w, PRIMITIVES, min_weight=0.1)) == 9
    assert _png_size(plot_cell(tmp_path / "cell.png", w, PRIMITIVES, "normal")) == (900, 420)
    with pytest.raises(ValueError, match=r"expected \(14, 8\)"):
        plot_cell(tmp_path / "bad.png", w[:5], PRIMITIVES)
