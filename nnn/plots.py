"""PNG figures of a run and of a sweep (matplotlib, no display needed).

- ``hubness_histogram``: distribution of N_1 (how often each gallery item is some query's top-1)
  before and after a correction, one panel per retrieval direction.
- ``metric_vs_param``: a metric (e.g. R@1) against a swept parameter (e.g. α), one line per
  setting of the other swept parameters; a parameter spanning a factor of 16 or more (k = 1 ...
  512) gets a logarithmic axis.
- ``alpha_k_heatmap``: NNN's R@1 over the α x k grid, one panel per direction and split; the
  tuning split's panels are where (α, k) are chosen, the test split's panels are an analysis.
- ``comparison_points``: our value with its 95% CI beside the paper's, one row per table cell,
  one panel per metric (the report's ``table1.png``, ...).

Files are written atomically (rendered to memory, then ``atomic_write_bytes``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, NullFormatter

from nnn._atomic import atomic_write_bytes

# Figures are built without pyplot (``Figure`` renders PNGs through Agg by itself), so plotting
# changes no global state: a notebook's inline backend stays as it is and nothing is left open.


def _subplots(nrows: int = 1, ncols: int = 1, *, squeeze: bool = True, gridspec_kw=None,
              **figure_kw):
    """``plt.subplots`` without pyplot: (figure, axes); ``figure_kw`` go to ``Figure``."""
    fig = Figure(**figure_kw)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze, gridspec_kw=gridspec_kw)


def _write_png(fig, path: str | Path, bbox_inches: str | None) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches=bbox_inches)
    return atomic_write_bytes(path, buf.getvalue())


def _save(fig, path: str | Path) -> Path:
    """The PNG cropped to what the figure draws (``bbox_inches="tight"``: drawn twice)."""
    return _write_png(fig, path, "tight")


def _fixed_margins(fig, ncols: int, *, left: float = 0.65, right: float = 0.12,
                   bottom: float = 0.5, top: float = 0.3, gap: float = 0.75) -> None:
    """Margins and the gap between ``ncols`` panels in inches, for panels whose texts have a
    known size (a one-line title and x label, a y label, count tick labels), so the figure can
    be saved as it is (``_write_png(..., None)``): it is drawn once, not twice as ``_save``
    draws it to crop (~0.4 s of the default run's ``hubness.png``)."""
    width, height = fig.get_size_inches()
    axis_width = (width - left - right - gap * (ncols - 1)) / ncols
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=gap / axis_width)


def hubness_histogram(counts: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *,
                      labels: tuple[str, str] = ("baseline", "method"), k: int = 1) -> Path:
    """Histogram of N_k counts per gallery item, before vs after, one panel per direction.

    counts: ``{direction: (before (n_g,) ints, after (n_g,) ints)}``, e.g. ``{"t2i": (b, a)}``.
    The count axis is logarithmic so that the few hubs in the long tail stay visible.
    """
    if not counts:
        raise ValueError("hubness_histogram needs counts for at least one direction")
    fig, axes = _subplots(1, len(counts), figsize=(5.2 * len(counts), 3.8), squeeze=False)
    _fixed_margins(fig, len(counts))
    for ax, (direction, (before, after)) in zip(axes[0], counts.items()):
        before, after = np.asarray(before), np.asarray(after)
        top = int(max(before.max(), after.max()))
        bins = np.arange(top + 2) - 0.5 if top <= 60 else np.linspace(-0.5, top + 0.5, 61)
        for c, label, style in ((before, labels[0], {"color": "0.7"}),
                                (after, labels[1], {"histtype": "step", "color": "tab:blue",
                                                    "linewidth": 1.8})):
            ax.hist(c, bins=bins, **style,
                    label=f"{label} (max {int(c.max())}, {100 * np.mean(c == 0):.0f}% never)")
        ax.set_yscale("log")
        # plain-number labels (1, 10, 100): the default 10^n labels go through mathtext, whose
        # parser costs ~0.3 s of a run's start-up; minor ticks stay unlabelled
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"N_{k}: times a gallery item is a query's top-{k}")
        ax.set_ylabel("gallery items")
        ax.set_title(f"{direction}: hubness of the gallery")
        ax.legend(fontsize=8)
    return _write_png(fig, path, None)


#: a positive axis whose values span at least this factor is drawn logarithmically
LOG_AXIS_SPAN = 16


def _log_axis(xs: np.ndarray) -> bool:
    return bool(xs.size) and bool(np.all(xs > 0)) and xs.max() / xs.min() >= LOG_AXIS_SPAN


def metric_vs_param(series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    path: str | Path, *, xlabel: str, ylabel: str, title: str = "",
                    baseline: float | None = None, xscale: str = "auto") -> Path:
    """Line plot: ``series`` maps a label to ``(x values, y values)``; points sorted by x. A
    series that repeats an x value (runs that differ in a parameter the labels leave out) is
    drawn as points only.

    ``baseline`` draws a dashed horizontal reference line (e.g. the uncorrected R@1).
    ``xscale``: "linear", "log" (base 2, ticks at the values) or "auto": log when every x is
    positive and they span a factor of ``LOG_AXIS_SPAN`` or more (k = 1 ... 512), else linear.
    """
    if not series:
        raise ValueError("metric_vs_param needs at least one series")
    if xscale not in ("auto", "linear", "log"):
        raise ValueError(f"xscale must be 'auto', 'linear' or 'log', got {xscale!r}")
    fig, ax = _subplots(figsize=(6.4, 4.0))
    all_x = np.concatenate([np.asarray(xs, dtype=float) for xs, _ in series.values()])
    for label, (xs, ys) in series.items():
        x = np.asarray(xs, dtype=float)
        order = np.argsort(x)
        ax.plot(x[order], np.asarray(ys, dtype=float)[order], marker="o", label=label,
                linestyle="-" if len(np.unique(x)) == len(x) else "none")
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--",
                   label=f"uncorrected baseline ({baseline:.2f})")
    if xscale == "log" or (xscale == "auto" and _log_axis(all_x)):
        ax.set_xscale("log", base=2)
        ticks = np.unique(all_x)
        if len(ticks) <= 12:  # label the swept values themselves (1, 8, 64), not powers of 2
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    # beside the axes, so that no line or point is hidden behind it
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
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
    # constrained layout keeps each row's titles clear of the axis labels of the row above
    fig, axes = _subplots(len(roles), len(directions), squeeze=False, layout="constrained",
                             figsize=(5.8 * len(directions), 4.8 * len(roles)))
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
                ax.add_patch(Rectangle((g["ks"].index(k) - 0.5, g["alphas"].index(a) - 0.5),
                                           1, 1, fill=False, edgecolor="red", linewidth=2))
        what = ("chooses α, k (red)" if g["role"] == "selection"
                else "ANALYSIS ONLY, chooses nothing; red: the run's α, k")
        ax.set_title(f"{g['direction']}: R@1 on the {g['split']} split\n{what}", fontsize=9)
    return _save(fig, path)


def comparison_points(rows: Sequence[Mapping], path: str | Path, *, title: str = "",
                      paper_label: str = "paper") -> Path:
    """Our value with its 95% CI beside the paper's: a row per table cell, a panel per metric.

    rows: dicts with ``label`` (the row's text), ``metric`` (its panel, e.g. "R@1"), ``ours``,
    ``ci_low``, ``ci_high`` and ``paper`` (each a number or None). Rows with neither our value
    nor the paper's are left out; panels keep the order in which their metric first appears.
    """
    rows = [r for r in rows if r.get("ours") is not None or r.get("paper") is not None]
    if not rows:
        raise ValueError("comparison_points needs at least one row with our or the paper's value")
    metrics = list(dict.fromkeys(str(r["metric"]) for r in rows))
    per_metric = [[r for r in rows if str(r["metric"]) == m] for m in metrics]
    longest = max(len(str(r["label"])) for r in rows)
    fig, axes = _subplots(len(metrics), 1, squeeze=False, layout="constrained",
                             figsize=(4.5 + 0.065 * longest, 0.9 * len(metrics) + 0.3 * len(rows)
                                      + (0.4 if title else 0.0)),
                             gridspec_kw={"height_ratios": [len(p) + 1.5 for p in per_metric]})
    has_paper = any(r.get("paper") is not None for r in rows)
    for ax, metric, part in zip(axes[:, 0], metrics, per_metric):
        y = np.arange(len(part))[::-1]  # the first row on top
        for yi, r in zip(y, part):
            if r.get("ours") is not None:
                lo, hi = r.get("ci_low"), r.get("ci_high")
                err = None if lo is None or hi is None else [[r["ours"] - lo], [hi - r["ours"]]]
                ax.errorbar(r["ours"], yi, xerr=err, fmt="o", color="tab:blue", capsize=3,
                            markersize=5)
            if r.get("paper") is not None:
                ax.plot(r["paper"], yi, "D", color="tab:orange", markerfacecolor="none",
                        markersize=7, markeredgewidth=1.5)
        ax.set_yticks(y, [str(r["label"]) for r in part], fontsize=8)
        ax.set_ylim(-0.7, len(part) - 0.3)
        ax.set_xlabel(f"{metric} (%)" if metric.startswith("R@") else metric)
        ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], marker="o", color="tab:blue", linestyle="none",
                          label="ours (95% CI)")]
    if has_paper:
        handles.append(Line2D([], [], marker="D", color="tab:orange", linestyle="none",
                                  markerfacecolor="none", markeredgewidth=1.5,
                                  label=paper_label))
    axes[0, 0].legend(handles=handles, fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0),
                      ncols=2, frameon=False, borderaxespad=0.2)
    if title:
        fig.suptitle(title if has_paper else f"{title}\n(the paper has no numbers for these runs)",
                     fontsize=10)
    return _save(fig, path)
