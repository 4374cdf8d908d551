"""W&B logging: offline files are written, a failing W&B never costs the local results, and no
secret reaches a config, a log or an output file."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest
import wandb

from nnn.loggers import WandbLogger
from nnn.config_dir import CONFIG_DIR
from nnn.pipeline import run
from nnn.settings import compose
from nnn.results import read_results

REPO = CONFIG_DIR.parent
FAKE_KEY = "fake0secret0key0" + "7" * 24  # 40 characters, like a real W&B key


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_dir"),
                        "WANDB_SILENT": "true", "WANDB_API_KEY": FAKE_KEY}.items():
        monkeypatch.setenv(name, value)
    return tmp_path


def test_offline_run_writes_wandb_files_and_no_secret(offline_env):
    run_dir = offline_env / "run"
    proc = subprocess.run([sys.executable, "run.py", "debug=tiny", "logger=wandb",
                           f"hydra.run.dir={run_dir}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "the W&B run dir belongs inside the Hydra output dir"
    assert list(runs[0].glob("run-*.wandb"))
    media = runs[0] / "files" / "media"
    assert list(media.glob("table/results_*.table.json")) and list(media.glob("images/hubness_*.png"))
    assert (run_dir / "results.json").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert FAKE_KEY not in proc.stdout + proc.stderr
    for path in [p for p in offline_env.rglob("*") if p.is_file()]:
        assert FAKE_KEY.encode() not in path.read_bytes(), f"secret written to {path}"


def test_wandb_init_failure_keeps_results(tmp_path, monkeypatch, caplog):
    def broken_init(**kwargs):
        raise RuntimeError("no W&B today")

    monkeypatch.setattr(wandb, "init", broken_init)
    with caplog.at_level(logging.WARNING, logger="nnn.loggers"):
        results = run(compose(["debug=tiny", "logger=wandb"]), output_dir=tmp_path)
    assert results["status"] == "completed"
    assert read_results(tmp_path)["status"] == "completed"
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "hubness.png").is_file()
    assert "no W&B today" in caplog.text


class _FailingRun:
    id = "broken"
    dir = "."
    summary: dict = {}

    def __init__(self):
        self.finished = []

    def log(self, data):
        raise OSError("disk full")

    def finish(self, exit_code=0):
        self.finished.append(exit_code)


def test_log_failure_is_a_warning_and_the_run_is_finished(monkeypatch, caplog, tmp_path):
    fake = _FailingRun()
    monkeypatch.setattr(wandb, "init", lambda **kwargs: fake)
    logger = WandbLogger(mode="offline")
    with caplog.at_level(logging.WARNING, logger="nnn.loggers"), logger:
        logger.start({"a": 1}, name="x", dir=tmp_path)
        assert logger.active
        logger.log_metrics({"t2i/R@1": 1.0})  # raises inside: logged, logger switched off
        logger.log_image("hubness", tmp_path / "missing.png")  # no-op now
    assert not logger.active and fake.finished == [1]
    assert "disk full" in caplog.text


def test_missing_wandb_package_is_a_warning(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    logger = WandbLogger()
    with caplog.at_level(logging.WARNING, logger="nnn.loggers"), logger:
        logger.start({"a": 1})
        logger.log_metrics({"x": 1.0})
    assert not logger.active and "pip install wandb" in caplog.text


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="offline"):
        WandbLogger(mode="sometimes")


class _RecordingRun(_FailingRun):
    """A W&B run that records what it is sent."""

    def __init__(self):
        super().__init__()
        self.logged = []
        self.summary = {}

    def log(self, data):
        self.logged.append(dict(data))


def _slow_init(fake):
    def init(**kwargs):
        time.sleep(0.3)  # the start is still running when the run begins
        return fake
    return init


def test_background_start_is_waited_for(monkeypatch, tmp_path):
    fake = _RecordingRun()
    monkeypatch.setattr(wandb, "init", _slow_init(fake))
    results = run(compose(["debug=tiny", "logger=wandb"]), output_dir=tmp_path)
    assert results["status"] == "completed" and fake.finished == [0]
    assert any("t2i/R@1" in d for d in fake.logged)


def test_failed_run_finishes_its_logger_run_as_failed(monkeypatch, tmp_path):
    fake = _RecordingRun()
    monkeypatch.setattr(wandb, "init", _slow_init(fake))
    with pytest.raises(ValueError, match="method.k|k="):
        run(compose(["debug=tiny", "logger=wandb", "method.k=100000"]), output_dir=tmp_path)
    assert fake.finished == [1] and not fake.logged
    assert read_results(tmp_path)["status"] == "failed"
