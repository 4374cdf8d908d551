"""Write the report: every table of ``nnn.paper.registry.TABLES`` that has runs, into one folder.

``make_report(paths, out)`` reads the completed runs under ``paths`` and writes into ``out``:

- ``tables.md``: one Markdown section per table;
- ``<table>.csv``: the same rows (comparison tables: ``COMPARE_COLUMNS``);
- PNGs: ``<table>.png`` per comparison table (ours with 95% CIs beside the paper's, a row per
  cell), ``reference_size_<setting>.png`` and ``k_sweep_<setting>.png`` (R@1 against the
  reference-set size / k, ours and the paper's), ``alpha_k_<n>.png`` (R@1 heat maps).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from nnn._atomic import atomic_write_text
from nnn.paper.comparison import (COMPARE_COLUMNS, Comparison, comparison_markdown,
                                   comparison_png, rows_markdown, sweep_plots)
from nnn.paper.numbers import DATASET_LABELS, DATASETS, PAPER_MODELS, TYPICAL_R1_CI_HALF_WIDTH
from nnn.paper.registry import ALL_TABLES, TABLES, Table
from nnn.paper.runs import Run, load_runs
from nnn.results import ci_level, write_table_csv

log = logging.getLogger(__name__)

_CI_NOTE = ("Typical 95% CI half-widths of the paper's R@1: "
            + ", ".join(f"{DATASET_LABELS[d]} {'IR' if k == 't2i' else 'TR'} +-{v}"
                        for (d, k), v in TYPICAL_R1_CI_HALF_WIDTH.items()) + ".")


def unmatched_note(runs: Sequence[Run]) -> str | None:
    """One line naming the runs the paper has no numbers for, or None when every run has a row."""
    missing = [r for r in runs if r.paper_model is None or r.paper_dataset is None]
    if not missing:
        return None
    kinds = ", ".join(f"model={m} on dataset={d}"
                      for m, d in dict.fromkeys((r.model, r.dataset) for r in missing))
    return (f"No paper numbers for {len(missing)} of {len(runs)} runs ({kinds}): the paper has "
            f"no row for this model and data; to compare with one of its rows anyway, pass e.g. "
            f"--paper-model CLIP --paper-dataset flickr30k.")


def _comparison_body(spec: Table, table: Comparison, out: Path, written: dict) -> str:
    """CSV, PNGs and the Markdown of one comparison table."""
    written[spec.name] = write_table_csv(out / f"{spec.name}.csv", COMPARE_COLUMNS, table.rows,
                                         exact=COMPARE_COLUMNS if spec.exact else ())
    body = comparison_markdown(table, exact=spec.exact)
    if not spec.exact:
        written[f"{spec.name}_png"] = comparison_png(table, out / f"{spec.name}.png", spec.title)
        body += f"\n\n![{spec.name}]({spec.name}.png)"
    if spec.sweep is not None:
        x_of, xlabel = spec.sweep
        body += "".join(f"\n\n![{p.stem}]({p.name})" for p in sweep_plots(
            table, out, x_of=x_of, xlabel=xlabel, name=spec.name))
    return body


def _rows_body(parts: dict, out: Path, written: dict) -> str:
    """CSVs and the Markdown of a table of what the runs hold (``{name: (columns, rows)}``)."""
    bodies = []
    for key, (columns, rows) in parts.items():
        written[key] = write_table_csv(out / f"{key}.csv", columns, rows)
        bodies.append(rows_markdown(columns, rows))
    return "\n\n".join(bodies)


def _section(spec: Table, runs: Sequence[Run], out: Path, written: dict,
             warnings: list[str]) -> str | None:
    """The Markdown section of one table (its files added to ``written``), None without rows."""
    built = spec.build(spec.runs(runs), out)
    if isinstance(built, Comparison):
        if not built.rows:
            return None
        warnings += built.warnings
        body = _comparison_body(spec, built, out, written)
    else:
        parts = {k: v for k, v in built.items() if v[1]}
        if not parts:
            return None
        body = _rows_body(parts, out, written)
    return f"## {spec.name}: {spec.title}\n\n" + (f"{spec.note}\n\n" if spec.note else "") + body


def make_report(paths: Sequence[str | Path], out: str | Path, *,
                tables: Sequence[str] = ALL_TABLES, paper_model: str | None = None,
                paper_dataset: str | None = None) -> dict[str, Path]:
    """Build the tables from the runs under ``paths`` into ``out``; returns {name: file}."""
    bad = [t for t in tables if t not in TABLES]
    if bad:
        raise ValueError(f"unknown tables {bad}; choose from {list(ALL_TABLES)}")
    if paper_dataset is not None and paper_dataset not in DATASETS:
        raise ValueError(f"--paper-dataset must be one of {list(DATASETS)}, got {paper_dataset!r}")
    if paper_model is not None and paper_model not in PAPER_MODELS:
        raise ValueError(f"--paper-model must be one of {list(PAPER_MODELS)}, got {paper_model!r}")
    runs = load_runs(paths, paper_model=paper_model, paper_dataset=paper_dataset)
    if not runs:
        raise FileNotFoundError(f"no completed runs (results.json with status 'completed') "
                                f"under {[str(p) for p in paths]}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file; pass a folder for the report "
                                 "(it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    unmatched = unmatched_note(runs)
    if unmatched:
        log.warning("%s", unmatched)
    sections = [f"# Results against the paper\n\n{len(runs)} runs from "
                f"{', '.join(str(p) for p in paths)}. Ours: this project's runs, with 95% "
                f"bootstrap CIs; paper: Chowdhury et al. (EMNLP 2024). {_CI_NOTE}"
                + (f"\n\n{unmatched}" if unmatched else "")]
    written: dict[str, Path] = {}
    other_level = [r for r in runs if ci_level(r.results) != 0.95]
    warnings = [f"CIs at another level than 95% in {len(other_level)} of {len(runs)} runs "
                f"(eval.ci_level: "
                f"{', '.join(f'{ci_level(r.results):g} in {r.dir}' for r in other_level)}); "
                "their [CI] cells are at that level"] if other_level else []
    for name in tables:
        section = _section(TABLES[name], runs, out, written, warnings)
        if section is not None:
            sections.append(section)
    if warnings:
        sections.append("## Warnings\n\n" + "\n".join(f"- {w}" for w in warnings))
    written["markdown"] = atomic_write_text(out / "tables.md", "\n\n".join(sections) + "\n")
    for w in warnings:
        log.warning("%s", w)
    return written
