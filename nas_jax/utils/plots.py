"""PNG plots for a workdir: search curves, method comparisons, architecture-weight heatmaps.

Figures are built with matplotlib's object API (`matplotlib.figure.Figure` rendered by the Agg
canvas), so no window opens, no global backend is switched and no figure lingers in pyplot's
registry. Files are written atomically (temp file + `os.replace`).
"""

from __future__ import annotations

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
) -> str:
    """Plots several methods' mean curves, each as `name -> (x, mean, std or None)`.

    A non-None std is drawn as a shaded mean +- std band. Points with a non-finite x or mean (or
    x <= 0 when `logx`) are left out; a non-finite std leaves only its band out. Returns the path.
    """
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        x, mean, std = curve
        x = _vector(f"{name}.x", x)
        mean = _vector(f"{name}.mean", mean, x.size)
        ok = np.isfinite(x) & np.isfinite(mean)
        if logx:
            ok &= x > 0
        (line,) = ax.plot(x[ok], mean[ok], label=str(name))
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
    if curves:
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
