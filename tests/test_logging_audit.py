"""W&B logger edge cases: an interrupted wait, a worker that never answers its finish, an API key
in the config, one tag given as a string, the disabled mode's message. All offline and in this
process (``wandb`` is imported here, so the logger runs W&B in a thread: the child process's
protocol, ``nnn.wandb_worker.WandbRun``, is the same)."""

from __future__ import annotations

import logging
import time

import pytest
import wandb

from nnn.loggers import WandbLogger, check_settings
from nnn.wandb_worker import WandbRun

FAKE_KEY = "fake0secret0key0" + "7" * 24  # 40 characters, like a real W&B key


class _Run:
    """A W&B run that records what it is sent."""

    id = "fake"
    dir = "."

    def __init__(self):
        self.logged, self.finished, self.summary = [], [], {}

    def log(self, data):
        self.logged.append(dict(data))

    def finish(self, exit_code=0):
        self.finished.append(exit_code)


def test_answers_name_their_call():
    run = WandbRun()
    assert run({"call": "finish", "exit_code": 0}) == {"ok": True, "call": "finish",
                                                      "finished": False}
    assert run({"call": "bogus"})["call"] is None and not run({"call": "bogus"})["ok"]
    assert run("not a dict")["call"] is None


def test_a_wait_interrupted_by_ctrl_c_leaves_the_finish_whole(monkeypatch, tmp_path, caplog):
    """Ctrl-C while the logger waits for the start: the start's answer, read later, was taken
    for the finish's (KeyError 'finished': a traceback instead of run.py's "Interrupted")."""
    fake = _Run()

    def slow_init(**kwargs):
        time.sleep(0.2)  # still starting when the finish is sent: it must not overtake the start
        return fake

    monkeypatch.setattr(wandb, "init", slow_init)
    logger = WandbLogger()
    logger.start({"method.k": 3}, name="interrupted", dir=tmp_path, background=True)
    worker, interrupted = logger._worker, []
    real_answer = worker.answer

    def answer(timeout):
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt  # what Ctrl-C raises in the wait
        return real_answer(timeout)

    monkeypatch.setattr(worker, "answer", answer)
    with pytest.raises(KeyboardInterrupt):
        logger.log_metrics({"t2i/R@1": 50.0})
    with caplog.at_level(logging.INFO, logger="nnn.loggers"):
        logger.finish(exit_code=1)  # what nnn.pipeline.run does for any exception
    assert fake.finished == [1] and not fake.logged
    assert "W&B finish failed" not in caplog.text and "wandb sync None" not in caplog.text


class _SilentWorker:
    """A worker that takes every call and never answers."""

    def __init__(self):
        self.closed = []

    def send(self, call):
        pass

    def answer(self, timeout):
        raise TimeoutError(f"no answer from the W&B process in {timeout:g} s")

    def close(self, *, kill=False):
        self.closed.append(kill)


def test_a_finish_without_answer_kills_the_worker_at_once(monkeypatch, caplog):
    """No answer in WORKER_TIMEOUT_S: the worker is killed, not waited for a second time."""
    logger, worker = WandbLogger(), _SilentWorker()
    logger._worker = worker
    with caplog.at_level(logging.WARNING, logger="nnn.loggers"):
        logger.finish()
    assert worker.closed == [True]
    assert "W&B finish failed (TimeoutError" in caplog.text and logger._worker is None


def test_an_api_key_in_the_settings_is_refused_without_repeating_it():
    with pytest.raises(ValueError, match=r"logger\.settings\.api_key .* `wandb login`") as err:
        WandbLogger(settings={"silent": True, "api_key": FAKE_KEY})
    assert FAKE_KEY not in str(err.value)
    check_settings(None)
    check_settings({"silent": True, "api_key": None})


@pytest.mark.parametrize("mode", ["run", "multirun"])
def test_run_py_refuses_an_api_key_before_writing_anything(tmp_path, run_py, capsys, mode):
    out = tmp_path / "out"
    where = ([f"hydra.run.dir={out}"] if mode == "run"
             else ["-m", f"hydra.sweep.dir={out}", "method.k=1,2"])
    assert run_py(*where, "debug=tiny", f"+logger.settings.api_key={FAKE_KEY}") == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("Error: logger.settings.api_key is set") and FAKE_KEY not in err
    assert not out.exists()  # no .hydra/config.yaml, results.json or W&B run holds the key


def test_one_tag_given_as_a_string_is_one_tag():
    assert WandbLogger(tags="ablation").tags == ["ablation"]  # logger.tags=ablation
    assert WandbLogger(tags=["a", "b"]).tags == ["a", "b"]
    assert WandbLogger().tags == []


def test_disabled_mode_names_no_run_folder(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="nnn.loggers"), \
            WandbLogger(mode="disabled", settings={"silent": True}) as logger:
        logger.start({"method.k": 3}, name="off", dir=tmp_path)
        logger.log_metrics({"t2i/R@1": 50.0})
    assert "W&B is disabled (logger.mode=disabled): nothing is recorded" in caplog.text
    assert " in /" not in caplog.text and "wandb sync" not in caplog.text
    assert not (tmp_path / "wandb").exists()
