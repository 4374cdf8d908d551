"""Run one experiment (or a sweep with -m): ``python run.py [group=option ...] [key=value ...]``.

``python run.py --help`` lists the config groups and examples. The work is done by
``nnn.pipeline.run``; this file only turns a user error (``nnn.errors``: a bad
setting, a missing dataset, file or model, a failed download) into its one-line message and exit
code 1 (the full traceback with ``HYDRA_FULL_ERROR=1``), and returns the sweep objective. In a
grid sweep such a job is recorded as failed (results.json, sweep_summary) and the others still
run. A config Hydra cannot compose (``method=nnnn``, ``method.kk=3``) and what the checks before
the first job refuse (``nnn.hydra_callbacks.Preflight``) end with one line too, and Ctrl-C with
"Interrupted" and exit code 130.

Heavy modules (torch, scipy, matplotlib, W&B) are imported only once a job runs, so ``--help``
and config mistakes answer at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig

import nnn.config_dir  # registers ${nnn.repo_root:} before Hydra composes
from nnn.errors import MissingResourceError, full_error

log = logging.getLogger("nnn.run")


def user_error(err: BaseException) -> BaseException | None:
    """The user error (``nnn.errors``) behind ``err``: ``err`` itself, or the cause of Hydra's
    ``InstantiationException`` when a constructor refused its config; None for a bug."""
    from nnn.data.download import ChecksumError  # stdlib and tqdm only

    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err if isinstance(err, (MissingResourceError, ValueError, OSError, ChecksumError)) \
        else None


def one_line(err: BaseException) -> str:
    """``err``'s message on one line, as ``Error: ...`` prints it."""
    return str(err).replace("\n", " ")


def entry_error(err: BaseException, args: list[str]) -> str | None:
    """The line for an error that reached the entry point (``args``: the command line): a
    composition error (``nnn.config_dir.composition_error``) or a user error (``user_error``,
    e.g. of a trial that stopped an Optuna sweep); None for a bug."""
    message = nnn.config_dir.composition_error(err, args)
    cause = user_error(err) if message is None else None
    return message if cause is None else one_line(cause)


def _exit_if_known(err: BaseException, args: list[str]) -> None:
    """Print ``err``'s line (``entry_error``) and exit 1; return when it is a bug."""
    message = entry_error(err, args)
    if message is not None:
        print(f"Error: {message}", file=sys.stderr)
        sys.exit(1)


def _reraise(err: BaseException):
    raise err


@contextlib.contextmanager
def _failed_jobs_unprinted():
    """While the block runs, a job that failed with a user error (``user_error``) is not
    announced on stderr by Hydra, whose ``JobReturn.return_value`` writes "Error executing job
    with overrides: [...]" with ``sys.stderr.write`` (no logger to filter) on every access: an
    Optuna sweep reads it two or three times before the error reaches ``one_line_errors``,
    which then says it in its one line. A bug's job is announced as before."""
    from hydra.core.utils import JobReturn, JobStatus

    hydra_property = JobReturn.__dict__.get("return_value")
    if not isinstance(hydra_property, property):  # another Hydra: its announcement is kept
        yield
        return

    def quiet(job: JobReturn):
        if job.status == JobStatus.FAILED and user_error(job._return_value) is not None:
            raise job._return_value
        return hydra_property.fget(job)

    JobReturn.return_value = property(quiet, hydra_property.fset)
    try:
        yield
    finally:
        JobReturn.return_value = hydra_property


@contextlib.contextmanager
def one_line_errors(args: list[str]):
    """While the block runs, an error that ``entry_error`` knows ends with its one line on
    stderr and exit code 1, raised in the block or in Hydra's app (composing the config, a
    sweep stopped by a failed job), and Hydra does not announce the failed job before it
    (``_failed_jobs_unprinted``).

    Hydra's app reports what escapes it itself (``hydra._internal.utils.run_and_report``: a
    traceback or its multi-line message, then exit 1), so that function is wrapped meanwhile;
    a bug still gets Hydra's report, and ``HYDRA_FULL_ERROR=1`` leaves it all to Hydra.
    """
    from hydra._internal import utils as hydra_utils

    # Hydra has no public hook for how an app's errors are reported; its private reporter is
    # wrapped, and where a Hydra version lacks it its own (multi-line) report is kept
    hydra_report = getattr(hydra_utils, "run_and_report", None)
    if hydra_report is None or full_error():
        yield
        return

    def report(func):
        try:
            return func()
        except Exception as err:
            _exit_if_known(err, args)
            return hydra_report(functools.partial(_reraise, err))

    hydra_utils.run_and_report = report
    try:
        with _failed_jobs_unprinted():
            yield
    except Exception as err:
        _exit_if_known(err, args)
        raise
    finally:
        hydra_utils.run_and_report = hydra_report


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the objective (``cfg.objective`` of the method) for sweepers such as Optuna.

    A job of a grid sweep that fails with a user error returns NaN: the sweep goes on and ends
    with its summary, which lists the job. A selecting sweeper (Optuna) gets the error itself,
    records the trial as failed and stops the sweep (unless ``hydra.sweeper.max_failure_rate``
    allows failures; Optuna 2 refuses a NaN objective); run.py then prints its one line. With
    ``HYDRA_FULL_ERROR=1`` a job of a sweep logs the traceback and the sweep goes on as without
    it; a single run raises it.
    """
    from nnn import pipeline, reporting  # numpy, torch, ...: not for --help or a config error
    from nnn.settings import selecting_sweeper

    try:
        results = pipeline.run(cfg)
    except Exception as err:
        cause = user_error(err)
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        if cause is None or (full_error() and not multirun):
            raise  # a bug (or HYDRA_FULL_ERROR=1): Hydra prints the traceback
        if not multirun:
            print(f"Error: {one_line(cause)}", file=sys.stderr)
            sys.exit(1)
        # HYDRA_FULL_ERROR=1: the traceback too; the sweep goes on as without it
        (log.exception if full_error() else log.error)("job failed: %s", one_line(cause))
        if selecting_sweeper() is not None:
            raise
        return float("nan")
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
    try:
        with one_line_errors(sys.argv[1:]):
            sys.argv[1:] = nnn.config_dir.translate_overrides(sys.argv[1:])  # method.tune=
            if nnn.config_dir.is_plain_help(sys.argv[1:]) and not full_error():
                print(nnn.config_dir.app_help(sys.argv[1:]))  # Hydra's own help takes ~2 s
                exit_fast(0)
            main()
    except SystemExit as stop:  # after an error reported (by Hydra, here or nnn.hydra_callbacks)
        exit_fast(stop.code)
    except KeyboardInterrupt:  # Ctrl-C: the run's files are whole (atomic writes); no traceback
        if full_error():
            raise
        print("Interrupted", file=sys.stderr)
        exit_fast(130)
    exit_fast(0)
