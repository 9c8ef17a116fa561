"""PNG plots for a workdir: search curves, method comparisons, architecture-weight heatmaps.

Figures are built with matplotlib's object API (`matplotlib.figure.Figure` rendered by the Agg
canvas), so no window opens, no global backend is switched and no figure lingers in pyplot's
registry. Files are written atomically (temp file + `os.replace`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nas_jax.utils.metrics import atomic_write

_DPI = 100


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> str:
    """Writes `fig` as a PNG at `path` (parent directories created) and returns the path."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)


def _vector(name: str, values, size: int | None = None) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if size is not None and arr.size != size:
        raise ValueError(f"{name} has {arr.size} entries; expected {size}.")
    return arr


def running_best(fitness, *, minimize: bool = False) -> np.ndarray:
    """Running best of `fitness`, ignoring non-finite values (NaN before the first finite one)."""
    fitness = _vector("fitness", fitness)
    bad = np.inf if minimize else -np.inf
    clean = np.where(np.isfinite(fitness), fitness, bad)
    running = np.minimum.accumulate(clean) if minimize else np.maximum.accumulate(clean)
    return np.where(np.isfinite(running), running, np.nan)


def plot_search_curve(
    path: str | os.PathLike,
    evaluations,
    fitness,
    *,
    best_so_far: bool = True,
    minimize: bool = False,
    title: str = "",
    ylabel: str = "validation accuracy",
    xlabel: str = "evaluation",
) -> str:
    """Scatters each evaluated architecture's fitness against its evaluation index.

    With `best_so_far`, adds the running best (max, or min when `minimize`) as a step line.
    Non-finite fitness values are left out. Returns the path of the PNG.
    """
    x = _vector("evaluations", evaluations)
    y = _vector("fitness", fitness, x.size)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    ok = np.isfinite(x) & np.isfinite(y)
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.scatter(x[ok], y[ok], s=10, alpha=0.5, color="tab:blue", label="evaluated")
    if best_so_far and ok.any():
        running = running_best(y[ok], minimize=minimize)
        ax.step(x[ok], running, where="post", color="tab:red", label="best so far")
    dropped = int((~ok).sum())
    if dropped:
        ax.text(0.01, 0.01, f"{dropped} non-finite left out", transform=ax.transAxes, fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if ok.any():
        ax.legend(loc="best")
    return _save(fig, path)


def plot_curves(
    path: str | os.PathLike,
    curves: Mapping[str, tuple],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    styles: Mapping[str, Mapping] | None = None,
) -> str:
    """Plots several methods' mean curves, each as `name -> (x, mean, std or None)`.

    A non-None std is drawn as a shaded mean +- std band. Points with a non-finite x or mean (or
    x <= 0 when `logx`) are left out; a non-finite std leaves only its band out. `styles` maps
    a curve's name to matplotlib line keywords (color, linestyle, ...). With more than 6
    curves the legend goes to the right of the axes, where it hides no line. Returns the path.
    """
    styles = styles or {}
    outside = len(curves) > 6
    fig = _new_figure(8.5 if outside else 6.0, 4.0)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        x, mean, std = curve
        x = _vector(f"{name}.x", x)
        mean = _vector(f"{name}.mean", mean, x.size)
        ok = np.isfinite(x) & np.isfinite(mean)
        if logx:
            ok &= x > 0
        style = dict(styles.get(name, {}))
        if int(ok.sum()) < 2:  # a lone point draws no line: mark it
            style.setdefault("marker", "o")
        (line,) = ax.plot(x[ok], mean[ok], label=str(name), **style)
        if std is not None:
            std = _vector(f"{name}.std", std, x.size)[ok]
            band = np.isfinite(std)
            ax.fill_between(
                x[ok],
                mean[ok] - std,
                mean[ok] + std,
                where=band,
                alpha=0.2,
                color=line.get_color(),
                linewidth=0,
            )
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if curves and outside:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    elif curves:
        ax.legend(loc="best")
    return _save(fig, path)


def plot_alpha(
    path: str | os.PathLike,
    alpha,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
) -> str:
    """Draws architecture weights `alpha[E, K]` (rows: edges/decisions, columns: operations).

    The caller applies softmax. Each cell is annotated with its value; NaN cells are grey and
    marked "nan". Returns the path of the PNG.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.ndim != 2:
        raise ValueError(f"alpha must be 2-D [E, K]; got shape {alpha.shape}.")
    rows, cols = alpha.shape
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValueError(
            f"alpha is {rows}x{cols} but got {len(row_labels)} row and {len(col_labels)} column"
            " labels."
        )
    fig = _new_figure(max(4.0, 1.0 + 0.9 * cols), max(3.0, 1.2 + 0.35 * rows))
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(alpha)
    finite = alpha[np.isfinite(alpha)]
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(masked, aspect="auto", cmap=cmap, vmin=vmin, vmax=max(vmax, vmin + 1e-12))
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(cols), [str(c) for c in col_labels], rotation=45, ha="right")
    ax.set_yticks(range(rows), [str(r) for r in row_labels])
    middle = (vmin + vmax) / 2
    if rows * cols <= 400:
        for (i, j), value in np.ndenumerate(alpha):
            text = f"{value:.2f}" if np.isfinite(value) else "nan"
            color = "black" if not np.isfinite(value) or value > middle else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    ax.set_title(title)
    return _save(fig, path)


def cell_arrows(edge_weights, op_names: Sequence[str], min_weight: float = 0.0
                ) -> list[tuple[int, int, str, float]]:
    """The operations a DARTS-style cell diagram draws: ``(source, node, op, weight)`` for every
    (edge, op) of ``edge_weights`` ``float[14, K]`` (edge order of ``supernet.darts.EDGES``)
    with a weight above `min_weight`; ``none`` is never drawn. Sources 0 and 1 are the
    cell inputs, 2.. the intermediate nodes; `node` is the intermediate node (0..3)."""
    w = np.asarray(edge_weights, dtype=np.float64)
    edges = [(node, src) for node in range(4) for src in range(node + 2)]
    if w.shape != (len(edges), len(op_names)):
        raise ValueError(f"edge_weights has shape {w.shape}; expected ({len(edges)}, "
                         f"{len(op_names)}) (edges, ops) for one cell")
    return [(src, node, op_names[o], float(w[e, o])) for e, (node, src) in enumerate(edges)
            for o in range(len(op_names)) if op_names[o] != "none" and w[e, o] > min_weight]


def plot_cell(
    path: str | os.PathLike,
    edge_weights,
    op_names: Sequence[str],
    title: str = "",
    *,
    min_weight: float = 0.0,
) -> str:
    """Draws a DARTS-style cell: inputs ``c_{k-2}``, ``c_{k-1}``, intermediate nodes 0..3 and
    the output ``c_{k}`` (concatenating the nodes), with one arrow per kept operation.

    `edge_weights` is ``float[14, K]`` for one cell type (edge order of
    ``supernet.darts.EDGES``; column 0 is ``none``, never drawn): every (edge, op) with a
    weight above `min_weight` is an arrow labelled with the op, and with its weight where the
    edge keeps more than one op or the weight is not 1 (e.g. a pruned MetaNAS cell). A
    discrete genotype is its one-hot weights. Returns the path of the PNG.
    """
    arrows = cell_arrows(edge_weights, op_names, min_weight)
    num_nodes = 4
    pos = {0: (0.0, 1.0), 1: (0.0, -1.0)}
    for node in range(num_nodes):
        pos[node + 2] = (1.6 + 1.5 * node, 1.4 - 0.95 * node)
    out = (2.0 + 1.5 * num_nodes, 0.0)
    fig = _new_figure(9.0, 4.2)
    ax = fig.add_subplot()
    ax.set_axis_off()
    names = {0: "c_{k-2}", 1: "c_{k-1}", **{n + 2: str(n) for n in range(num_nodes)}}
    for index, (x, y) in pos.items():
        color = "palegreen" if index < 2 else "lightblue"
        ax.text(x, y, names[index], ha="center", va="center", fontsize=10, zorder=3,
                bbox=dict(boxstyle="round,pad=0.35", fc=color, ec="black"))
    ax.text(*out, "c_{k}", ha="center", va="center", fontsize=10, zorder=3,
            bbox=dict(boxstyle="round,pad=0.35", fc="khaki", ec="black"))
    for (src, node), group in itertools.groupby(arrows, key=lambda a: (a[0], a[1])):
        kept = [(op, value) for _, _, op, value in group]
        (x0, y0), (x1, y1) = pos[src], pos[node + 2]
        for i, (o, value) in enumerate(kept):
            # Arcs into a node fan out by source, and parallel ops on one edge by op.
            bend = 0.12 * (node + 1 - src) + 0.18 * (i - (len(kept) - 1) / 2)
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=1,
                        arrowprops=dict(arrowstyle="-|>", color="grey", shrinkA=14,
                                        shrinkB=14, connectionstyle=f"arc3,rad={bend}"))
            label = o
            if len(kept) > 1 or abs(value - 1.0) > 1e-6:
                label += f" {value:.2f}"
            # The label sits on the arc: matplotlib's arc3 is a quadratic Bezier curve whose
            # control point is the chord's midpoint moved by rad x (dy, -dx).
            cx, cy = (x0 + x1) / 2 + bend * (y1 - y0), (y0 + y1) / 2 - bend * (x1 - x0)
            t = 0.45
            lx = (1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t**2 * x1
            ly = (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t**2 * y1
            ax.text(lx, ly, label, fontsize=7, ha="center", va="center", zorder=2,
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    for node in range(num_nodes):
        ax.annotate("", xy=out, xytext=pos[node + 2], zorder=1,
                    arrowprops=dict(arrowstyle="-|>", color="lightgrey", ls="--",
                                    shrinkA=14, shrinkB=14))
    ax.set_xlim(-0.6, out[0] + 0.6)
    ax.set_ylim(-2.7, 1.9)
    ax.set_title(title)
    return _save(fig, path)
