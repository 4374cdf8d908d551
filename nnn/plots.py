"""PNG figures of a run and of a sweep (matplotlib, Agg backend: no display needed).

- ``hubness_histogram``: distribution of N_1 (how often each gallery item is some query's top-1)
  before and after a correction, one panel per retrieval direction.
- ``metric_vs_param``: a metric (e.g. R@1) against a swept parameter (e.g. α), one line per
  setting of the other swept parameters.

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
