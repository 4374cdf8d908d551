"""W&B as configured by conf/logger/wandb.yaml: silent offline runs, and an unreachable server
that costs a short, configurable timeout instead of W&B's 90 s; the child process W&B runs in
ends with its run or its parent, and its failures are one warning. No test touches the network:
the "server" is a local port that refuses connections."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import wandb
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nnn.loggers import WandbLogger
from nnn.config_dir import CONFIG_DIR

FAKE_KEY = "fake0secret0key0" + "7" * 24  # 40 characters, like a real W&B key
WANDB_ENV = ("WANDB_MODE", "WANDB_SILENT", "WANDB_QUIET", "WANDB_BASE_URL", "WANDB_API_KEY",
             "WANDB_INIT_TIMEOUT", "WANDB_CONSOLE")


def configured_logger():
    """The logger exactly as ``logger=wandb`` builds it."""
    return instantiate(OmegaConf.load(CONFIG_DIR / "logger" / "wandb.yaml"))


def test_offline_run_prints_no_wandb_lines(tmp_path, monkeypatch, capfd):
    for name in WANDB_ENV:  # no help from the environment: the config alone must be quiet
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    with configured_logger() as logger:
        logger.start({"method.k": 3}, name="quiet-test", dir=tmp_path / "run")
        assert logger.active
        logger.log_metrics({"t2i/R@1": 50.0})
    out, err = capfd.readouterr()
    assert "wandb" not in (out + err).lower(), out + err
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_init_timeout_defaults_short_and_reaches_wandb(tmp_path, monkeypatch):
    seen = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        raise wandb.errors.CommError("Timed out\nConsider increasing the init_timeout setting")

    monkeypatch.setattr(wandb, "init", fake_init)
    logger = configured_logger()
    assert logger.init_timeout == WandbLogger().init_timeout == 15.0
    logger.start({}, dir=tmp_path)
    assert seen["settings"].init_timeout == 15.0 and seen["settings"].silent
    WandbLogger(init_timeout=2.5, settings={"quiet": True}).start({}, dir=tmp_path)
    assert seen["settings"].init_timeout == 2.5
    with pytest.raises(ValueError, match="logger.init_timeout must be a number of seconds > 0"):
        WandbLogger(init_timeout=0)


@pytest.mark.parametrize("error, hint, not_hint", [
    (wandb.errors.UsageError("No API key configured. Use `wandb login` to log in."),
     "no W&B API key is set: run `wandb login` or set WANDB_API_KEY, or use logger.mode=offline",
     "init_timeout"),
    (wandb.errors.CommError("Timed out while retrying"), "logger.init_timeout=2 s; raise it",
     "API key"),
])
def test_an_online_start_that_fails_says_what_to_do(tmp_path, monkeypatch, caplog, error, hint,
                                                    not_hint):
    def failing_init(**kwargs):
        raise error

    monkeypatch.setattr(wandb, "init", failing_init)
    with caplog.at_level("WARNING", logger="nnn.loggers"):
        WandbLogger(mode="online", init_timeout=2).start({}, dir=tmp_path)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "nnn.loggers"]
    assert "W&B init failed" in warning and hint in warning and not_hint not in warning


def test_an_unknown_mode_is_refused_with_the_modes():
    with pytest.raises(ValueError, match=r"logger\.mode='bogus' is not a W&B mode; use one of "
                                         r"offline, online, disabled"):
        WandbLogger(mode="bogus")


UNREACHABLE_SCRIPT = """
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    from nnn.loggers import WandbLogger

    logger = WandbLogger(mode="online", init_timeout=3, settings={"silent": True})
    with logger:
        logger.start({"method.k": 3}, name="unreachable", dir=sys.argv[1])
        logger.log_metrics({"t2i/R@1": 50.0})
    print("the run went on; W&B active:", logger.active)
"""


def test_unreachable_server_costs_the_timeout_and_one_warning(tmp_path):
    with socket.socket() as closed_port:  # bound, never listening: connections are refused
        closed_port.bind(("127.0.0.1", 0))
        env = {k: v for k, v in os.environ.items() if k not in WANDB_ENV}
        env.update(WANDB_BASE_URL=f"http://127.0.0.1:{closed_port.getsockname()[1]}",
                   WANDB_API_KEY=FAKE_KEY, WANDB_CONFIG_DIR=str(tmp_path / "config"),
                   WANDB_CACHE_DIR=str(tmp_path / "cache"), WANDB_DATA_DIR=str(tmp_path / "data"),
                   PYTHONPATH=os.pathsep.join(sys.path))
        script = tmp_path / "script.py"
        script.write_text(textwrap.dedent(UNREACHABLE_SCRIPT))
        # the timeout only guards against a hang; W&B alone would wait 90 s
        proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], env=env,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the run went on; W&B active: False" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, proc.stderr
    assert "W&B init failed" in warnings[0] and "init_timeout=3 s;" in warnings[0]
    assert "goes on without W&B" in warnings[0]
    assert FAKE_KEY not in proc.stdout + proc.stderr


def run_script(tmp_path, script: str, *args, env=None, timeout=120):
    """``script`` in a fresh interpreter (no wandb imported yet: W&B runs in a child process)."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    env = {**{k: v for k, v in os.environ.items() if k not in WANDB_ENV},
           "WANDB_CONFIG_DIR": str(tmp_path / "config"), "PYTHONPATH": os.pathsep.join(sys.path),
           **(env or {})}
    return subprocess.run([sys.executable, str(path), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


CHILD_SCRIPT = """
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    from nnn.loggers import WandbLogger

    logger = WandbLogger(settings={"silent": True})
    with logger:
        logger.start({"method.k": 3}, name="child", dir=sys.argv[1], background=True)
        logger.log_metrics({"t2i/R@1": 50.0})
        child = logger._worker._proc
        print("child pid", child.pid, "active", logger.active)
    print("child exit code", child.poll(), "wandb imported here:", "wandb" in sys.modules)
"""


def test_wandb_runs_in_a_child_process_that_ends_with_the_run(tmp_path):
    proc = run_script(tmp_path, CHILD_SCRIPT, tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "active True" in proc.stdout
    assert "child exit code 0 wandb imported here: False" in proc.stdout
    assert "W&B offline run saved; upload it with: wandb sync" in proc.stderr
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert list(run_dir.glob("run-*.wandb"))
    assert not [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]


KILLED_SCRIPT = """
    import os, signal, sys
    from nnn.loggers import WandbLogger

    logger = WandbLogger(settings={"silent": True})
    logger.start({}, name="orphan", dir=sys.argv[1])
    print(logger._worker._proc.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no finish, no exit handlers
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie has ended, it only awaits reaping
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_child_ends_when_its_parent_dies(tmp_path):
    proc = run_script(tmp_path, KILLED_SCRIPT, tmp_path / "run")
    assert proc.returncode == -9, proc.stderr[-3000:]
    pid = int(proc.stdout.split()[0])
    for _ in range(600):  # the child finishes the run (as failed), then exits
        if not _alive(pid):
            break
        time.sleep(0.1)
    assert not _alive(pid), "the W&B process outlived its parent"


HUNG_SCRIPT = """
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    import nnn.loggers
    from nnn.loggers import WandbLogger

    nnn.loggers.WORKER_TIMEOUT_S = 1.0
    with WandbLogger(init_timeout=1) as logger:
        logger.start({}, name="hung", dir=sys.argv[1], background=True)
        child = logger._worker._proc
        logger.log_metrics({"t2i/R@1": 50.0})
    print("the run went on; W&B active:", logger.active, "child exit code:", child.poll())
"""


@pytest.mark.parametrize("script, wandb_code, printed, warned", [
    (UNREACHABLE_SCRIPT, "raise ImportError('this wandb is broken')\n", "W&B active: False",
     ["W&B init failed (ImportError: this wandb is broken)", "pip install wandb"]),
    (HUNG_SCRIPT, "import time\ntime.sleep(600)\n", "W&B active: False child exit code: -9",
     ["W&B init failed (TimeoutError: no answer from the W&B process in 2 s)"]),
], ids=["wandb-broken", "wandb-hangs"])
def test_a_child_that_fails_or_hangs_is_one_warning(tmp_path, script, wandb_code, printed,
                                                    warned):
    """The run goes on; a child that gives no answer in time is killed."""
    path = tmp_path / "fake" / "wandb"  # what the child imports as wandb
    path.mkdir(parents=True)
    (path / "__init__.py").write_text(wandb_code)
    proc = run_script(tmp_path, script, tmp_path / "run",
                      env={"PYTHONPATH": os.pathsep.join([str(path.parent), *sys.path])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"the run went on; {printed}" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, proc.stderr
    for part in warned:
        assert part in warnings[0]
