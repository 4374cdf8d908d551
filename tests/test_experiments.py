"""Paper-table and ablation experiments end to end on tiny synthetic data, the ablation library
(``nnn.ablations``), the report (``nnn.paper``, ``experiments/make_tables.py``) and the paper's
numbers."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnn.ablations import (hub_occupancy, nnn_recall_grid, read_hub_counts, top_hubs,
                           write_hub_counts)
from nnn.hydra_callbacks import log_sweep_summary
from nnn.loggers import NullLogger, sweep_group
from nnn.methods import NNN
from nnn.config_dir import CONFIG_DIR
from nnn.pipeline import load_sets, run
from nnn.settings import compose
from nnn.paper import ALL_TABLES, make_report
from nnn.paper.cli import main as make_tables_main
from nnn.paper.numbers import RECORDS, paper_value
from nnn.results import alpha_k_grids, alpha_k_rows, read_results
from nnn.task import RetrievalTask

REPO = CONFIG_DIR.parent

PAPER_FACTS = Path(os.environ.get("NNN_PAPER_FACTS", REPO.parent / "shared" / "docs" / "paper-facts.md"))
TINY = ["debug=tiny", "dataset=synthetic", "logger=none"]
NNN_GRID = ["+tune.grid.alphas=[0.5,0.75]", "+tune.grid.ks=[4,16]"]
DB_GRID = ["+tune.grid.stages=[[[0,20],[0,20]]]"]
SHIFT_TINY = ["++reference.dataset.dim=64", "++reference.dataset.latent_dim=32",
              "++reference.dataset.n_train=700"]
ID, OOD = "dataset@reference.dataset=synthetic", "dataset@reference.dataset=synthetic_shift"
#: one job of every paper_* / ablation_* experiment (sweep values chosen here), tiny and fast
JOBS = {
    "paper_table1/0": ["method=nnn", ID, *NNN_GRID],
    "paper_table1/1": ["method=nnn", OOD, *SHIFT_TINY, *NNN_GRID],
    "paper_table1/2": ["method=db_norm", ID, *DB_GRID],
    "paper_table2/0": ["method=nnn", ID, *NNN_GRID],
    "paper_baselines/0": ["method=dn", "+tune.grid.lams=[0.3,0.5]"],
    "paper_baselines/1": ["method=dual_dis", *DB_GRID],
    "paper_baselines/2": ["method=nnn", *NNN_GRID],
    "paper_baselines/3": ["method=mp", "+tune.grid.ks=[2,8]"],
    "paper_baselines/4": ["method=ls", "+tune.grid.ks=[2,8]"],
    "paper_baselines/5": ["method=dsl", "+tune.grid.ks=[2,8]"],
    "paper_recall/0": [ID, "eval.n_boot=50", *NNN_GRID],
    "paper_k_sweep/0": ["method.k=1"],
    "paper_k_sweep/1": ["method.k=16"],
    "ablation_reference_size/0": ["reference.fraction=0.1", "method.k=8"],
    "ablation_reference_size/1": ["reference.fraction=1.0", "method.k=8"],
    "paper_reference_size/0": ["reference.fraction=0.5", "method.k=8"],
    "paper_runtime/0": ["method.backend=exact", "method.k=8"],
    "paper_runtime/1": ["method.backend=faiss", "method.k=8"],
    "ablation_backend/0": ["method.backend=faiss", "method.k=8"],
    "paper_hubness/0": NNN_GRID,
    "ablation_alpha_k/0": ["analysis.alphas=[0.5,0.75,1.0]", "analysis.ks=[1,4,16]", *NNN_GRID],
    "ablation_ood_references/0": [ID, *NNN_GRID],
    "ablation_ood_references/1": [OOD, *SHIFT_TINY, *NNN_GRID],
    "ablation_hubs/0": NNN_GRID,
}


def _experiment_options() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")
                  if p.stem.startswith(("paper_", "ablation_")))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Every job of ``JOBS`` run in-process into ``<root>/<experiment>/<n>``."""
    root = tmp_path_factory.mktemp("experiments")
    for job, overrides in JOBS.items():
        experiment = job.split("/")[0]
        run(compose([*TINY, f"experiment={experiment}", *overrides]), output_dir=root / job)
    return root


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# -- the experiment configs ------------------------------------------------------------------
def test_every_experiment_config_is_exercised_and_documented():
    options = _experiment_options()
    assert {j.split("/")[0] for j in JOBS} == set(options)
    docs = (REPO / "docs" / "experiments.md").read_text()
    for name in options:
        text = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name
        assert f"experiment={name}" in text and "make_tables.py" in text, name
        assert f"experiment={name}" in docs, f"docs/experiments.md does not show {name}"


def test_every_job_completes_with_its_protocol(runs):
    results = {job: read_results(runs / job) for job in JOBS}
    assert all(r["status"] == "completed" for r in results.values())
    for job, r in results.items():
        assert r["choices"]["experiment"] == job.split("/")[0]
    # Tables 1/2: one direction each, parameters chosen on a tuning part the size of the test split
    t1, t2 = results["paper_table1/0"], results["paper_table2/0"]
    assert set(t1["tuning"]) == {"t2i"} and "i2t/R@1" not in t1["metrics"]["method"]
    assert set(t2["tuning"]) == {"i2t"} and "t2i/R@1" not in t2["metrics"]["method"]
    assert t1["data"]["tuning_images"] == t1["data"]["test_images"] == 100
    assert t1["data"]["reference_images"] == 140  # 20% of the 700 training images
    assert results["paper_table1/1"]["data"]["reference_dataset"] == "synthetic_shift"
    assert t1["data"]["reference_dataset"] == "synthetic"
    assert results["paper_table1/2"]["method"]["name"] == "DBNorm"
    assert results["paper_baselines/1"]["method"]["params"]["dynamic"] is True
    # fixed-parameter sweeps: no tuning
    for job in ("paper_k_sweep/0", "ablation_reference_size/1", "paper_runtime/1"):
        assert results[job]["tuning"] == {}
    assert results["paper_k_sweep/0"]["method"]["params"]["alpha"] == 0.75
    assert [results[f"ablation_reference_size/{i}"]["data"]["reference_images"]
            for i in (0, 1)] == [70, 700]
    assert results["paper_runtime/1"]["method"]["params"]["index"] == "ivf"
    assert results["paper_runtime/1"]["timings_s"]["t2i/fit"] > 0


def test_ood_references_keep_the_tuning_part():
    base = [*TINY, "reference.tuning_size=test"]
    test_id, ref_id, tune_id = load_sets(compose([*base, ID]), {})
    test_ood, ref_ood, tune_ood = load_sets(compose([*base, OOD, *SHIFT_TINY]), {})
    np.testing.assert_array_equal(test_id.image, test_ood.image)
    np.testing.assert_array_equal(tune_id.image, tune_ood.image)  # chosen in-distribution
    np.testing.assert_array_equal(tune_id.text, tune_ood.text)
    assert len(ref_id.image) == len(ref_ood.image) == 140
    assert not np.allclose(ref_id.text, ref_ood.text)            # from the other dataset
    _, ref_default, _ = load_sets(compose(base), {})              # null: the same dataset
    np.testing.assert_array_equal(ref_default.text, ref_id.text)


def test_reference_dataset_of_another_dimension_is_a_clear_error(tmp_path):
    cfg = compose([*TINY, OOD])  # synthetic_shift at its default 512-d, the tiny test set is 64-d
    with pytest.raises(ValueError, match="dimension"):
        run(cfg, output_dir=tmp_path)


def test_alpha_k_analysis_equals_separate_runs(tmp_path):
    grid = run(compose([*TINY, "analysis.alpha_k=true", "analysis.alphas=[0.5,1.0]",
                        "analysis.ks=[2,8]"]), output_dir=tmp_path / "grid")
    single = run(compose([*TINY, "method.alpha=1.0", "method.k=2"]), output_dir=tmp_path / "one")
    for d in ("t2i", "i2t"):
        a = grid["analysis"]["alpha_k"][d]
        assert a["split"] == "test" and a["axes"] == {"alpha": [0.5, 1.0], "k": [2, 8]}
        assert a["table"][1][0] == pytest.approx(single["metrics"]["method"][f"{d}/R@1"])
    rows = _csv(tmp_path / "grid" / "alpha_k.csv")
    assert len(rows) == 8 and {r["role"] for r in rows} == {"analysis"}
    assert (tmp_path / "grid" / "alpha_k.png").stat().st_size > 0


def test_alpha_k_run_has_selection_and_analysis_grids(runs):
    r = read_results(runs / "ablation_alpha_k/0")
    grids = alpha_k_grids(r)
    assert [(g["role"], g["split"]) for g in grids] == [("selection", "tuning")] * 2 + \
        [("analysis", "test")] * 2
    for g in grids:  # the chosen point is the tuning split's, in both panels
        assert g["chosen"] == (r["tuning"][g["direction"]]["best"]["alpha"],
                               r["tuning"][g["direction"]]["best"]["k"])
    rows = alpha_k_rows(grids)
    assert sum(row["chosen"] for row in rows if row["role"] == "selection") == 2
    assert len(_csv(runs / "ablation_alpha_k/0" / "alpha_k.csv")) == len(rows) == 2 * 4 + 2 * 9


def test_hub_outputs(runs):
    out = runs / "ablation_hubs/0"
    counts = read_hub_counts(out)
    r = read_results(out)
    for d, (before, after) in counts.items():
        assert before.sum() == after.sum() == r["data"]["test_captions" if d == "t2i"
                                                         else "test_images"]
        assert before.max() == r["metrics"]["baseline"][f"{d}/hubness/max"]
        assert after.max() == r["metrics"]["method"][f"{d}/hubness/max"]
        assert r["analysis"]["hubs"][d]["top"] == top_hubs(before, after, top=20)
    top = _csv(out / "top_hubs.csv")
    assert len(top) == 40 and int(top[0]["before"]) == counts["t2i"][0].max()
    assert {r["direction"] for r in _csv(out / "hub_occupancy.csv")} == {"t2i", "i2t"}


# -- nnn.ablations -----------------------------------------------------------------------------
def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _grid_reference(task: RetrievalTask, alphas, ks) -> np.ndarray:
    """R@1 from the formula in float64: b(r) = alpha * mean of the k largest q'.r; a hit when a
    relevant item's score is strictly above every other item's."""
    g, q = task.gallery.astype(np.float64), task.queries.astype(np.float64)
    ref_sims = np.sort(g @ task.query_bank.astype(np.float64).T, axis=1)[:, ::-1]
    c2i = np.asarray(task.caption_to_image)
    sims = q @ g.T
    if task.direction == "t2i":
        relevant = np.zeros(sims.shape, dtype=bool)
        relevant[np.arange(len(q)), c2i] = True
    else:
        relevant = c2i[None, :] == np.arange(len(q))[:, None]
    table = np.zeros((len(alphas), len(ks)))
    for i, a in enumerate(alphas):
        for j, k in enumerate(ks):
            scores = sims - a * ref_sims[:, :k].mean(axis=1)
            best_rel = np.where(relevant, scores, -np.inf).max(axis=1)
            best_other = np.where(relevant, -np.inf, scores).max(axis=1)
            table[i, j] = 100.0 * np.mean(best_rel > best_other)
    return table


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_nnn_recall_grid_matches_the_formula(direction):
    rng = np.random.default_rng(1)
    n_img, d = 37, 24
    c2i = np.sort(np.concatenate([np.arange(n_img), rng.integers(0, n_img, 60)]))  # 1-4 captions
    images = _unit(rng, n_img, d)
    images[5] = images[3]  # duplicate gallery rows: ties, which count against the query
    texts = _unit(rng, len(c2i), d) * 0.5 + images[c2i] * 0.5
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    refs_img, refs_txt = _unit(rng, 29, d), _unit(rng, 53, d)
    if direction == "t2i":
        task = RetrievalTask("t2i", images, texts, c2i, refs_txt, refs_img)
    else:
        task = RetrievalTask("i2t", texts, images, c2i, refs_img, refs_txt)
    alphas, ks = [0.0, 0.25, 0.75, 1.5], [1, 3, 8, 29]
    table = nnn_recall_grid(task, alphas=alphas, ks=ks, batch_size=7)
    np.testing.assert_allclose(table, _grid_reference(task, alphas, ks), atol=1e-9)
    # and as separate NNN fits through the metrics module
    for i, j in ((2, 1), (3, 3)):
        r1 = task.recall_at_1(task.fit(NNN(k=ks[j], alpha=alphas[i])), batch_size=5)
        assert table[i, j] == pytest.approx(r1)


def test_nnn_recall_grid_rejects_bad_grids(hub_retrieval):
    gallery, queries, refs, _ = hub_retrieval(n_pairs=20, n_refs=10)
    task = RetrievalTask("t2i", gallery, queries, np.arange(20), refs, refs)
    with pytest.raises(ValueError, match="repeated"):
        nnn_recall_grid(task, alphas=[0.5, 0.5], ks=[1])
    with pytest.raises(ValueError, match="empty"):
        nnn_recall_grid(task, alphas=[], ks=[1])
    with pytest.raises(ValueError, match="larger than the number of references"):
        nnn_recall_grid(task, alphas=[0.5], ks=[11])


def test_top_hubs_and_occupancy():
    before = np.array([0, 7, 2, 7, 0, 1, 60, 3])
    after = np.array([2, 3, 3, 4, 1, 2, 5, 60])
    top = top_hubs(before, after, top=3)
    assert [(r["item"], r["before"], r["after"]) for r in top] == [(6, 60, 5), (1, 7, 3), (3, 7, 4)]
    assert top[0]["before_share"] == pytest.approx(100 * 60 / 80)
    occ = {r["bin"]: (r["before"], r["after"]) for r in hub_occupancy(before, after)}
    assert occ == {"0": (2, 0), "1": (1, 1), "2": (1, 2), "3-4": (1, 3), "5-9": (2, 1),
                   "10-19": (0, 0), "20-49": (0, 0), ">=50": (1, 1)}
    with pytest.raises(ValueError, match="same gallery"):
        top_hubs(before, after[:-1])
    with pytest.raises(ValueError, match="edges"):
        hub_occupancy(before, after, edges=(1, 2))


def test_hub_counts_file_round_trip(tmp_path):
    counts = {"t2i": (np.array([3, 0, 2]), np.array([1, 2, 2])), "i2t": (np.ones(4, int),) * 2}
    write_hub_counts(tmp_path / "hubness_counts.npz", counts)
    back = read_hub_counts(tmp_path)
    assert set(back) == {"t2i", "i2t"}
    for d in counts:
        np.testing.assert_array_equal(back[d][0], counts[d][0])
        np.testing.assert_array_equal(back[d][1], counts[d][1])
    with pytest.raises(FileNotFoundError, match="hubness_counts.npz"):
        read_hub_counts(tmp_path / "nowhere")


# -- the paper's numbers ---------------------------------------------------------------------
#: the paper-facts section of each table of the paper's numbers
_SECTIONS = {"## Table 1": "table1", "## Table 2": "table2", "## All baselines": "baselines",
             "## R@1 / R@5": "recall", "## Chosen": "chosen", "## k sweep": "k_sweep",
             "## Reference-set size": "reference_size", "## Runtime": "runtime",
             "## Hubness": "hubness"}


def _numbers(rows: list[str]) -> list[float]:
    """Every number in the body cells of a Markdown table (not the header, the row labels or a
    speed-up such as "55x"), sorted."""
    out = []
    for line in rows[2:]:
        for cell in line.strip().strip("|").split("|")[1:]:
            out += [float(x) for x in re.findall(r"\d*\.?\d+(?!\d|\.|×)", cell)]
    return sorted(out)


def test_paper_numbers_match_the_paper_facts():
    if not PAPER_FACTS.is_file():
        pytest.skip(f"{PAPER_FACTS} not found (set NNN_PAPER_FACTS)")
    blocks, current = {}, None
    for line in PAPER_FACTS.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = next((t for h, t in _SECTIONS.items() if line.startswith(h)), None)
        elif current and line.startswith("|"):
            blocks.setdefault(current, []).append(line)
    assert set(blocks) == set(_SECTIONS.values()) == {r["table"] for r in RECORDS}
    for table, rows in blocks.items():
        ours = sorted(float(r["value"]) for r in RECORDS if r["table"] == table)
        assert ours == _numbers(rows), table
    keys = [tuple(v for k, v in r.items() if k != "value") for r in RECORDS]
    assert len(set(keys)) == len(keys)  # one number per key


def test_paper_value_lookups():
    pv = paper_value
    assert pv("table1", "CLIP", "flickr30k", "t2i", "NNN", "coco") == 63.70
    assert pv("table2", "SigLIP", "coco", "i2t", "DualIS", "coco") == 69.14
    assert pv("table1", "CLIP", "coco", "t2i", "Orig", "flickr30k") == 30.43  # refs ignored
    assert pv("recall", "BEiT-3", "flickr30k", "t2i", "NNN", "flickr30k", metric="R@10") == 96.60
    assert pv("k_sweep", "SigLIP", "coco", "t2i", "NNN", "coco", param="k=32") == 50.45
    assert pv("reference_size", "CLIP", "coco", "i2t", "NNN", "coco",
              param="fraction=1.0") == 53.94
    assert pv("runtime", "BLIP ft.COCO", "coco", "t2i", "NNN", "coco", param="backend=faiss",
              metric="bias_time_s") == 0.16
    assert pv("hubness", "CLIP", "flickr30k", "t2i", "Orig", metric="max") == 39
    assert pv("chosen", "CLIP", "coco", "t2i", "NNN", "coco", metric="k") == 256
    assert pv("table1", "CLIP L/14", "coco", "t2i", "NNN", "coco") is None
    with pytest.raises(ValueError, match="unknown paper table"):
        pv("table9", "CLIP", "coco", "t2i", "NNN")


# -- the report ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return make_report([runs], out, paper_model="CLIP", paper_dataset="flickr30k"), out


def test_report_puts_ours_beside_the_papers(report, runs):
    written, out = report
    rows = {(r["refs"], r["column"]): r for r in _csv(out / "table1.csv")}
    assert set(rows) == {("-", "Orig"), ("synthetic", "NNN (Flickr30k refs)"),
                         ("synthetic_shift", "NNN (COCO refs)"), ("synthetic", "DBNorm")}
    expected_paper = {"Orig": 58.82, "NNN (Flickr30k refs)": 64.60, "NNN (COCO refs)": 63.70,
                      "DBNorm": 65.26}
    r1 = read_results(runs / "paper_table1/1")["metrics"]["method"]
    for (_, column), row in rows.items():
        assert float(row["paper"]) == expected_paper[column]
        assert float(row["diff"]) == pytest.approx(float(row["ours"]) - float(row["paper"]))
        assert float(row["ci_low"]) <= float(row["ours"]) <= float(row["ci_high"])
        assert row["paper_setting"] == "CLIP/Flickr30k"
    assert float(rows[("synthetic_shift", "NNN (COCO refs)")]["ours"]) == \
        pytest.approx(r1["t2i/R@1"], abs=0.005)  # the CSV rounds to 2 decimals
    md = (out / "tables.md").read_text()
    assert "| Setting | Refs | Paper setting | Column | Metric | Ours [95% CI] | Paper |" in md
    assert "| none/synthetic/t2i | synthetic_shift | CLIP/Flickr30k | NNN (COCO refs) | R@1 |" in md


def test_report_writes_every_table_and_plot(report):
    written, out = report
    for name in ("table1", "table2", "baselines", "recall", "k_sweep", "reference_size",
                 "runtime", "hubness", "ood", "chosen", "alpha_k", "hubs_top", "hubs_occupancy",
                 "runs", "markdown"):
        assert written[name].is_file(), name
    md = (out / "tables.md").read_text()
    for name in ALL_TABLES:
        assert f"## {name}:" in md, name
    assert list(out.glob("reference_size_*.png")) and list(out.glob("k_sweep_*.png"))
    assert (out / "alpha_k_0.png").is_file()
    baselines = {r["column"] for r in _csv(out / "baselines.csv")}
    assert baselines == {"Orig", "DN", "DualDIS", "NNN", "MP", "LS", "DSL"}
    recall = _csv(out / "recall.csv")
    assert {r["metric"] for r in recall} == {"R@1", "R@5", "R@10"} and all(r["paper"] for r in recall)
    ref_size = {(r["column"], r["paper"]) for r in _csv(out / "reference_size.csv")
                if r["setting"].endswith("t2i")}
    assert {("10%", "64.84"), ("50%", "64.8"), ("full", "64.94")} <= ref_size
    runtime = {(r["column"], r["metric"]) for r in _csv(out / "runtime.csv")}
    assert {("exact", "bias time (s)"), ("faiss-ivf", "R@1"), ("exact / faiss", "speed-up (x)")} <= runtime
    hub = {(r["column"], r["metric"]): r["paper"] for r in _csv(out / "hubness.csv")}
    assert hub[("Orig", "N_1 max")] == "39.0" and hub[("NNN", "delta R@1")] == "6.5"
    alpha_k = _csv(out / "alpha_k.csv")
    assert {r["role"] for r in alpha_k} == {"selection (chooses alpha, k)",
                                            "ANALYSIS ONLY (chooses nothing)"}
    assert "ANALYSIS ONLY" in md and "never used to choose" in md


def test_report_without_a_paper_counterpart_leaves_the_paper_column_empty(runs, tmp_path):
    make_report([runs / "paper_table1"], tmp_path, tables=["table1"])
    rows = _csv(tmp_path / "table1.csv")
    assert rows and all(r["paper"] == "" and r["diff"] == "" for r in rows)
    assert rows[0].keys() >= {"ours", "ci_low", "ci_high", "paper", "diff"}


def test_report_cli(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_tables_main(["--help"])
    assert exit_info.value.code == 0 and "--paper-model" in capsys.readouterr().out
    assert make_tables_main([str(tmp_path / "missing")]) == 1
    (tmp_path / "empty").mkdir()
    assert make_tables_main([str(tmp_path / "empty")]) == 1
    assert make_tables_main([str(runs / "paper_k_sweep"), "--tables", "k_sweep", "--out",
                             str(tmp_path / "out"), "--paper-model", "SigLIP",
                             "--paper-dataset", "coco"]) == 0
    rows = {r["column"]: r["paper"] for r in _csv(tmp_path / "out" / "k_sweep.csv")}
    assert rows == {"Orig": "47.18", "k=1": "48.54", "k=16": "50.23"}


# -- sweeps: W&B grouping and one command per table --------------------------------------------
class _RecordingLogger(NullLogger):
    def __init__(self):
        self.calls = []

    def start(self, config, *, name=None, group=None, dir=None, job_type=None):
        self.calls.append(("start", name, group, job_type))
        self.config = dict(config)

    def log_metrics(self, metrics):
        self.calls.append(("metrics", dict(metrics)))

    def log_table(self, key, columns, rows):
        self.calls.append(("table", key, list(columns), [list(r) for r in rows]))

    def log_image(self, key, path, caption=None):
        self.calls.append(("image", key, Path(path).name))


def test_sweep_summary_is_one_logger_run_in_the_sweeps_group(tmp_path):
    (tmp_path / "t2i_R1_vs_fraction.png").write_bytes(b"png")
    logger = _RecordingLogger()
    columns = ["job", "status", "reference.fraction", "objective"]
    rows = [{"job": "0", "status": "completed", "reference.fraction": 0.1, "objective": 50.5},
            {"job": "1", "status": "completed", "reference.fraction": 0.2, "objective": 52.0},
            {"job": "2", "status": "failed", "reference.fraction": 0.4, "objective": None},
            {"job": "3", "status": "completed", "reference.fraction": 0.8,
             "objective": float("nan")}]
    log_sweep_summary(logger, "ablation_reference_size", tmp_path, columns, rows)
    assert logger.calls == [
        ("start", "ablation_reference_size-summary",
         sweep_group("ablation_reference_size", tmp_path), "sweep-summary"),
        ("metrics", {"sweep/jobs": 4, "sweep/failed": 1, "best/t2i/R@1": 52.0}),
        ("table", "sweep_summary", columns, [[r[c] for c in columns] for r in rows]),
        ("image", "t2i_R1_vs_fraction", "t2i_R1_vs_fraction.png")]
    assert logger.config["best_job"] == "1" and logger.config["best.reference.fraction"] == 0.2
    assert sweep_group("x", "/a/2026-01-01_10-00-00") == "x-2026-01-01_10-00-00"


def test_best_job_of_a_sweep_follows_the_objectives_direction():
    from nnn.hydra_callbacks import best_job

    rows = [{"job": "0", "status": "completed", "objective": 3.0},
            {"job": "1", "status": "completed", "objective": 2.0},
            {"job": "2", "status": "completed", "objective": 2.0}]
    assert best_job(rows, "t2i/R@1")["job"] == "0"
    assert best_job(rows, "t2i/median_rank")["job"] == "1"  # a rank: lower is better; ties: first
    assert best_job([{"job": "0", "status": "failed", "objective": 9.0}], "t2i/R@1") is None


def test_run_logs_its_analysis_tables_and_heat_map_to_wandb(tmp_path, monkeypatch):
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                        "WANDB_DIR": str(tmp_path / "wandb_dir")}.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    run(compose(["debug=tiny", "logger=wandb", "analysis.alpha_k=true", "analysis.alphas=[0.5]",
                 "analysis.ks=[2,8]", "analysis.top_hubs=5"]), output_dir=out)
    (media,) = (out / "wandb").glob("offline-run-*/files/media")
    tables = {p.name.split("_")[0] for p in media.glob("table/*.table.json")}
    assert {"results", "alpha", "top", "hub"} <= tables
    assert list(media.glob("images/alpha_k_*.png")) and list(media.glob("images/hubness_*.png"))


# the sweeps run ``run.py -m`` in this process (``run_py``, conftest.py); test_multirun.py has the
# fresh-interpreter one
@pytest.mark.slow
def test_reference_size_sweep_one_command_with_wandb_groups(tmp_path, monkeypatch, run_py):
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                        "WANDB_DIR": str(tmp_path / "wandb_dir")}.items():
        monkeypatch.setenv(name, value)
    sweep = tmp_path / "sweep"
    assert run_py("-m", "experiment=ablation_reference_size", "debug=tiny", "dataset=synthetic",
                  "method.k=8", "logger=wandb", f"hydra.sweep.dir={sweep}") == 0
    rows = _csv(sweep / "sweep_summary.csv")
    assert [r["reference.fraction"] for r in rows] == ["0.1", "0.2", "0.5", "1.0"]
    assert (sweep / "t2i_R1_vs_fraction.png").is_file() and (sweep / "i2t_R1_vs_fraction.png").is_file()
    group = sweep_group("ablation_reference_size", sweep).encode()
    for job in "0123":
        (wandb_file,) = (sweep / job / "wandb").glob("offline-run-*/run-*.wandb")
        assert group in wandb_file.read_bytes()
    (summary,) = (sweep / "wandb").glob("offline-run-*")
    assert group in next(summary.glob("run-*.wandb")).read_bytes()
    media = summary / "files" / "media"
    assert list(media.glob("table/sweep_summary_*.table.json"))
    assert list(media.glob("images/t2i_R1_vs_fraction_*.png"))


@pytest.mark.slow
def test_paper_table1_offline_command_and_report(tmp_path, run_py):
    sweep = tmp_path / "sweep"
    assert run_py("-m", "experiment=paper_table1", "dataset=synthetic", "debug=tiny", "method=nnn",
                  "logger=none", "dataset@reference.dataset=synthetic,synthetic_shift",
                  *SHIFT_TINY, *NNN_GRID, f"hydra.sweep.dir={sweep}") == 0
    assert [r["dataset@reference.dataset"] for r in _csv(sweep / "sweep_summary.csv")] == \
        ["synthetic", "synthetic_shift"]
    out = tmp_path / "report"  # the one fresh-interpreter make_tables.py
    proc = subprocess.run([sys.executable, "experiments/make_tables.py", str(sweep), "--out",
                           str(out), "--paper-model", "CLIP", "--paper-dataset", "coco"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    papers = {r["column"]: r["paper"] for r in _csv(out / "table1.csv")}
    assert papers == {"Orig": "30.43", "NNN (COCO refs)": "37.53",
                      "NNN (Flickr30k refs)": "33.45"}
