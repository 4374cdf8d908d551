"""The paper's baselines through the pipeline (debug=tiny, in-process): paired CIs of the gain,
bootstrap by image, DualDIS's gate passed through tuning, the winning stage recorded."""

from __future__ import annotations

import csv

import pytest

from nnn.pipeline import run
from nnn.settings import compose
from nnn.results import format_table, read_results


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """debug=tiny with resampling by image (the default) and by query: (results, out) each."""
    out = {}
    for how in ("image", "query"):
        d = tmp_path_factory.mktemp(f"tiny_{how}")
        out[how] = run(compose(["debug=tiny", "logger=none", f"eval.resample={how}"]),
                       output_dir=d), d
    return out


def test_paired_delta_ci_in_results_csv_and_table(tiny_runs):
    results, out = tiny_runs["image"]
    delta = results["metrics"]["delta"]
    for d in ("t2i", "i2t"):
        for k in (1, 5, 10):
            low, high = delta[f"{d}/R@{k}_ci_low"], delta[f"{d}/R@{k}_ci_high"]
            assert low <= delta[f"{d}/R@{k}"] <= high
    assert read_results(out)["metrics"]["delta"]["t2i/R@1_ci_low"] == delta["t2i/R@1_ci_low"]
    row = {r["metric"]: r for r in csv.DictReader((out / "results.csv").open())}["t2i/R@1"]
    # results.csv holds 2 decimals (results.json the full value)
    assert float(row["delta_ci_low"]) == pytest.approx(delta["t2i/R@1_ci_low"], abs=0.0051)
    assert "delta [paired 95% CI]" in format_table(results)


def test_resampling_unit_changes_only_t2i_intervals(tiny_runs):
    by_image, by_query = tiny_runs["image"][0]["metrics"], tiny_runs["query"][0]["metrics"]
    for part in ("baseline", "method", "delta"):
        assert by_image[part]["t2i/R@1"] == by_query[part]["t2i/R@1"]
        # i2t queries are images: the same units either way
        assert by_image[part]["i2t/R@1_ci_low"] == by_query[part]["i2t/R@1_ci_low"]
    assert any(by_image[p]["t2i/R@5_ci_low"] != by_query[p]["t2i/R@5_ci_low"]
               for p in ("baseline", "method", "delta"))


def test_bad_resample_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="eval.resample='caption'"):
        run(compose(["debug=tiny", "logger=none", "eval.resample=caption"]), output_dir=tmp_path)


def test_dual_dis_tuning_passes_the_gate_and_records_the_stage(tmp_path):
    gate = "exp"   # not the default, so seeing it in the tuner's keywords proves the pass-through
    stages = "{coarse: [[0.0, 20.0], [0.0, 20.0]], dense: [[0.0, 2.0], [30.0]]}"
    results = run(compose(["debug=tiny", "logger=none", "method=dual_dis", "method.tune=true",
                           f"method.gate={gate}", "reference.tuning_size=50",
                           "eval.directions=[t2i]", f"+tune.grid.stages={stages}"]), output_dir=tmp_path)
    tuned = read_results(tmp_path)["tuning"]["t2i"]
    assert tuned["method_kwargs"]["gate"] == gate and tuned["method_kwargs"]["dynamic"] is True
    assert list(tuned["stages"]) == ["coarse", "dense"]
    assert sum(s["chosen"] for s in tuned["stages"].values()) == 1
    assert "from stage" in tuned["notes"][-1]
    assert results["status"] == "completed"
