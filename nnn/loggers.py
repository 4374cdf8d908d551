"""Experiment loggers: Weights & Biases (offline by default) and a no-op logger.

Both take plain Python values (dicts, lists, paths), never a Hydra config. A logger must never
cost an experiment its results: every W&B call is wrapped, and a failure (W&B not installed,
``init`` refused, a log call raising) is logged as one warning, after which the logger turns
itself off and the run goes on. The pipeline writes its local results *before* logging.

W&B itself runs in a child process (``nnn.wandb_worker``, fed the calls as JSON lines), so that
importing it and starting its service (seconds of CPU) happen on another core and never in this
interpreter. When this interpreter has imported ``wandb`` already (a notebook that uses it, tests
that patch it), there is nothing to save: the run is then made by that ``wandb``, here, in a
thread. ``start(..., background=True)`` returns at once; every later call waits for the start,
so W&B's start overlaps the caller's work. W&B's copy of the console (``output.log`` of a run)
is the child's, which prints nothing: the run's own log stays in the output directory (Hydra's
``run.log``, beside ``wandb/``).

Use as a context manager so that the run is always finished::

    with WandbLogger(project="nnn", mode="offline") as logger:
        logger.start(config={"method.k": 16}, name="nnn-k16", dir=out)
        logger.log_metrics({"t2i/R@1": 64.6})
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from nnn.wandb_worker import WandbRun, failure

log = logging.getLogger(__name__)

_MODES = ("offline", "online", "disabled")
#: seconds to wait for one answer of W&B (for the start: ``init_timeout`` more) or for its
#: process to end after the run is finished; then W&B is given up (its process is killed)
WORKER_TIMEOUT_S = 120.0


def sweep_group(name: str, sweep_dir: str | Path) -> str:
    """The W&B group shared by the jobs of a sweep and its summary run: ``<name>-<sweep dir>``
    (the sweep directory's name is its start time, so two sweeps never share a group)."""
    return f"{name}-{Path(sweep_dir).name}"


def check_settings(settings: Mapping[str, Any] | None) -> None:
    """``ValueError`` when the ``wandb.Settings`` fields ``settings`` (``logger.settings``) hold
    an API key, which a config would write to ``.hydra/``, ``results.json`` and the W&B run's
    config (uploaded by ``wandb sync``). The message does not repeat the key."""
    if settings and settings.get("api_key") is not None:
        raise ValueError("logger.settings.api_key is set, but the W&B API key never belongs in a "
                         "config (it would be written to .hydra/config.yaml, results.json and the "
                         "W&B run's config): remove it and run `wandb login` or set WANDB_API_KEY")


class NullLogger:
    """A logger that records nothing (``logger=none``). Same interface as ``WandbLogger``."""

    #: False when nothing is being recorded (no logger, or a logger that failed)
    active = False

    def start(self, config: Mapping[str, Any], *, name: str | None = None,
              group: str | None = None, dir: str | Path | None = None,
              job_type: str | None = None, background: bool = False) -> None:
        """Begin a run with a flat ``config`` dict; ``job_type`` (None: the logger's own setting)
        tells runs of one kind apart, e.g. a sweep's summary run. ``background=True`` returns at
        once (the next call waits for the start), so that a slow start overlaps the caller's
        work."""

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Record scalar metrics, e.g. ``{"t2i/R@1": 64.6}``."""

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Record a table of ``rows`` (each as long as ``columns``)."""

    def log_image(self, key: str, path: str | Path, caption: str | None = None) -> None:
        """Record the image file at ``path``."""

    def finish(self, exit_code: int = 0) -> None:
        """End the run (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.finish(exit_code=0 if exc_type is None else 1)
        return False


class _ChildWorker:
    """``python -m nnn.wandb_worker`` in a child process: ``send`` writes a call, ``answer``
    reads the next answer (in order, as they come) within a timeout."""

    def __init__(self):
        env = dict(os.environ)  # the child imports this nnn, wherever it is
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen([sys.executable, "-m", "nnn.wandb_worker"], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      encoding="utf-8")
        self._answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, name="wandb-answers", daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self._proc.stdout:
                self._answers.put(json.loads(line))
        finally:  # the child's stdout closed: it has ended (or sent something unreadable)
            self._answers.put(None)

    def send(self, call: dict) -> None:
        self._proc.stdin.write(json.dumps(call, default=_plain) + "\n")
        self._proc.stdin.flush()

    def answer(self, timeout: float) -> dict:
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no answer from the W&B process in {timeout:g} s") from None
        if answer is None:
            raise ChildProcessError(f"the W&B process ended (exit code {self._proc.wait()})")
        return answer

    def close(self, *, kill: bool = False) -> None:
        """Let the child end (it does after ``finish`` or at the end of its stdin); ``kill``:
        end it now (it gave no answer)."""
        try:
            self._proc.stdin.close()
        except OSError:  # it is gone already
            pass
        try:
            self._proc.wait(timeout=0 if kill else WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _answer_to(worker: _ChildWorker | _ThreadWorker, call: str, timeout: float) -> dict:
    """The worker's answer to its latest ``call`` (a ``WandbRun`` call name). Answers to earlier
    calls still unread, whose wait was interrupted (Ctrl-C), are skipped: read as the answer to
    this call they would be taken for it (a finish answered by a start's answer)."""
    while True:
        answer = worker.answer(timeout)
        if answer.get("call") in (call, None):
            return answer


def _plain(value):
    """JSON for what ``json`` does not know: NumPy scalars as numbers, anything else as text."""
    return value.item() if hasattr(value, "item") else str(value)


class _ThreadWorker:
    """``WandbRun`` in this interpreter, its calls in order in one thread (as the child answers
    them: a call sent after an interrupted wait never overtakes the one before): the
    ``_ChildWorker`` interface for a ``wandb`` that is imported here already."""

    def __init__(self):
        self._run = WandbRun()
        self._calls: queue.Queue = queue.Queue()
        self._answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, name="wandb-calls", daemon=True).start()

    def _serve(self) -> None:
        for call in iter(self._calls.get, None):
            self._answers.put(self._run(call))

    def send(self, call: dict) -> None:
        self._calls.put(call)

    def answer(self, timeout: float) -> dict:
        try:
            return self._answers.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no answer from W&B in {timeout:g} s") from None

    def close(self, *, kill: bool = False) -> None:
        """The thread ends after the calls sent (a hung call's thread is left)."""
        self._calls.put(None)


class WandbLogger(NullLogger):
    """Weights & Biases run, ``mode="offline"`` by default (no network, no account needed).

    project/entity/tags/job_type/notes: passed to ``wandb.init`` (tags: a list, or one tag as a
    string); mode: "offline" (files under
    ``dir``/wandb, sync later with ``wandb sync``), "online" (needs ``wandb login``) or
    "disabled"; init_timeout: seconds ``wandb.init`` may wait for the server (W&B's own
    default is 90 s, added to every run when the server is unreachable; then this logger warns
    once and the run goes on without W&B); settings: extra ``wandb.Settings`` fields, e.g.
    ``{"silent": True}`` (W&B prints nothing; this logger still logs where the run is and how to
    upload it).
    ``start`` takes the run name, the group (e.g. a sweep) and the directory for W&B's files.
    The API key is never passed here (``settings`` with ``api_key`` is refused:
    ``check_settings``): W&B reads it from its own login or ``WANDB_API_KEY``.
    """

    def __init__(self, *, project: str = "nnn", entity: str | None = None, mode: str = "offline",
                 tags: Sequence[str] = (), job_type: str | None = None, notes: str | None = None,
                 init_timeout: float = 15.0, settings: Mapping[str, Any] | None = None):
        if mode not in _MODES:
            raise ValueError(f"logger.mode={mode!r} is not a W&B mode; use one of "
                             f"{', '.join(_MODES)} (offline, the default, needs no account)")
        if isinstance(init_timeout, bool) or not isinstance(init_timeout, (int, float)) \
                or not init_timeout > 0:
            raise ValueError(f"logger.init_timeout must be a number of seconds > 0, got "
                             f"{init_timeout!r}")
        check_settings(settings)
        self.init_timeout = float(init_timeout)
        self.project = project
        self.entity = entity
        self.mode = mode
        self.tags = [tags] if isinstance(tags, str) else list(tags or ())  # logger.tags=ablation
        self.job_type = job_type
        self.notes = notes
        self.settings = dict(settings or {})
        self._worker: _ChildWorker | _ThreadWorker | None = None
        self._starting = False  # the start's answer is still to be read
        self._run_dir: Path | None = None
        self.active = False

    def _hint(self, what: str, answer: dict) -> str:
        """What to do about the failure ``answer`` of the call ``what``: install W&B, log in
        (online mode without an API key: W&B's ``UsageError`` says so), else, for an online
        start, wait longer for the server."""
        if answer["import_error"]:
            return " (install it: pip install wandb, or use logger=none)"
        if what != "init" or self.mode != "online":
            return ""
        if answer["error"] == "UsageError" and "api key" in answer["message"].lower():
            return (" (no W&B API key is set: run `wandb login` or set WANDB_API_KEY, or use "
                    "logger.mode=offline)")
        return (f" (gave up after logger.init_timeout={self.init_timeout:g} s; raise it for a "
                "slow server)")

    def _fail(self, what: str, answer: dict, *, finish: bool = True) -> None:
        """Warn once, turn the logger off and end the worker (``finish``: finishing the run as
        failed first; not when the worker itself gave no answer)."""
        log.warning("W&B %s failed (%s: %s)%s; the run goes on without W&B and its local "
                    "results are unaffected", what, answer["error"],
                    " ".join(answer["message"].split()),  # W&B's messages span lines
                    self._hint(what, answer))
        self.active = False
        if finish:
            self._end(exit_code=1)  # already failing; the warning above says what happened
        elif self._worker is not None:  # it died, hangs or takes no calls: no finish
            worker, self._worker = self._worker, None
            worker.close(kill=True)

    def _call(self, what: str, call: dict | None, timeout: float = WORKER_TIMEOUT_S):
        """Send ``call`` (None: none, read the start's answer) and return the answer; on a
        failure warn (``_fail``) and return None."""
        try:
            if call is not None:
                self._worker.send(call)
            answer = _answer_to(self._worker, "start" if call is None else call["call"], timeout)
        except Exception as err:  # the worker died, hangs, or could not be written to
            self._fail(what, failure(err), finish=False)
            return None
        if not answer["ok"]:
            self._fail(what, answer)
            return None
        return answer

    def _end(self, exit_code: int) -> dict:
        """Finish the worker's run with ``exit_code`` and let the worker end; its answer. A worker
        that gives no answer (in ``WORKER_TIMEOUT_S``) is killed, not waited for once more."""
        worker, self._worker = self._worker, None
        self.active = False
        answered = True
        try:
            worker.send({"call": "finish", "exit_code": exit_code})
            return _answer_to(worker, "finish", WORKER_TIMEOUT_S)
        except Exception as err:
            answered = False
            return failure(err)
        finally:
            worker.close(kill=not answered)

    def _wait(self) -> None:
        """Read the answer of a ``start(background=True)`` still in progress."""
        if not self._starting:
            return
        self._starting = False
        answer = self._call("init", None, timeout=self.init_timeout + WORKER_TIMEOUT_S)
        if answer is None:
            return
        self.active = answer["id"] is not None
        if self.active:
            self._run_dir = Path(answer["run_dir"])
            if self.mode == "disabled":  # W&B's stand-in run: its folder is never made
                log.info("W&B is disabled (logger.mode=disabled): nothing is recorded")
            else:
                log.info("W&B run %s (%s mode) in %s", answer["id"], self.mode, self._run_dir)

    def start(self, config, *, name=None, group=None, dir=None, job_type=None,
              background=False) -> None:
        self.finish()  # a run already started ends here (as wandb.init(reinit=...) would)
        self._run_dir = None
        init = {"project": self.project, "entity": self.entity, "mode": self.mode, "name": name,
                "group": group, "tags": self.tags or None,
                "job_type": job_type if job_type is not None else self.job_type,
                "notes": self.notes, "dir": str(dir) if dir is not None else None,
                "config": dict(config)}
        try:
            self._worker = _ThreadWorker() if "wandb" in sys.modules else _ChildWorker()
            self._worker.send({"call": "start", "init": init,
                               "settings": {"init_timeout": self.init_timeout, **self.settings}})
        except Exception as err:  # no process could be started, or it took no call
            self._fail("init", failure(err), finish=False)
            return
        self._starting = True
        if not background:
            self._wait()

    def _log(self, what: str, call: dict) -> None:
        self._wait()
        if self.active:
            self._call(what, {"call": what, **call})

    def log_metrics(self, metrics) -> None:
        self._log("log_metrics", {"metrics": dict(metrics)})

    def log_table(self, key, columns, rows) -> None:
        self._log("log_table", {"key": key, "columns": list(columns),
                                "rows": [list(r) for r in rows]})

    def log_image(self, key, path, caption=None) -> None:
        self._log("log_image", {"key": key, "path": str(path), "caption": caption})

    def finish(self, exit_code: int = 0) -> None:
        self._wait()
        if self._worker is None:  # never started, or already finished or failed
            return
        answer = self._end(exit_code)
        if not answer["ok"]:
            log.warning("W&B finish failed (%s: %s); local results are unaffected",
                        answer["error"], answer["message"])
        elif self.mode == "offline" and answer["finished"] and self._run_dir is not None:
            log.info("W&B offline run saved; upload it with: wandb sync %s", self._run_dir)
