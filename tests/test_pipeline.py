"""The experiment pipeline end to end (synthetic data, offline), its results files and errors."""

from __future__ import annotations

import csv
import json
import math
import sys

import numpy as np
import pytest

from nnn.errors import MissingResourceError
from nnn.config_dir import CONFIG_DIR
from nnn.pipeline import run
from nnn.settings import compose
from nnn.results import format_table, jsonable, read_results, write_results

REPO = CONFIG_DIR.parent


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default experiment (full size), logger off: (results, output dir)."""
    out = tmp_path_factory.mktemp("default_run")
    return run(compose(["logger=none"]), output_dir=out), out


def test_default_run_nnn_beats_baseline(default_run):
    results, _ = default_run
    assert results["status"] == "completed"
    m = results["metrics"]
    for d in ("t2i", "i2t"):
        base, meth = m["baseline"][f"{d}/R@1"], m["method"][f"{d}/R@1"]
        assert meth - base > 5, (d, base, meth)
        assert m["method"][f"{d}/R@1_ci_low"] > m["baseline"][f"{d}/R@1_ci_high"]
        assert m["delta"][f"{d}/R@1"] == pytest.approx(meth - base)
        for k in (5, 10):
            assert f"{d}/R@{k}" in m["method"] and f"{d}/R@{k}_ci_low" in m["baseline"]
    # hubness of the gallery before and after: NNN removes the t2i hubs
    assert m["method"]["t2i/hubness/max"] < m["baseline"]["t2i/hubness/max"]
    assert m["method"]["t2i/hubness/kurtosis"] < m["baseline"]["t2i/hubness/kurtosis"]


def test_default_run_protocol_and_timings(default_run):
    results, _ = default_run
    data = results["data"]
    assert data["dataset"] == "synthetic"
    assert (data["test_images"], data["test_captions"]) == (1000, 5000)
    assert data["reference_images"] == 1000  # 20% of the 5,000 training images
    assert results["objective"] == {"metric": "t2i/R@1", "split": "test",
                                    "value": results["metrics"]["method"]["t2i/R@1"]}
    timings = results["timings_s"]
    for stage in ("load", "t2i/fit", "t2i/evaluate", "i2t/fit", "i2t/evaluate",
                  "t2i/evaluate/baseline", "total"):
        assert timings[stage] >= 0, stage


def test_default_run_files(default_run):
    results, out = default_run
    for name in ("results.json", "results.csv", "hubness.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "hubness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_results(out)["metrics"] == jsonable(results["metrics"])
    rows = {r["metric"]: r for r in csv.DictReader((out / "results.csv").open())}
    r1 = rows["t2i/R@1"]
    assert float(r1["method"]) == pytest.approx(results["metrics"]["method"]["t2i/R@1"])
    assert float(r1["delta"]) > 5 and r1["baseline_ci_low"] != ""
    assert "t2i/hubness/kurtosis" in rows
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_table_shows_baseline_method_and_delta(default_run):
    table = format_table(default_run[0])
    assert "baseline [95% CI]" in table and "delta" in table
    assert "t2i/R@1" in table and "i2t/R@10" in table and "hubness/max" in table
    assert "wall time" in table


def test_failure_is_recorded_before_it_propagates(tmp_path):
    with pytest.raises(Exception, match="k"):
        run(compose(["debug=tiny", "logger=none", "method.k=-1"]), output_dir=tmp_path)
    res = read_results(tmp_path)
    assert res["status"] == "failed" and "k" in res["error"]


def test_bad_direction_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="eval.directions"):
        run(compose(["debug=tiny", "logger=none", "eval.directions=[t2i,x2y]"]),
            output_dir=tmp_path)


def test_references_from_the_evaluation_split_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reference.source='test' is the evaluation split"):
        run(compose(["debug=tiny", "logger=none", "reference.source=test"]), output_dir=tmp_path)


def test_tuning_protocol_never_uses_test(tmp_path):
    cfg = compose(["debug=tiny", "logger=none", "reference.tuning_size=test", "method.tune=true",
                   "+tune.grid.alphas=[0.5,0.75]", "+tune.grid.ks=[1,4]"])
    results = run(cfg, output_dir=tmp_path)
    assert results["data"]["tuning_images"] == results["data"]["test_images"] == 100
    for d in ("t2i", "i2t"):
        best = results["tuning"][d]["best"]
        assert best["alpha"] in (0.5, 0.75) and best["k"] in (1, 4)
    assert results["objective"]["split"] == "tuning"
    assert results["objective"]["value"] == results["tuning"]["t2i"]["best_score"]


def test_one_direction_and_other_method(tmp_path):
    results = run(compose(["debug=tiny", "logger=none", "method=dn", "eval.directions=[i2t]",
                           "objective=i2t/R@5"]), output_dir=tmp_path)
    assert results["method"]["name"] == "DN"
    assert not [k for k in results["metrics"]["method"] if k.startswith("t2i/")]
    assert results["objective"]["value"] == results["metrics"]["method"]["i2t/R@5"]


def test_embedding_dataset_with_a_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="model=none"):
        run(compose(["debug=tiny", "logger=none", "+model._target_=nnn.methods.Identity"]),
            output_dir=tmp_path)


def test_results_writing_is_json_safe(tmp_path):
    res = {"status": "completed", "metrics": {"baseline": {"t2i/R@1": np.float32(50.0)},
                                              "method": {"t2i/R@1": math.nan},
                                              "delta": {"t2i/R@1": math.inf}}}
    paths = write_results(tmp_path, res)
    loaded = json.loads(paths["json"].read_text())
    assert loaded["metrics"]["baseline"]["t2i/R@1"] == 50.0
    assert loaded["metrics"]["method"]["t2i/R@1"] is None
    assert "t2i/R@1,50.0" in paths["csv"].read_text()


# -- missing resources -------------------------------------------------------------------------
def test_missing_data_root_exits_cleanly(tmp_path, run_py, capsys):
    missing = tmp_path / "no_data_here"
    assert run_py("dataset=coco", "logger=none", f"paths.data_root={missing}",
                  f"hydra.run.dir={tmp_path / 'run'}") == 1
    text = "".join(capsys.readouterr())
    assert str(missing) in text and "dataset.download=true" in text
    assert "Traceback" not in text
    assert read_results(tmp_path / "run")["status"] == "failed"


def test_missing_reference_data_names_the_reference_datasets_root(tmp_path):
    from fixtures_karpathy import make_karpathy_fixture

    from nnn.pipeline import load_sets

    make_karpathy_fixture(tmp_path / "data", "flickr30k")  # the evaluation data, but no COCO
    cfg = compose(["model=clip", "dataset=flickr30k", "dataset@reference.dataset=coco",
                   "logger=none", f"paths.data_root={tmp_path / 'data'}"])
    with pytest.raises(MissingResourceError, match=r"coco: .* Point reference\.dataset\.root at "
                                                   r".*reference\.dataset\.download=true") as err:
        load_sets(cfg, {})
    assert " dataset.root" not in str(err.value)


def test_unwritable_results_say_what_failed_where_and_what_to_do(tmp_path, monkeypatch):
    def refused(out, results):
        raise PermissionError(13, "Permission denied", str(out / "results.json"))

    monkeypatch.setattr("nnn.pipeline.write_results", refused)
    with pytest.raises(OSError) as err:
        run(compose(["debug=tiny", "logger=none"]), output_dir=tmp_path)
    message = str(err.value)
    assert message.startswith(f"could not write the run's results in '{tmp_path}' "
                              "(Permission denied): ") and "NNN_OUTPUT_DIR" in message
    assert "[Errno" not in message


def test_missing_precomputed_file_names_it(tmp_path):
    cfg = compose(["dataset=precomputed", "logger=none",
                   f"dataset.image_path={tmp_path / 'nope.npy'}"])
    with pytest.raises(MissingResourceError, match="nope.npy"):
        run(cfg, output_dir=tmp_path)


@pytest.mark.skipif(not (CONFIG_DIR / "model" / "clip.yaml").is_file(),
                    reason="conf/model/clip.yaml is not in this checkout")
def test_missing_weights_offline_is_a_clear_error(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "tests"))
    from fixtures_karpathy import make_karpathy_fixture

    make_karpathy_fixture(tmp_path / "data", "coco", n_train=10, n_test=6)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose(["model=clip", "dataset=coco", "logger=none", "reference.fraction=0.5",
                   f"paths.data_root={tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(MissingResourceError) as err:
        run(cfg, output_dir=tmp_path / "run")
    assert "clip" in str(err.value).lower() or "ViT" in str(err.value)


def test_config_nodes_are_built_with_plain_values():
    """The library never receives OmegaConf containers: lists and dicts arrive as such."""
    from omegaconf import OmegaConf

    from nnn.settings import build

    node = OmegaConf.create({"_target_": "builtins.dict", "axes": [1, 2], "opts": {"a": [3]}})
    built = build(node)
    assert type(built["axes"]) is list and type(built["opts"]) is dict
    assert type(built["opts"]["a"]) is list


def test_built_nodes_are_checked_for_keys_their_target_does_not_take():
    from omegaconf import OmegaConf

    from nnn.settings import build

    node = OmegaConf.create({"_target_": "nnn.loggers.WandbLogger", "bogus": 1})
    with pytest.raises(ValueError, match=r"logger\.bogus: WandbLogger has no parameter 'bogus' "
                                         r"\(it takes project, .*\); remove the key"):
        build(node, "logger")


def test_config_mistake_is_recorded_before_a_logger_run_starts(tmp_path):
    """The default logger (W&B offline) makes no run for a run refused by its config."""
    with pytest.raises(ValueError, match="reference.seed"):
        run(compose(["debug=tiny", "reference.seed=-1"]), output_dir=tmp_path)
    assert read_results(tmp_path)["status"] == "failed"
    assert not (tmp_path / "wandb").exists()


def test_a_multi_line_error_is_recorded_on_one_line(tmp_path, monkeypatch):
    """results.json's error (and so sweep_summary.csv's) is one line, e.g. for Hydra's
    InstantiationException, whose message spans several."""
    import nnn.pipeline

    def fails(*args, **kwargs):
        raise ValueError("first line\n  second line")

    monkeypatch.setattr(nnn.pipeline, "load_sets", fails)
    with pytest.raises(ValueError, match="first line"):
        run(compose(["debug=tiny", "logger=none"]), output_dir=tmp_path)
    assert read_results(tmp_path)["error"] == "ValueError: first line second line"


def test_k_larger_than_a_query_bank_is_refused_before_any_direction_runs(tmp_path, caplog):
    """14 reference images: k=16 fits t2i's 70 captions but not i2t's bank; the error names
    method.k and reference.fraction before t2i is evaluated (and loses nothing)."""
    with pytest.raises(ValueError, match=r"method\.k=16 is larger than the 14 reference images "
                                         r"of the i2t query bank; use method\.k <= 14.*"
                                         r"reference\.fraction=0\.02"):
        run(compose(["debug=tiny", "logger=none", "reference.fraction=0.02"]),
            output_dir=tmp_path)
    assert not [r for r in caplog.records if "R@1: baseline" in r.getMessage()]
    assert read_results(tmp_path)["status"] == "failed"
    tuned = run(compose(["debug=tiny", "logger=none", "reference.fraction=0.02",
                         "tune.enabled=true", "reference.tuning_size=50"]),
                output_dir=tmp_path / "tuned")  # the tuner cuts its k grid at the bank
    assert tuned["status"] == "completed"


def test_an_api_key_in_the_config_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="api_key"):
        run(compose(["debug=tiny", "+logger.settings.api_key=SECRET-KEY"]),
            output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_failure_writing_the_plots_still_finishes_the_loggers_run(tmp_path, monkeypatch):
    import nnn.pipeline as pipeline
    from nnn.loggers import NullLogger

    finished = []

    class Recorder(NullLogger):
        def finish(self, exit_code: int = 0) -> None:
            finished.append(exit_code)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "build_logger", lambda cfg: Recorder())
    monkeypatch.setattr(pipeline, "write_run_files", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run(compose(["debug=tiny", "logger=none"]), output_dir=tmp_path)
    assert finished == [1]
