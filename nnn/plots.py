"""PNG figures of a run and of a sweep (matplotlib, Agg backend: no display needed).

- ``hubness_histogram``: distribution of N_1 (how often each gallery item is some query's top-1)
  before and after a correction, one panel per retrieval direction.
- ``metric_vs_param``: a metric (e.g. R@1) against a swept parameter (e.g. α), one line per
  setting of the other swept parameters.
- ``alpha_k_heatmap``: NNN's R@1 over the α x k grid, one panel per direction and split; the
  tuning split's panels are where (α, k) are chosen, the test split's panels are an analysis.

Files are written atomically (rendered to memory, then ``atomic_write_bytes``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nnn._atomic import atomic_write_bytes  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def hubness_histogram(counts: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *,
                      labels: tuple[str, str] = ("baseline", "method"), k: int = 1) -> Path:
    """Histogram of N_k counts per gallery item, before vs after, one panel per direction.

    counts: ``{direction: (before (n_g,) ints, after (n_g,) ints)}``, e.g. ``{"t2i": (b, a)}``.
    The count axis is logarithmic so that the few hubs in the long tail stay visible.
    """
    if not counts:
        raise ValueError("hubness_histogram needs counts for at least one direction")
    fig, axes = plt.subplots(1, len(counts), figsize=(5.2 * len(counts), 3.8), squeeze=False)
    for ax, (direction, (before, after)) in zip(axes[0], counts.items()):
        before, after = np.asarray(before), np.asarray(after)
        top = int(max(before.max(), after.max()))
        bins = np.arange(top + 2) - 0.5 if top <= 60 else np.linspace(-0.5, top + 0.5, 61)
        for c, label, color in ((before, labels[0], "tab:gray"), (after, labels[1], "tab:blue")):
            ax.hist(c, bins=bins, alpha=0.55, color=color,
                    label=f"{label} (max {int(c.max())}, {100 * np.mean(c == 0):.0f}% never)")
        ax.set_yscale("log")
        ax.set_xlabel(f"N_{k}: times a gallery item is a query's top-{k}")
        ax.set_ylabel("gallery items")
        ax.set_title(f"{direction}: hubness of the gallery")
        ax.legend(fontsize=8)
    return _save(fig, path)


def metric_vs_param(series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    path: str | Path, *, xlabel: str, ylabel: str, title: str = "",
                    baseline: float | None = None) -> Path:
    """Line plot: ``series`` maps a label to ``(x values, y values)``; points sorted by x.

    ``baseline`` draws a dashed horizontal reference line (e.g. the uncorrected R@1).
    """
    if not series:
        raise ValueError("metric_vs_param needs at least one series")
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for label, (xs, ys) in series.items():
        order = np.argsort(np.asarray(xs, dtype=float))
        ax.plot(np.asarray(xs, dtype=float)[order], np.asarray(ys, dtype=float)[order],
                marker="o", label=label)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label="baseline")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def alpha_k_heatmap(grids: Sequence[Mapping], path: str | Path) -> Path:
    """Heat maps of R@1 over (α, k): a column per direction, a row per role.

    grids: dicts with ``direction``, ``split``, ``role`` ("selection": the tuning split, where
    (α, k) are chosen; "analysis": the evaluation split, chooses nothing), ``alphas`` (n_a,),
    ``ks`` (n_k,), ``table`` (n_a, n_k) R@1 in percent (None/NaN: not evaluated) and ``chosen``
    ((α, k) outlined in red, or None); see ``nnn.results.alpha_k_grids``.
    """
    if not grids:
        raise ValueError("alpha_k_heatmap needs at least one grid")
    directions = list(dict.fromkeys(g["direction"] for g in grids))
    roles = [r for r in ("selection", "analysis") if any(g["role"] == r for g in grids)]
    fig, axes = plt.subplots(len(roles), len(directions), squeeze=False,
                             figsize=(5.6 * len(directions), 4.4 * len(roles)))
    for ax in axes.ravel():
        ax.set_visible(False)
    for g in grids:
        ax = axes[roles.index(g["role"]), directions.index(g["direction"])]
        ax.set_visible(True)
        table = np.array([[np.nan if v is None else v for v in row] for row in g["table"]],
                         dtype=float)
        image = ax.imshow(table, aspect="auto", origin="lower", cmap="viridis")
        fig.colorbar(image, ax=ax, label="R@1 (%)")
        ax.set_xticks(range(len(g["ks"])), [str(k) for k in g["ks"]])
        ax.set_yticks(range(len(g["alphas"])), [f"{a:g}" for a in g["alphas"]])
        ax.set_xlabel("k (reference neighbours)")
        ax.set_ylabel("α")
        if table.size <= 144:
            for (i, j), v in np.ndenumerate(table):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=6,
                            color="white" if v < np.nanmean(table) else "black")
        if g.get("chosen") is not None:
            a, k = g["chosen"]
            if a in g["alphas"] and k in g["ks"]:
                ax.add_patch(plt.Rectangle((g["ks"].index(k) - 0.5, g["alphas"].index(a) - 0.5),
                                           1, 1, fill=False, edgecolor="red", linewidth=2))
        what = ("chooses α, k (red)" if g["role"] == "selection"
                else "ANALYSIS ONLY, chooses nothing; red: the run's α, k")
        ax.set_title(f"{g['direction']}: R@1 on the {g['split']} split\n{what}", fontsize=9)
    return _save(fig, path)
