"""benchmarks/gpu_check.py keeps working on the CPU: its sections at tiny sizes (in this process),
and the runner's report of a section killed at its time limit. No timings are asserted."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
gpu_check = pytest.importorskip("gpu_check")


@pytest.fixture
def ctx(tmp_path):
    return gpu_check.Context(device="cpu", sizes=gpu_check.PRESETS["tiny"], out=tmp_path,
                             deadline=time.monotonic() + 300, theirs=False, workers=0)


def statuses(rows, section):
    return {r["what"]: r["status"] for r in rows if r["section"] == section}


def test_numeric_sections_pass_their_checks_on_cpu(ctx):
    for name in ("nnn", "bank", "faiss"):
        gpu_check.SECTION_FUNCS[name](ctx)
    bad = [r for r in ctx.rows if r["status"] in (gpu_check.FAIL, gpu_check.ERROR)]
    assert not bad, bad
    nnn = statuses(ctx.rows, "nnn")
    assert nnn["bias error, float32 (NNN.fit)"] == "ok"
    assert nnn["bias error, float16"] == "skip"  # CUDA only
    assert any(w.startswith("DBNorm log_norm_gallery_ vs float64") for w in statuses(
        ctx.rows, "bank"))
    # every check row carries its error and bound; timing rows their seconds
    for r in ctx.rows:
        if r["status"] == "ok" and r["kind"] == "check" and r["section"] in ("nnn", "bank"):
            assert r["error"] <= r["bound"]
        if r["status"] == "ok" and r["kind"] == "time":
            assert r["seconds"] > 0


def test_extract_section_runs_the_real_pipeline_on_cpu(ctx):
    ctx.sizes = dataclasses.replace(ctx.sizes, n_images=4, batch=2)  # two batches: one timed
    gpu_check.section_extract(ctx)
    rows = statuses(ctx.rows, "extract")
    assert rows, ctx.rows
    assert all(s == "ok" for s in rows.values()), ctx.rows
    assert any("embed_split output" in w for w in rows)
    assert any("texts, encode_captions" in w for w in rows)


def test_a_section_past_its_limit_is_an_error_row_and_the_table_is_written(tmp_path):
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--sections", "bank", "--limit",
                         "bank=0.5", "--out", str(tmp_path)])
    assert rc == 1
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["ERROR"]
    assert "time limit" in rows[0]["note"]
    assert "| bank | section bank | ERROR |" in (tmp_path / "table.md").read_text()


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--sections", "nnn,gpu"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--limit", "nope=3"])
