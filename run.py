"""Run one experiment (or a sweep with -m): ``python run.py [group=option ...] [key=value ...]``.

``python run.py --help`` lists the config groups and examples. The work is done by
``nnn.pipeline.run``; this file only turns a user error (``nnn.errors``: a bad
setting, a missing dataset, file or model, a failed download) into its one-line message and exit
code 1 (the full traceback with ``HYDRA_FULL_ERROR=1``), and returns the sweep objective. In a
sweep such a job is recorded as failed (results.json, sweep_summary) and the others still run.

Heavy modules (torch, scipy, matplotlib, W&B) are imported only once a job runs, so ``--help``
and config mistakes answer at once.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig

import nnn.config_dir  # noqa: F401  registers ${nnn.repo_root:} before Hydra composes
from nnn.errors import MissingResourceError

log = logging.getLogger("nnn.run")
#: Hydra's switch for full tracebacks; for a user error too
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"


def user_error(err: BaseException) -> BaseException | None:
    """The user error (``nnn.errors``) behind ``err``: ``err`` itself, or the cause of Hydra's
    ``InstantiationException`` when a constructor refused its config; None for a bug."""
    from nnn.data.download import ChecksumError  # stdlib and tqdm only

    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err if isinstance(err, (MissingResourceError, ValueError, OSError, ChecksumError)) \
        else None


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the objective (``cfg.objective`` of the method) for sweepers such as Optuna; NaN
    for a sweep job that failed with a user error (Optuna records the trial as failed)."""
    from nnn import pipeline, reporting  # numpy, torch, ...: not for --help or a config error

    try:
        results = pipeline.run(cfg)
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise  # a bug: Hydra prints its traceback
        if os.environ.get(FULL_ERROR_ENV) == "1":
            raise
        message = str(cause).replace("\n", " ")
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # the job is recorded as failed; the sweep goes on and ends with its summary, which
            # lists this job (nnn.hydra_callbacks.SweepSummary)
            log.error("job failed: %s", message)
            return float("nan")
        print(f"Error: {message}", file=sys.stderr)
        sys.exit(1)
    return reporting.objective_value(results)


def exit_fast(code) -> None:
    """Leave the process as ``sys.exit(code)`` would, without finalising the interpreter.

    Python's exit handlers run as usual (W&B's teardown, logging's flush); then, if no
    non-daemon thread is left to join, the process ends with ``os._exit``. The reason: the CUDA
    build of torch (README's pinned wheel, on CPU-only machines too) spends ~2 s of every run
    unloading its libraries during interpreter finalisation, after all work is done.
    """
    import atexit
    import threading

    if isinstance(code, str):  # sys.exit("message"): printed, exit status 1
        print(code, file=sys.stderr)
        code = 1
    code = 0 if code is None else int(code)
    others = [t for t in threading.enumerate()
              if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if others:  # let Python join them as usual
        sys.exit(code)
    atexit._run_exitfuncs()  # noqa: SLF001  the handlers Python would run at exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.argv[1:] = nnn.config_dir.translate_overrides(sys.argv[1:])  # method.tune=: tune.enabled=
    if nnn.config_dir.is_plain_help(sys.argv[1:]):  # Hydra's own help takes ~2 s (app_help)
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        try:
            print(nnn.config_dir.app_help(sys.argv[1:]))
            exit_fast(0)
        except (HydraException, OmegaConfBaseException) as err:  # e.g. an unknown option
            if os.environ.get(FULL_ERROR_ENV) != "1":  # else Hydra's help raises it in full
                print(err, file=sys.stderr)  # as Hydra reports it for a run
                exit_fast(1)
    try:
        main()
    except SystemExit as stop:  # Hydra exits this way after an error it reported
        exit_fast(stop.code)
    exit_fast(0)
