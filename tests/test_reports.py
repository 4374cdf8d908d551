"""Files people read: CSV precision, the report's paper matching, job order and PNGs, and the
layout of the plots. Runs are tiny fake run folders written by ``nnn.results.write_results``
(no pipeline runs), so every test here takes well under a second."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

import nnn.plots as plots
from nnn.results import (RESULTS_CSV, RESULTS_JSON, SWEEP_CSV, SWEEP_JSON, write_results,
                         write_sweep_summary, write_table_csv)
from nnn.paper import make_report
from nnn.paper.cli import main as make_tables_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _fake_run(out: Path, *, model="none", dataset="synthetic", refs=None, experiment=None,
              method="NNN", params=None, r1=(58.1, 63.3), model_config=None,
              directions=("t2i",)) -> Path:
    """A completed run's folder: results.json/.csv with R@1 (and CIs) of baseline and method."""
    base, meth = r1
    metrics = {"baseline": {}, "method": {}, "delta": {}}
    for d in directions:
        for side, v in (("baseline", base), ("method", meth)):
            metrics[side].update({f"{d}/R@1": v, f"{d}/R@1_ci_low": v - 1.3,
                                  f"{d}/R@1_ci_high": v + 1.3})
        metrics["delta"][f"{d}/R@1"] = meth - base
    write_results(out, {
        "status": "completed", "error": None, "name": experiment or "run",
        "method": {"name": method, "params": params or {"alpha": 0.75, "k": 16}},
        "data": {"dataset": dataset, "reference_dataset": refs or dataset},
        "metrics": metrics, "choices": {"model": model, "dataset": dataset,
                                        "experiment": experiment},
        "config": {"model": model_config or {}, "reference": {"fraction": 0.2}}})
    return out


# -- CSV precision ---------------------------------------------------------------------------
def test_results_csv_is_rounded_and_results_json_keeps_full_precision(tmp_path):
    _fake_run(tmp_path, r1=(51.2, 60.260000000000002))
    row = _csv(tmp_path / RESULTS_CSV)[0]
    assert (row["baseline"], row["method"], row["delta"]) == ("51.2", "60.26", "9.06")
    assert row["method_ci_low"] == "58.96"
    full = json.loads((tmp_path / RESULTS_JSON).read_text())["metrics"]["delta"]["t2i/R@1"]
    assert full == 60.260000000000002 - 51.2 and repr(full) != "9.06"  # 9.060000000000002


def test_table_csv_rounds_measurements_but_keeps_hyperparameters(tmp_path):
    rows = [{"alpha": 1.375, "k": 512, "R@1": 60.245000000000005, "t": -0.001, "x": None,
             "name": "a"}]
    write_table_csv(tmp_path / "t.csv", ["alpha", "k", "R@1", "t", "x", "name"], rows)
    assert _csv(tmp_path / "t.csv") == [{"alpha": "1.375", "k": "512", "R@1": "60.25",
                                         "t": "0.0", "x": "", "name": "a"}]
    write_table_csv(tmp_path / "u.csv", ["R@1"], rows, decimals=None)
    assert _csv(tmp_path / "u.csv") == [{"R@1": "60.245000000000005"}]


def test_sweep_summary_csv_is_rounded_and_its_json_is_not(tmp_path):
    columns = ["job", "method.alpha", "t2i/R@1 delta"]
    write_sweep_summary(tmp_path, columns, [{"job": "0", "method.alpha": "0.125",
                                             "t2i/R@1 delta": 0.6000000000000014}])
    assert _csv(tmp_path / SWEEP_CSV) == [{"job": "0", "method.alpha": "0.125",
                                           "t2i/R@1 delta": "0.6"}]
    assert json.loads((tmp_path / SWEEP_JSON).read_text())["rows"][0]["t2i/R@1 delta"] == \
        0.6000000000000014


# -- the report: paper numbers from the runs' configs, job order, PNGs ------------------------
def test_report_infers_the_papers_model_and_dataset_from_the_run(tmp_path):
    sweep = tmp_path / "paper_table1"
    _fake_run(sweep / "0", model="clip", dataset="flickr30k", experiment="paper_table1")
    _fake_run(sweep / "1", model="open_clip", dataset="coco", refs="flickr30k",
              experiment="paper_table1",
              model_config={"model_name": "ViT-B-32", "pretrained": "openai"})
    # exactly README's command: no --paper-model / --paper-dataset
    assert make_tables_main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    rows = {(r["setting"], r["column"]): r for r in _csv(tmp_path / "report" / "table1.csv")}
    assert rows[("clip/flickr30k/t2i", "Orig")]["paper"] == "58.82"
    assert rows[("clip/flickr30k/t2i", "NNN (Flickr30k refs)")]["paper"] == "64.6"
    assert rows[("clip/flickr30k/t2i", "NNN (Flickr30k refs)")]["diff"] == "-1.3"
    open_clip = rows[("open_clip[ViT-B-32/openai]/coco/t2i", "NNN (Flickr30k refs)")]
    assert (open_clip["paper"], open_clip["paper_setting"]) == ("33.45", "CLIP/COCO")
    md = (tmp_path / "report" / "tables.md").read_text()
    assert "No paper numbers" not in md and "![table1](table1.png)" in md
    assert (tmp_path / "report" / "table1.png").read_bytes()[:8] == PNG_MAGIC


def test_report_says_in_one_line_when_the_paper_has_no_row_and_flags_override(tmp_path):
    _fake_run(tmp_path / "runs" / "0", experiment="paper_table1")  # model=none, synthetic
    out = tmp_path / "report"
    make_report([tmp_path / "runs"], out, tables=["table1"])
    assert all(r["paper"] == "" for r in _csv(out / "table1.csv"))
    md = (out / "tables.md").read_text()
    (line,) = [x for x in md.splitlines() if x.startswith("No paper numbers")]
    assert "1 of 1 runs" in line and "model=none on dataset=synthetic" in line
    assert "--paper-model" in line
    assert "(the paper has no numbers for these runs)" not in md  # that is the PNG's title
    make_report([tmp_path / "runs"], out, tables=["table1"],
                            paper_model="SigLIP", paper_dataset="coco")
    rows = {r["column"]: r["paper"] for r in _csv(out / "table1.csv")}
    assert rows == {"Orig": "47.15", "NNN (COCO refs)": "50.24"}
    assert "No paper numbers" not in (out / "tables.md").read_text()


def test_unknown_paper_model_is_refused_with_the_valid_names(tmp_path, capsys):
    _fake_run(tmp_path / "runs" / "0", experiment="paper_table1")
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage and one error line
        make_tables_main([str(tmp_path / "runs"), "--paper-model", "CLIPP"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "invalid choice: 'CLIPP'" in err
    assert "'CLIP'" in err and "'SigLIP'" in err and "'BLIP ft.COCO'" in err
    with pytest.raises(ValueError, match=r"--paper-model must be one of \[.*'CLIP'.*\], "
                                         r"got 'clip'"):
        make_report([tmp_path / "runs"], tmp_path / "report", paper_model="clip")
    assert not (tmp_path / "report").exists()


def test_report_lists_sweep_jobs_in_numeric_order(tmp_path):
    sweep = tmp_path / "sweep"
    for job in range(12):
        _fake_run(sweep / str(job), params={"alpha": 0.75, "k": job + 1})
    make_report([tmp_path], tmp_path / "report", tables=["runs"])
    jobs = [Path(r["run"]).name for r in _csv(tmp_path / "report" / "runs.csv")]
    assert jobs == [str(j) for j in range(12)]


def test_report_shows_tuned_alpha_in_full(tmp_path):
    run = _fake_run(tmp_path / "run", model="clip", dataset="coco")
    results = json.loads((run / RESULTS_JSON).read_text())
    results["tuning"] = {"t2i": {"method": "nnn", "best": {"alpha": 1.375, "k": 256}}}
    (run / RESULTS_JSON).write_text(json.dumps(results))
    make_report([run], tmp_path / "report", tables=["chosen"])
    rows = {r["metric"]: r for r in _csv(tmp_path / "report" / "chosen.csv")}
    assert (rows["alpha"]["ours"], rows["alpha"]["paper"], rows["k"]["paper"]) == \
        ("1.375", "0.75", "256")
    assert "| 1.375 |" in (tmp_path / "report" / "tables.md").read_text()


# -- plot layout -------------------------------------------------------------------------------
@pytest.fixture
def figures(monkeypatch):
    """The figures the plotting functions would save (drawn, so text extents are known)."""
    saved = []

    def keep(fig, path):
        FigureCanvasAgg(fig).draw()  # attaches an Agg canvas: text extents become known
        saved.append(fig)
        return Path(path)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def test_k_gets_a_log_axis_and_alpha_a_linear_one(figures, tmp_path):
    plots.metric_vs_param({"a": ([1, 8, 64, 512], [1, 2, 3, 4])}, tmp_path / "k.png",
                          xlabel="k", ylabel="R@1")
    plots.metric_vs_param({"a": ([0.25, 0.5, 1.5], [1, 2, 3])}, tmp_path / "a.png",
                          xlabel="alpha", ylabel="R@1", baseline=1.5)
    (k_ax,), (a_ax,) = (f.axes for f in figures)
    assert k_ax.get_xscale() == "log" and a_ax.get_xscale() == "linear"
    assert [t.get_text() for t in k_ax.get_xticklabels()] == ["1", "8", "64", "512"]
    with pytest.raises(ValueError, match="xscale"):
        plots.metric_vs_param({"a": ([1], [1])}, tmp_path / "x.png", xlabel="k", ylabel="R@1",
                              xscale="logit")


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_alpha_k_heat_map_rows_do_not_overlap(figures, tmp_path):
    alphas, ks = [0.25, 0.5, 1.5], [1, 16, 128, 512]
    table = np.arange(len(alphas) * len(ks), dtype=float).reshape(len(alphas), -1).tolist()
    grids = [{"direction": d, "split": split, "role": role, "alphas": alphas, "ks": ks,
              "table": table, "chosen": (0.5, 16)}
             for d in ("t2i", "i2t") for split, role in (("tuning", "selection"),
                                                         ("test", "analysis"))]
    plots.alpha_k_heatmap(grids, tmp_path / "alpha_k.png")
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    heat = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    texts = [t for ax in heat for t in (ax.title, ax.xaxis.label, *ax.get_xticklabels())]
    boxes = [t.get_window_extent(renderer) for t in texts if t.get_text()]
    assert len(heat) == 4 and len(boxes) > 8
    assert not [(i, j) for i in range(len(boxes)) for j in range(i) if _overlap(boxes[i], boxes[j])]


def test_comparison_points_needs_a_value_and_writes_a_png(tmp_path):
    rows = [{"label": "clip/coco/t2i  Orig", "metric": "R@1", "ours": 30.1, "ci_low": 29.5,
             "ci_high": 30.7, "paper": 30.43},
            {"label": "clip/coco/t2i  bias", "metric": "bias time (s)", "ours": 2.0,
             "ci_low": None, "ci_high": None, "paper": None}]
    path = plots.comparison_points(rows, tmp_path / "t.png", title="Table 1")
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="at least one row"):
        plots.comparison_points([{**rows[1], "ours": None}], tmp_path / "u.png")
