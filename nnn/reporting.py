"""What a finished run leaves for people: its files beside ``results.json`` and its logger run.

- ``write_run_files``: N_k counts and their histogram (``hubness_counts.npz``, ``hubness.png``)
  and, where computed, the alpha x k heat map and grid (``alpha_k.png/csv``) and the hub tables
  (``top_hubs.csv``, ``hub_occupancy.csv``). ``results.json`` itself is written by
  ``nnn.results.write_results`` before any of this, so a plotting or logging failure never
  loses it.
- ``create_logger``: the experiment logger, or ``NullLogger`` when it cannot be created (the run
  and the sweep summary both use it; it never raises).
- ``flatten`` / ``log_to_logger``: the flattened config a logger run starts with; then a started
  run's metrics, tables and plots, and its finish.
- ``objective_value``: the number a sweeper optimises.

No config is read here: ``nnn.pipeline`` passes plain values (and the logger's factory).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nnn.loggers import NullLogger
from nnn.results import ALPHA_K_COLUMNS, CSV_COLUMNS, alpha_k_grids, alpha_k_rows, metric_rows, \
    write_table_csv

log = logging.getLogger(__name__)

HUBNESS_PNG = "hubness.png"
ALPHA_K_PNG = "alpha_k.png"
ALPHA_K_CSV = "alpha_k.csv"
TOP_HUBS_CSV = "top_hubs.csv"
HUB_OCCUPANCY_CSV = "hub_occupancy.csv"
TOP_HUBS_COLUMNS = ("direction", "rank", "item", "before", "after", "before_share", "after_share")
HUB_OCCUPANCY_COLUMNS = ("direction", "bin", "low", "high", "before", "after")

Tables = dict[str, tuple[tuple[str, ...], list[dict[str, Any]]]]


def write_run_files(results: Mapping[str, Any], counts: Mapping[str, tuple[np.ndarray, np.ndarray]],
                    out: Path, *, hubness_k: int) -> tuple[dict[str, Path], Tables]:
    """The run's files in ``out`` beside results.json (module docstring).

    ``counts``: {direction: (baseline N_k (n_g,), method N_k (n_g,))}; ``hubness_k``: the k of
    N_k. Returns (PNGs {key: path}, tables {key: (columns, rows of dicts)}) for the logger.
    """
    from nnn.ablations import HUB_COUNTS_NPZ, write_hub_counts
    from nnn.plots import alpha_k_heatmap, hubness_histogram  # matplotlib: only when plotting

    write_hub_counts(out / HUB_COUNTS_NPZ, counts)
    pngs = {"hubness": hubness_histogram(counts, out / HUBNESS_PNG,
                                         labels=("baseline", results["method"]["name"]),
                                         k=hubness_k)}
    tables: Tables = {}
    grids = alpha_k_grids(results)
    if grids:  # NNN's R@1 over (alpha, k): the tuning grid and/or the test-split analysis
        pngs["alpha_k"] = alpha_k_heatmap(grids, out / ALPHA_K_PNG)
        tables["alpha_k"] = (ALPHA_K_COLUMNS, alpha_k_rows(grids))
        write_table_csv(out / ALPHA_K_CSV, *tables["alpha_k"])
    hubs = results["analysis"].get("hubs") or {}
    for key, name, columns in (("top", TOP_HUBS_CSV, TOP_HUBS_COLUMNS),
                               ("occupancy", HUB_OCCUPANCY_CSV, HUB_OCCUPANCY_COLUMNS)):
        if hubs:
            rows = [{"direction": d, **row} for d, h in hubs.items() for row in h[key]]
            tables[Path(name).stem] = (columns, rows)
            write_table_csv(out / name, columns, rows)
    return pngs, tables


def create_logger(factory: Callable[[], Any], where: Path, what: str = "the results are"):
    """``factory()`` (e.g. instantiating ``cfg.logger``), or ``NullLogger`` with a warning when
    that fails; never raises. The warning says that ``what`` (the local files) is in ``where``."""
    try:
        return factory()
    except Exception as err:
        log.warning("could not create the logger (%s: %s); %s in %s",
                    type(err).__name__, err, what, where)
        return NullLogger()


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; empty dicts stay values."""
    flat = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def log_to_logger(logger, results: Mapping[str, Any], pngs: Mapping[str, Path],
                  tables: Tables | None = None) -> None:
    """Send metrics, the results table, extra ``tables`` ({key: (columns, rows of dicts)}) and
    the plots to a started ``logger``, then finish it; never raises."""
    m = results["metrics"]
    metrics = dict(m["method"])
    metrics.update({f"baseline/{k}": v for k, v in m["baseline"].items()})
    metrics.update({f"delta/{k}": v for k, v in m["delta"].items()})
    metrics.update({f"time/{k}": v for k, v in results["timings_s"].items()})
    metrics["objective"] = objective_value(results)
    rows = [[r[c] for c in CSV_COLUMNS] for r in metric_rows(results)]
    with logger:
        logger.log_metrics(metrics)
        logger.log_table("results", CSV_COLUMNS, rows)
        for key, (columns, dict_rows) in (tables or {}).items():
            logger.log_table(key, columns, [[r.get(c) for c in columns] for r in dict_rows])
        for key, path in pngs.items():
            logger.log_image(key, path)


def objective_value(results: Mapping[str, Any]) -> float:
    """The number a sweeper optimises (``results["objective"]["value"]``; NaN if missing)."""
    value = (results.get("objective") or {}).get("value")
    return float("nan") if value is None else float(value)
