"""run.py as a user meets it: --help and config mistakes answer without the heavy modules, and
ordinary mistakes end with one line on stderr and exit code 1 (no timings are asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from nnn.config_dir import CONFIG_DIR

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
    from nnn.errors import MissingResourceError

    spec = importlib.util.spec_from_file_location("nnn_run_script", REPO / "run.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    refused = ValueError("k must be a positive integer, got 0")
    wrapped = InstantiationException("Error in call to target 'nnn.methods.NNN'")
    wrapped.__cause__ = refused
    assert script.user_error(wrapped) is refused
    for err in (MissingResourceError("x"), FileNotFoundError("x"), OSError("download"),
                ChecksumError("x")):
        assert script.user_error(err) is err
    assert script.user_error(RuntimeError("a bug")) is None
    assert script.user_error(KeyError("a bug")) is None
