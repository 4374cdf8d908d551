"""Defaults that just work: tuning by itself (reference.tuning_size=auto), every method accepts
method.tune, the parameters actually used are recorded, sweeps that select are never scored on
test, and the shared embeddings are found from any directory."""

from __future__ import annotations

import pytest
from hydra.core.hydra_config import HydraConfig

from nnn.errors import MissingResourceError
from nnn.data.assemble import tuning_size
from nnn.config_dir import CONFIG_DIR
from nnn.pipeline import load_sets, run
from nnn.settings import compose

TINY = ["debug=tiny", "dataset=synthetic", "logger=none"]
NNN_GRID = ["+tune.grid.alphas=[0.5,1.0]", "+tune.grid.ks=[1,4]"]
OPTUNA = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


@pytest.fixture(autouse=True)
def _fresh_hydra_config():
    """compose() sets Hydra's global config; leave none behind (a MULTIRUN one would leak)."""
    yield
    HydraConfig.instance().cfg = None


def test_auto_tuning_size_follows_the_paper_and_shrinks_to_fit():
    assert tuning_size("auto", 100, 400, 0.2, auto=False) == (0, "none")
    n, how = tuning_size("auto", 100, 400, 0.2, auto=True)
    assert n == 100 and "as many as the test split" in how
    n, how = tuning_size("auto", 500, 500, 0.2, auto=True)  # 100 references leave 400
    assert n == 400 and "do not fit" in how
    assert tuning_size("test", 100, 400, 0.2, auto=False)[0] == 100
    assert tuning_size(7, 100, 400, 0.2, auto=True) == (7, "7 images (reference.tuning_size=7)")
    with pytest.raises(ValueError, match="no images are left"):
        tuning_size("auto", 10, 10, 1.0, auto=True)
    with pytest.raises(ValueError, match="'auto'"):
        tuning_size("half", 10, 10, 0.2, auto=True)


def test_tune_alone_holds_out_a_test_sized_part_and_records_what_was_used(tmp_path):
    results = run(compose([*TINY, "method.tune=true", *NNN_GRID]), output_dir=tmp_path)
    data = results["data"]
    assert data["tuning_images"] == data["test_images"] == 100
    assert "auto" in data["tuning_part"]
    assert results["objective"]["split"] == "tuning"
    method = results["method"]
    for d in ("t2i", "i2t"):
        used = method["per_direction"][d]
        assert {k: used["params"][k] for k in ("alpha", "k")} == results["tuning"][d]["best"]
        assert used["repr"].startswith("NNN(") and f"{d}: {used['repr']}" in method["repr"]


def test_untuned_default_run_holds_out_nothing(tmp_path):
    results = run(compose(TINY), output_dir=tmp_path)
    assert results["data"]["tuning_images"] == 0 and results["data"]["tuning_part"] == "none"
    assert "per_direction" not in results["method"]


def test_csls_tunes_k_and_identity_has_nothing_to_tune(tmp_path):
    csls = run(compose([*TINY, "method=csls", "method.tune=true", "+tune.grid.ks=[1,2]"]),
               output_dir=tmp_path / "csls")
    for d in ("t2i", "i2t"):
        assert csls["tuning"][d]["axes"] == {"k": [1, 2]}
        assert csls["method"]["per_direction"][d]["params"]["k"] == csls["tuning"][d]["best"]["k"]
    none = run(compose([*TINY, "method=none", "method.tune=true"]), output_dir=tmp_path / "none")
    assert none["tuning"] == {} and "no hyper-parameters" in none["method"]["note"]
    assert none["data"]["tuning_images"] == 0


def test_selecting_sweeper_gets_a_tuning_objective_or_a_clear_refusal(tmp_path):
    sweep = ["hydra.mode=MULTIRUN", f"hydra.sweeper._target_={OPTUNA}"]
    results = run(compose([*TINY, *sweep]), output_dir=tmp_path / "auto")
    assert results["data"]["tuning_images"] == 100
    assert results["objective"]["split"] == "tuning" and "role" not in results["objective"]
    with pytest.raises(ValueError, match="OptunaSweeper.*reference.tuning_size=0"):
        run(compose([*TINY, *sweep, "reference.tuning_size=0"]), output_dir=tmp_path / "zero")


def test_grid_sweep_on_test_is_labelled_analysis(tmp_path):
    results = run(compose([*TINY, "hydra.mode=MULTIRUN"]), output_dir=tmp_path)
    assert results["objective"]["split"] == "test" and results["objective"]["role"] == "analysis"


def test_shared_data_is_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("NNN_SHARED_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = compose(["dataset=precomputed", "logger=none"])
    expected = CONFIG_DIR.parent / ".." / "shared" / "data"
    assert cfg.paths.shared_data == str(expected)
    if (expected / "flickr30k_clip_vitl14_1k").is_dir():
        test, reference, _ = load_sets(cfg, {})
        assert len(test.image) == 500 and len(reference.image) == 100


def test_missing_shared_data_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("NNN_SHARED_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(MissingResourceError, match="NNN_SHARED_DATA"):
        run(compose(["dataset=precomputed", "logger=none"]), output_dir=tmp_path / "out")


def test_missing_mandatory_value_is_named_before_loading(tmp_path):
    with pytest.raises(ValueError, match=r"model.model_id must be set .*model.model_id=VALUE"):
        run(compose(["model=hf", "dataset=flickr30k", "logger=none",
                     f"paths.data_root={tmp_path / 'no_data'}"]), output_dir=tmp_path)
