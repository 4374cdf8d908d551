"""run.py as a user meets it: --help and config mistakes answer without the heavy modules, and
ordinary mistakes end with one line on stderr and exit code 1 (no timings are asserted)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from nnn.config_dir import CONFIG_DIR
from nnn.results import read_results
from nnn.settings import compose

REPO = CONFIG_DIR.parent
HEAVY = ("torch", "scipy", "matplotlib", "wandb")


def _run(tmp_path, *args: str, env: dict | None = None, python_flags: tuple[str, ...] = ()):
    """run.py from ``tmp_path`` (not the repository), its outputs under ``tmp_path``."""
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environment.update({"PYTHONPATH": str(REPO), "NNN_OUTPUT_DIR": str(tmp_path / "outputs"),
                        **(env or {})})
    return subprocess.run([sys.executable, *python_flags, str(REPO / "run.py"), *args],
                          capture_output=True, text=True, env=environment, cwd=tmp_path,
                          timeout=600)


def _imported(importtime_stderr: str) -> set[str]:
    """Top-level packages named in ``python -X importtime`` output."""
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)", importtime_stderr, re.M)
    return {n.split(".")[0] for n in names}


@pytest.mark.parametrize("args, rc", [(["--help"], 0), (["method=no_such_method"], 1),
                                      (["method.no_such_key=1"], 1)])
def test_help_and_config_errors_import_no_heavy_module(tmp_path, args, rc):
    proc = _run(tmp_path, *args, python_flags=("-X", "importtime"))
    assert proc.returncode == rc, proc.stderr[-2000:]
    imported = _imported(proc.stderr)
    assert "hydra" in imported  # the check sees imports at all
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    if rc == 0:
        assert "== Config groups" in proc.stdout


def _error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("args, words", [
    (["method.k=0"], ["k", "0"]),                                   # a constructor refuses it
    (["method.tune=true", "reference.tuning_size=0"], ["tuning part", "reference.tuning_size"]),
])
def test_user_error_is_one_line_and_exit_1(tmp_path, args, words):
    proc = _run(tmp_path, "debug=tiny", "logger=none", *args)
    lines = _error_lines(proc)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr[-2000:]
    assert all(w in lines[0] for w in words), lines[0]


def test_user_error_traceback_with_hydra_full_error(tmp_path):
    proc = _run(tmp_path, "debug=tiny", "logger=none", "method.k=0", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "k must be a positive integer" in proc.stderr


def test_user_errors_are_told_from_bugs():
    import importlib.util

    from hydra.errors import InstantiationException

    from nnn.data.download import ChecksumError
    from nnn.errors import MissingDependencyError, MissingResourceError

    spec = importlib.util.spec_from_file_location("nnn_run_script", REPO / "run.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    refused = ValueError("k must be a positive integer, got 0")
    wrapped = InstantiationException("Error in call to target 'nnn.methods.NNN'")
    wrapped.__cause__ = refused
    assert script.user_error(wrapped) is refused
    for err in (MissingResourceError("x"), MissingDependencyError("x"), FileNotFoundError("x"),
                OSError("download"), ChecksumError("x")):
        assert script.user_error(err) is err
    assert script.user_error(RuntimeError("a bug")) is None
    assert script.user_error(KeyError("a bug")) is None


# -- config mistakes Hydra finds while composing: one line naming the override -----------------
@pytest.mark.parametrize("args, words", [
    (["method=nnnn"], ["method=nnnn", "no option 'nnnn'", "csls", "qb_norm"]),
    (["-m", "method=nnn,nnnn"], ["method=nnn,nnnn", "no option 'nnnn'", "dn"]),
    (["dataset@reference.dataset=cocoo"], ["dataset@reference.dataset=cocoo", "coco, flickr30k"]),
    (["method.kk=3"], ["method.kk=3", "no key 'kk'", "alpha", "+method.kk=3"]),
    (["method.k=[1,"], ["method.k=[1,", "quote"]),
    (["method.tune=true", "tune.enabled=false"], ["contradict", "tune.enabled once"]),
    (["--help", "method=nnnn"], ["method=nnnn", "csls"]),
    (["--cfg", "job", "method.k=[1,2"], ["Error: method.k=[1,2: ", "quote"]),  # not "job"
    (["~method"], ["~method", "cannot be deleted", "method=none"]),
])
def test_composition_error_is_one_line_naming_the_override(tmp_path, args, words):
    proc = _run(tmp_path, *args)
    lines = _error_lines(proc)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr[-2000:]
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("args, words", [
    (["eval.ks.5=3"], ["eval.ks.5=3: list index out of range"]),          # a list node
    (["--help", "eval.ks.5=3"], ["eval.ks.5=3: list index out of range"]),
    (["hydra.job.chdir=maybe"], ["hydra.job.chdir=maybe: ", "not a valid bool"]),
    (["+eval.ks.x=3"], ["+eval.ks.x=3: ", "is not an int"]),
    # OmegaConf raises a bare ValueError here, which Hydra lets out without the override
    (["eval.ks.x=3"], ["eval.ks.x=3: ", "invalid literal", "eval.ks.0=3", "eval.ks=[...]"]),
    (["method.k.x=1"], ["method.k.x=1: ", "single value", "method.k=VALUE"]),
])
def test_refused_value_is_not_called_an_unknown_key(run_py, capsys, args, words):
    line = _one_line_error(run_py, capsys, *args)
    assert all(w in line for w in words) and "its keys are" not in line, line


def test_refused_sweeper_setting_names_omegaconfs_reason(run_py, capsys):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                        reason="the [sweep] extra (hydra-optuna-sweeper) is not installed")
    line = _one_line_error(run_py, capsys, "sweep=optuna_nnn", "hydra.sweeper.n_trials=abc")
    assert "hydra.sweeper.n_trials=abc: " in line and "could not be converted" in line, line


def test_a_slip_in_the_one_line_keeps_hydras_own_report(monkeypatch):
    from hydra.errors import ConfigCompositionException

    import nnn.config_dir as config_dir

    with pytest.raises(ConfigCompositionException) as err:
        compose(["method.kk=3"])
    assert "no key 'kk'" in config_dir.composition_error(err.value, ["method.kk=3"])

    def slip(*args):
        raise AttributeError("a bug in the formatter")

    monkeypatch.setattr(config_dir, "_unknown_key", slip)
    assert config_dir.composition_error(err.value, ["method.kk=3"]) is None


def test_composition_error_in_full_with_hydra_full_error(tmp_path):
    proc = _run(tmp_path, "method=nnnn", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "Available options in 'method'" in proc.stderr


# -- mistakes found in the job or before it: one line (in this process: fast) ------------------
def _one_line_error(run_py, capsys, *args) -> str:
    """The single stderr line of ``run.py *args``, which must exit with code 1."""
    assert run_py(*args) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["seed=abc"], ["seed='abc'", "integer >= 0"]),
    (["reference.seed=-1"], ["reference.seed=-1", "integer >= 0"]),
    (["dataset.seed=-3"], ["dataset.seed=-3", "integer >= 0"]),
    (["dataset@reference.dataset=synthetic_shift", "reference.dataset.seed=x"],
     ["reference.dataset.seed='x'", "integer >= 0"]),
    (["tune.enabled=true", "+tune.grid.foo=[1]"], ["tune.grid.foo", "no grid 'foo'", "alphas, ks"]),
    (["+method.kk=3"], ["method.kk", "no parameter 'kk'", "alpha"]),
    (["logger=wandb", "logger.mode=bogus"], ["logger.mode='bogus'", "offline, online, disabled"]),
    (["objective=t2i/R@0", "tune.enabled=true"], ["objective='t2i/R@0'", "k >= 1"]),
    (["objective=i2t/R@1", "eval.directions=[t2i]", "tune.enabled=true"],
     ["objective='i2t/R@1'", "eval.directions ['t2i']"]),
    (["dataset=coco"], ["dataset.n_train", "COCO has no parameter 'n_train'", "debug=tiny"]),
])
def test_job_config_error_is_one_line(run_py, capsys, tmp_path, args, words):
    line = _one_line_error(run_py, capsys, "debug=tiny", f"hydra.run.dir={tmp_path / 'run'}",
                           *(["logger=none"] if "logger=wandb" not in args else []), *args)
    assert all(w in line for w in words), line


@pytest.mark.parametrize("args", [["seed=-1"], ["reference.seed=1.5"], ["objective=bogus"],
                                  ["eval.directions=[x]"], ["logger.mode=bogus"]])
def test_config_value_error_imports_no_heavy_module_and_starts_no_logger(tmp_path, args):
    """The default logger (W&B offline) is not started, nor torch imported, for such a mistake;
    results.json says why the run failed."""
    run_dir = tmp_path / "run"
    proc = _run(tmp_path, "debug=tiny", f"hydra.run.dir={run_dir}", *args,
                python_flags=("-X", "importtime"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [line for line in _error_lines(proc) if not line.startswith("import time:")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert not _imported(proc.stderr) & set(HEAVY), sorted(_imported(proc.stderr) & set(HEAVY))
    assert read_results(run_dir)["status"] == "failed" and not (run_dir / "wandb").exists()


def test_unresolvable_interpolation_is_one_line(tmp_path):
    proc = _run(tmp_path, "name=${foo}", "logger=none", "debug=tiny")
    lines = _error_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("Error: Interpolation key 'foo' not found"), lines[0]


def test_objective_is_checked_before_the_evaluation(run_py, capsys, tmp_path):
    line = _one_line_error(run_py, capsys, "debug=tiny", "logger=none", "objective=foo",
                           f"hydra.run.dir={tmp_path / 'run'}")
    assert "objective='foo'" in line and "t2i/R@1" in line and "hubness/skewness" in line
    results = read_results(tmp_path / "run")
    assert results["status"] == "failed" and results["metrics"] == {}
    assert not any("evaluate" in stage for stage in results["timings_s"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_ddp_extraction_without_gpus_is_one_line(run_py, capsys, tmp_path):
    line = _one_line_error(run_py, capsys, "model=clip", "dataset=coco", "extract=ddp",
                           "logger=none", f"paths.data_root={tmp_path / 'data'}",
                           f"hydra.run.dir={tmp_path / 'run'}")
    assert "extract=ddp" in line and "CUDA GPUs" in line and "default extract" in line


def test_missing_lavis_is_one_line_saying_how_to_install_it(run_py, capsys, tmp_path,
                                                            monkeypatch):
    from fixtures_karpathy import make_karpathy_fixture

    monkeypatch.setitem(sys.modules, "lavis", None)  # `import lavis` fails, as where it is absent
    make_karpathy_fixture(tmp_path / "data", "coco")
    monkeypatch.setenv("NNN_CACHE_DIR", str(tmp_path / "cache"))
    line = _one_line_error(run_py, capsys, "model=albef_coco", "dataset=coco", "logger=none",
                           f"paths.data_root={tmp_path / 'data'}",
                           f"hydra.run.dir={tmp_path / 'run'}")
    assert "pip install salesforce-lavis" in line and "docs/lavis.md" in line


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="SLURM is installed here")
def test_slurm_launcher_without_slurm_is_one_line_before_any_job(run_py, capsys, tmp_path):
    sweep = tmp_path / "sweep"
    line = _one_line_error(run_py, capsys, "-m", "hydra/launcher=submitit_slurm", "debug=tiny",
                           "logger=none", f"hydra.sweep.dir={sweep}")
    assert "no sbatch" in line and "hydra/launcher=joblib" in line and "submitit_local" in line
    assert not sweep.exists()  # no job ran, no sweep folder was made


@pytest.mark.parametrize("sweep", [False, True])
def test_unwritable_output_folder_is_one_line_naming_it(run_py, capsys, tmp_path, monkeypatch,
                                                        sweep):
    blocker = tmp_path / "a_file"  # a folder below a file cannot be made, also by root
    blocker.write_text("")
    monkeypatch.setenv("NNN_OUTPUT_DIR", str(blocker / "outputs"))
    line = _one_line_error(run_py, capsys, *(["-m"] if sweep else []), "debug=tiny",
                           "logger=none")
    assert f"could not create or write the output folder '{blocker / 'outputs'}" in line
    assert "NNN_OUTPUT_DIR" in line and "[Errno" not in line


def test_optuna_sweep_without_a_tuning_part_is_one_line_before_any_trial(run_py, capsys,
                                                                        tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                        reason="the [sweep] extra (hydra-optuna-sweeper) is not installed")
    sweep = tmp_path / "sweep"
    line = _one_line_error(run_py, capsys, "sweep=optuna_nnn", "debug=tiny",
                           "reference.tuning_size=0", "hydra.sweeper.n_trials=2",
                           f"hydra.sweep.dir={sweep}")
    assert "OptunaSweeper" in line and "reference.tuning_size=0" in line
    assert not sweep.exists()  # no trial ran, no sweep folder was made


def test_failed_optuna_trial_is_one_error_line(run_py, capsys, tmp_path):
    """Hydra announces a failed job ("Error executing job with overrides") on each read of its
    return value; the user error's one line is all stderr says."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                        reason="the [sweep] extra (hydra-optuna-sweeper) is not installed")
    assert run_py("sweep=optuna_nnn", "debug=tiny", "hydra.sweeper.n_trials=1",
                  "eval.ci_level=2", f"hydra.sweep.dir={tmp_path / 'sweep'}") == 1
    err = capsys.readouterr().err
    assert "Error executing job" not in err
    assert [line for line in err.splitlines() if "Error" in line] == [
        "Error: level must be in (0, 1), e.g. 0.95, got 2"]


def test_ctrl_c_is_one_line_exit_130_and_leaves_whole_files(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environment["PYTHONPATH"] = str(REPO)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), "debug=tiny", "logger=none",
                             "eval.n_boot=1000000", f"hydra.run.dir={run_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environment, cwd=tmp_path)
    for line in proc.stdout:  # the data are loaded: the evaluation (long bootstrap) runs
        if "[nnn.pipeline][INFO] - data:" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert [line for line in err.splitlines() if line.strip()] == ["Interrupted"]
    assert read_results(run_dir)["status"] == "failed"  # complete, and says why
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
