"""Tables of what the runs hold, whatever the paper has: every run, alpha x k grids, hubs.

Each returns ``(columns, rows)`` (rows: dicts), ready for ``write_table_csv`` and
``rows_markdown``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nnn.ablations import HUB_COUNTS_NPZ, hub_occupancy, read_hub_counts, top_hubs
from nnn.plots import alpha_k_heatmap
from nnn.paper.runs import Run
from nnn.results import alpha_k_grids

#: experiments whose runs feed the hub tables (besides runs that computed ``analysis.hubs``)
HUB_EXPERIMENTS = ("paper_hubness", "ablation_hubs")


def runs_table(runs: Sequence[Run]) -> tuple[list[str], list[dict]]:
    """Every run: experiment, data, references, method and its parameters, R@1 per direction."""
    columns = ["run", "experiment", "dataset", "refs", "model", "method", "direction",
               "parameters", "R@1 baseline", "R@1 method", "delta"]
    rows = []
    for run in runs:
        for d in run.directions():
            b, m, delta = (run.metric(s, f"{d}/R@1")[0] for s in ("baseline", "method", "delta"))
            chosen = run.chosen(d)
            params = ", ".join(f"{k}={v}" for k, v in chosen.items()
                               if k in ("alpha", "k", "beta", "beta_query", "beta_gallery", "lam",
                                        "backend", "index"))
            rows.append({"run": str(run.dir), "experiment": run.experiment or "-",
                         "dataset": run.dataset, "refs": run.ref_dataset, "model": run.model,
                         "method": run.method, "direction": d,
                         "parameters": params + (" (tuned)" if run.results.get("tuning") else ""),
                         "R@1 baseline": b, "R@1 method": m, "delta": delta})
    return columns, rows


def alpha_k_table(runs: Sequence[Run], out: Path) -> tuple[list[str], list[dict]]:
    """Per run with a test-split grid (``analysis.alpha_k``, e.g. experiment=ablation_alpha_k),
    direction and split: the best grid point and R@1 at the chosen (alpha, k); the heat maps
    are re-drawn as ``alpha_k_<n>.png`` in ``out``."""
    columns = ["run", "direction", "split", "role", "best (alpha, k) on this split",
               "best R@1", "chosen (alpha, k)", "R@1 at chosen", "heat map"]
    rows = []
    with_grid = [r for r in runs if (r.results.get("analysis") or {}).get("alpha_k")
                 or r.experiment == "ablation_alpha_k"]
    for n, run in enumerate(r for r in with_grid if alpha_k_grids(r.results)):
        grids = alpha_k_grids(run.results)
        png = alpha_k_heatmap(grids, out / f"alpha_k_{n}.png")
        for g in grids:
            cells = [(v, a, k) for a, row in zip(g["alphas"], g["table"])
                     for k, v in zip(g["ks"], row) if v is not None]
            if not cells:  # a grid without a value (every point failed): nothing to show
                continue
            best = max(cells, key=lambda c: c[0])  # first of equal values: grid order
            at_chosen = None
            if g["chosen"] is not None and g["chosen"][0] in g["alphas"] \
                    and g["chosen"][1] in g["ks"]:
                at_chosen = g["table"][g["alphas"].index(g["chosen"][0])][
                    g["ks"].index(g["chosen"][1])]
            role = ("selection (chooses alpha, k)" if g["role"] == "selection"
                    else "ANALYSIS ONLY (chooses nothing)")
            rows.append({"run": str(run.dir), "direction": g["direction"], "split": g["split"],
                         "role": role, "best (alpha, k) on this split": f"({best[1]:g}, {best[2]})",
                         "best R@1": best[0],
                         "chosen (alpha, k)": "-" if g["chosen"] is None
                         else f"({g['chosen'][0]:g}, {g['chosen'][1]})",
                         "R@1 at chosen": at_chosen, "heat map": png.name})
    return columns, rows


def _hub_analysis(run: Run, top: int = 10) -> dict | None:
    """``{direction: {"top": rows, "occupancy": rows}}`` from results.json or the counts file."""
    hubs = (run.results.get("analysis") or {}).get("hubs")
    if hubs:
        return hubs
    if (run.dir / HUB_COUNTS_NPZ).is_file():
        counts = read_hub_counts(run.dir)
        return {d: {"top": top_hubs(b, a, top=min(top, len(b))), "occupancy": hub_occupancy(b, a)}
                for d, (b, a) in counts.items()}
    return None


def hubs_tables(runs: Sequence[Run], top: int = 10) -> dict[str, tuple[list[str], list[dict]]]:
    """``hubs_top`` (the biggest hubs, N_1 before -> after) and ``hubs_occupancy`` (items per
    N_1 bin, before -> after), for the runs of the hub experiments and runs that computed them
    (``analysis.top_hubs``)."""
    chosen = [r for r in runs if r.experiment in HUB_EXPERIMENTS
              or (r.results.get("analysis") or {}).get("hubs")]
    top_cols = ["run", "direction", "rank", "item", "N_1 before", "N_1 after",
                "share before (%)", "share after (%)"]
    occ_cols = ["run", "direction", "N_1", "items before", "items after"]
    top_rows, occ_rows = [], []
    for run in chosen:
        hubs = _hub_analysis(run, top)
        for d, h in (hubs or {}).items():
            top_rows += [{"run": str(run.dir), "direction": d, "rank": r["rank"],
                          "item": r["item"], "N_1 before": r["before"], "N_1 after": r["after"],
                          "share before (%)": r["before_share"],
                          "share after (%)": r["after_share"]} for r in h["top"][:top]]
            occ_rows += [{"run": str(run.dir), "direction": d, "N_1": r["bin"],
                          "items before": r["before"], "items after": r["after"]}
                         for r in h["occupancy"]]
    return {"hubs_top": (top_cols, top_rows), "hubs_occupancy": (occ_cols, occ_rows)}
