"""What a user reads after a run, checked against plain computations: the comparison's R@k, CIs
and paired deltas against float64 brute force and SciPy's bootstrap; the printed table of a
results.json read back; the report's one-line errors, skipped files and checkpoint matching.
Fake run folders come from ``tests/test_reports.py``'s ``_fake_run``; no pipeline runs."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from nnn.evaluation import EvalSettings, compare
from nnn.methods import NNN
from nnn.paper import make_report
from nnn.paper.cli import main as make_tables_main
from nnn.paper.numbers import paper_model_of
from nnn.results import format_sweep_table, format_table, read_results, write_results
from nnn.task import RetrievalTask
from tests.conftest import unit_rows
from tests.test_reports import _fake_run


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _ranks64(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of the best relevant item, ties counted against the query (float64)."""
    best = np.where(relevant, scores, -np.inf).max(axis=1)
    return 1 + ((scores >= best[:, None]) & ~relevant).sum(axis=1)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_compare_matches_float64_brute_force_and_scipy_bootstrap(direction):
    rng = np.random.default_rng(3)
    n_img, per, d, k, alpha, n_boot = 37, 3, 16, 5, 0.75, 199
    images = unit_rows(rng.standard_normal((n_img, d)))
    c2i = np.repeat(np.arange(n_img), per)
    texts = unit_rows(images[c2i] + 1.1 * rng.standard_normal((n_img * per, d)))
    ref_img = unit_rows(rng.standard_normal((53, d)))
    ref_txt = unit_rows(ref_img[rng.integers(0, 53, 71)] + rng.standard_normal((71, d)))
    if direction == "t2i":
        task = RetrievalTask(direction, images, texts, c2i, ref_txt, ref_img)
        relevant = c2i[:, None] == np.arange(n_img)[None, :]
        groups = c2i
    else:
        task = RetrievalTask(direction, texts, images, c2i, ref_img, ref_txt)
        relevant = np.arange(n_img)[:, None] == c2i[None, :]
        groups = np.arange(n_img)
    s = EvalSettings(ks=(1, 2, 7), n_boot=n_boot, batch_size=13, seed=4, device="cpu")
    c = compare(task, NNN(k=k, alpha=alpha, precision="float32"), s, {})

    g, q, bank = (x.astype(np.float64) for x in (task.gallery, task.queries, task.query_bank))
    bias = alpha * -np.sort(-(bank @ g.T), axis=0)[:k].mean(axis=0)
    ranks = {"baseline": _ranks64(q @ g.T, relevant), "method": _ranks64(q @ g.T - bias, relevant)}
    units = np.unique(groups)
    size = np.array([(groups == u).sum() for u in units], dtype=float)
    for kk in s.ks:
        hits = {side: np.array([(r[groups == u] <= kk).sum() for u in units], dtype=float)
                for side, r in ranks.items()}
        hits["delta"] = hits["method"] - hits["baseline"]
        for side, h in hits.items():
            ci = stats.bootstrap((np.arange(len(units)),),
                                 lambda i, axis=-1: 100 * h[i].sum(-1) / size[i].sum(-1),
                                 n_resamples=n_boot, method="percentile", vectorized=True,
                                 rng=np.random.default_rng(s.seed)).confidence_interval
            got = {"baseline": c.baseline, "method": c.method, "delta": c.delta_ci}[side]
            key = f"{direction}/R@{kk}"
            if side != "delta":  # the delta's point value is results' metrics.delta (deltas())
                assert got[key] == pytest.approx(100 * h.sum() / size.sum(), abs=1e-9)
            assert (got[key + "_ci_low"], got[key + "_ci_high"]) == \
                pytest.approx((ci.low, ci.high), abs=1e-9), (side, key)


def _results(tmp_path: Path, *, level: float = 0.95) -> dict:
    """A results.json as the pipeline writes it (t2i before i2t, R@1, R@5, R@10), read back."""
    metrics = {"baseline": {}, "method": {}, "delta": {}}
    for d in ("t2i", "i2t"):
        for k, (b, m) in ((1, (50.0, 60.0)), (5, (70.0, 71.5)), (10, (80.0, 79.0))):
            key = f"{d}/R@{k}"
            metrics["baseline"].update({key: b, key + "_ci_low": b - 2, key + "_ci_high": b + 2})
            metrics["method"].update({key: m, key + "_ci_low": m - 2, key + "_ci_high": m + 2})
            metrics["delta"].update({key: m - b, key + "_ci_low": m - b - 1.5,
                                     key + "_ci_high": m - b + 1.5})
    write_results(tmp_path, {"status": "completed", "name": "r", "metrics": metrics,
                             "method": {"name": "NNN"}, "config": {"eval": {"ci_level": level}}})
    return read_results(tmp_path)


def test_printed_table_of_a_results_json_read_back_keeps_directions_and_k_in_order(tmp_path):
    lines = format_table(_results(tmp_path)).splitlines()
    keys = [line.split()[0] for line in lines if "/R@" in line]
    assert keys == ["t2i/R@1", "t2i/R@5", "t2i/R@10", "i2t/R@1", "i2t/R@5", "i2t/R@10"]
    (r10,) = [line for line in lines if line.startswith("t2i/R@10")]
    assert r10.endswith("-1.00 [-2.5, +0.5]")  # a signed delta and a signed paired CI
    assert "+10.00 [+8.5, +11.5]" in format_table(_results(tmp_path))


def test_printed_timings_of_a_results_json_read_back_are_in_run_order(tmp_path):
    order = ["load", "embed", "t2i/tune", "t2i/fit", "t2i/evaluate", "t2i/analysis_alpha_k",
             "t2i/fit/baseline", "t2i/evaluate/baseline", "i2t/fit", "i2t/evaluate",
             "i2t/fit/baseline", "i2t/evaluate/baseline", "objective", "total"]
    write_results(tmp_path, {"status": "completed", "name": "r", "method": {"name": "NNN"},
                             "timings_s": {k: 1.0 for k in order}})  # written with sorted keys
    (line,) = [x for x in format_table(read_results(tmp_path)).splitlines()
               if x.startswith("wall time")]
    assert line == "wall time (s): " + ", ".join(f"{k} 1.00" for k in order)


def test_printed_table_names_the_runs_ci_level(tmp_path):
    header = format_table(_results(tmp_path, level=0.9)).splitlines()[1]
    assert "baseline [90% CI]" in header and "delta [paired 90% CI]" in header
    assert "95%" not in header


def test_report_notes_runs_whose_cis_are_not_95_percent(tmp_path):
    _results(tmp_path / "runs" / "0", level=0.8)
    make_report([tmp_path / "runs"], tmp_path / "report", tables=["runs"])
    md = (tmp_path / "report" / "tables.md").read_text()
    assert "CIs at another level than 95% in 1 of 1 runs (eval.ci_level: 0.8 in" in md


def test_sweep_and_report_tables_sign_their_deltas(tmp_path):
    columns = ["job", "t2i/R@1 baseline", "t2i/R@1 delta"]
    table = format_sweep_table(columns, [{"job": "0", "t2i/R@1 baseline": 50.0,
                                          "t2i/R@1 delta": 0.6}])
    assert table.splitlines()[-1].split() == ["0", "50.00", "+0.60"]
    _fake_run(tmp_path / "runs" / "0", r1=(58.1, 63.3))
    make_report([tmp_path / "runs"], tmp_path / "report", tables=["runs"])
    assert "| 58.10 | 63.30 | +5.20 |" in (tmp_path / "report" / "tables.md").read_text()


def test_sweep_table_shows_long_swept_floats_short_and_keeps_ints_and_words():
    columns = ["job", "method.alpha", "method.k", "method.backend"]
    table = format_sweep_table(columns, [{"job": "0", "method.alpha": "0.8232202558909871",
                                          "method.k": "128", "method.backend": "exact"},
                                         {"job": "1", "method.alpha": "1e-3", "method.k": "8",
                                          "method.backend": "faiss"}])
    assert [line.split() for line in table.splitlines()[2:]] == [
        ["0", "0.8232", "128", "exact"], ["1", "0.001", "8", "faiss"]]


def test_report_out_that_is_a_file_is_one_line_and_exit_1(tmp_path, caplog):
    _fake_run(tmp_path / "runs" / "0")
    (tmp_path / "taken").write_text("x")
    with caplog.at_level(logging.ERROR, logger="make_tables"):
        assert make_tables_main([str(tmp_path / "runs"), "--out", str(tmp_path / "taken")]) == 1
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "is a file; pass a folder" in record.getMessage()
    assert "\n" not in record.getMessage()


@pytest.mark.parametrize("text", ["[1, 2]", "null", '"completed"', "3", "true"])
def test_report_skips_a_results_json_that_is_not_an_object(tmp_path, caplog, text):
    _fake_run(tmp_path / "runs" / "0")
    (tmp_path / "runs" / "1").mkdir()
    (tmp_path / "runs" / "1" / "results.json").write_text(text)
    with caplog.at_level(logging.WARNING):
        make_report([tmp_path / "runs"], tmp_path / "report", tables=["runs"])
    assert len(_csv(tmp_path / "report" / "runs.csv")) == 1
    assert any("not a run's results" in r.getMessage() for r in caplog.records)


def test_paper_model_follows_the_checkpoint_not_only_the_choice():
    assert paper_model_of("clip", {"model_name": "ViT-B-32", "pretrained": "openai"}) == "CLIP"
    assert paper_model_of("clip", {}) == "CLIP"  # a config without a checkpoint: the choice
    assert paper_model_of("clip", {"model_name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}) \
        is None
    assert paper_model_of("blip_coco", {"model_id": "Salesforce/blip-itm-base-flickr"}) == \
        "BLIP ft.Flickr"
    assert paper_model_of("precomputed", {"root": "x", "name": "clip"}) is None


def test_report_keeps_two_open_clip_checkpoints_apart(tmp_path):
    sweep = tmp_path / "paper_table1"
    for job, (pretrained, r1) in enumerate((("openai", (58.0, 63.0)),
                                            ("laion2b_s34b_b79k", (61.0, 66.0)))):
        _fake_run(sweep / str(job), model="open_clip", dataset="flickr30k",
                  experiment="paper_table1", r1=r1,
                  model_config={"model_name": "ViT-B-32", "pretrained": pretrained})
    make_report([sweep], tmp_path / "report", tables=["table1"])
    rows = {(r["setting"], r["column"]): r for r in _csv(tmp_path / "report" / "table1.csv")}
    openai = rows[("open_clip[ViT-B-32/openai]/flickr30k/t2i", "Orig")]
    laion = rows[("open_clip[ViT-B-32/laion2b_s34b_b79k]/flickr30k/t2i", "Orig")]
    assert (openai["ours"], openai["paper"]) == ("58.0", "58.82")
    assert (laion["ours"], laion["paper"]) == ("61.0", "")
    assert "## Warnings" not in (tmp_path / "report" / "tables.md").read_text()


def test_k_sweep_leaves_out_a_run_without_a_fixed_k_with_a_warning(tmp_path):
    sweep = tmp_path / "sweep"
    for i, k in enumerate((4, None, 16)):
        _fake_run(sweep / str(i), model="clip", dataset="coco", experiment="paper_k_sweep",
                  params={"alpha": 0.75, "k": k})
    make_report([sweep], tmp_path / "report", tables=["k_sweep"])
    text = (tmp_path / "report" / "tables.md").read_text()
    assert "k=4" in text and "k=16" in text
    assert f"k sweep: {sweep / '1'} left out, its k is None" in text


def test_alpha_k_table_skips_a_grid_without_values(tmp_path):
    from nnn.paper.run_tables import alpha_k_table
    from nnn.paper.runs import load_runs

    run = _fake_run(tmp_path / "run", experiment="ablation_alpha_k")
    results = read_results(run)
    grid = {"split": "test", "axes": {"alpha": [0.5, 0.75], "k": [1, 8]}}
    results["analysis"] = {"alpha_k": {"t2i": {**grid, "table": [[None, None], [None, None]]},
                                       "i2t": {**grid, "table": [[50.0, 51.0], [52.0, 49.0]]}}}
    write_results(run, results)
    (loaded,) = load_runs([run])
    (tmp_path / "out").mkdir()
    _, rows = alpha_k_table([loaded], tmp_path / "out")
    assert [(r["direction"], r["best (alpha, k) on this split"]) for r in rows] == \
        [("i2t", "(0.75, 1)")]
