"""Experiment loggers: Weights & Biases (offline by default) and a no-op logger.

Both take plain Python values (dicts, lists, paths), never a Hydra config. A logger must never
cost an experiment its results: every W&B call is wrapped, and a failure (W&B not installed,
``init`` refused, a log call raising) is logged as one warning, after which the logger turns
itself off and the run goes on. The pipeline writes its local results *before* logging.

``start(..., background=True)`` returns at once and starts the run in a thread; every later
call waits for it, so importing W&B and starting its service (seconds) overlap the caller's work.

Use as a context manager so that the run is always finished::

    with WandbLogger(project="nnn", mode="offline", dir=out) as logger:
        logger.start(config={"method.k": 16}, name="nnn-k16")
        logger.log_metrics({"t2i/R@1": 64.6})
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)

_MODES = ("offline", "online", "disabled")


def sweep_group(name: str, sweep_dir: str | Path) -> str:
    """The W&B group shared by the jobs of a sweep and its summary run: ``<name>-<sweep dir>``
    (the sweep directory's name is its start time, so two sweeps never share a group)."""
    return f"{name}-{Path(sweep_dir).name}"


class NullLogger:
    """A logger that records nothing (``logger=none``). Same interface as ``WandbLogger``."""

    #: False when nothing is being recorded (no logger, or a logger that failed)
    active = False

    def start(self, config: Mapping[str, Any], *, name: str | None = None,
              group: str | None = None, dir: str | Path | None = None,
              background: bool = False) -> None:
        """Begin a run with a flat ``config`` dict. ``background=True`` returns at once and
        starts the run in a thread (the next call waits for it), so that a slow start overlaps
        the caller's work."""

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


class WandbLogger(NullLogger):
    """Weights & Biases run, ``mode="offline"`` by default (no network, no account needed).

    project/entity/tags/job_type/notes: passed to ``wandb.init``; mode: "offline" (files under
    ``dir``/wandb, sync later with ``wandb sync``), "online" (needs ``wandb login``) or
    "disabled"; init_timeout: seconds ``wandb.init`` may wait for the server (W&B's own
    default is 90 s, added to every run when the server is unreachable; then this logger warns
    once and the run goes on without W&B); settings: extra ``wandb.Settings`` fields, e.g.
    ``{"silent": True}`` (W&B prints nothing; this logger still logs where the run is and how to
    upload it).
    ``start`` takes the run name, the group (e.g. a sweep) and the directory for W&B's files.
    The API key is never passed here: W&B reads it from its own login or ``WANDB_API_KEY``.
    """

    def __init__(self, *, project: str = "nnn", entity: str | None = None, mode: str = "offline",
                 tags: Sequence[str] = (), job_type: str | None = None, notes: str | None = None,
                 init_timeout: float = 15.0, settings: Mapping[str, Any] | None = None):
        if mode not in _MODES:
            raise ValueError(f"W&B mode must be one of {_MODES}, got {mode!r}; use "
                             "logger.mode=offline (default, no account) or online")
        if isinstance(init_timeout, bool) or not isinstance(init_timeout, (int, float)) \
                or not init_timeout > 0:
            raise ValueError(f"logger.init_timeout must be a number of seconds > 0, got "
                             f"{init_timeout!r}")
        self.init_timeout = float(init_timeout)
        self.project = project
        self.entity = entity
        self.mode = mode
        self.tags = list(tags or ())
        self.job_type = job_type
        self.notes = notes
        self.settings = dict(settings or {})
        self._run = None
        self._run_dir: Path | None = None
        self._wandb = None
        self._starting: threading.Thread | None = None
        self.active = False

    def _wait(self) -> None:
        """Wait for a ``start(background=True)`` still in progress."""
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.join()

    def _fail(self, what: str, err: BaseException) -> None:
        hint = " (install it: pip install wandb, or use logger=none)" \
            if isinstance(err, ImportError) else ""
        if what == "init" and self.mode == "online":
            hint += (f" (gave up after logger.init_timeout={self.init_timeout:g} s; raise it "
                     "for a slow server)")
        log.warning("W&B %s failed (%s: %s)%s; the run goes on without W&B and its local "
                    "results are unaffected", what, type(err).__name__,
                    " ".join(str(err).split()), hint)  # W&B's messages span lines
        self.active = False
        run, self._run = self._run, None
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:  # already failing; the warning above says what happened
                pass

    def start(self, config, *, name=None, group=None, dir=None, background=False) -> None:
        self._wait()
        if background:  # importing wandb and starting its service take seconds: overlap them
            self._starting = threading.Thread(target=self._start, args=(config, name, group, dir),
                                              name="wandb-start", daemon=True)
            self._starting.start()
        else:
            self._start(config, name, group, dir)

    def _start(self, config, name, group, dir) -> None:
        try:
            import wandb

            if dir is not None:
                Path(dir).mkdir(parents=True, exist_ok=True)
            self._wandb = wandb
            self._run = wandb.init(
                project=self.project, entity=self.entity, mode=self.mode, name=name,
                group=group, tags=self.tags or None, job_type=self.job_type, notes=self.notes,
                dir=str(dir) if dir is not None else None, config=dict(config),
                settings=wandb.Settings(**{"init_timeout": self.init_timeout,
                                           **self.settings}),
                reinit="finish_previous")
            self.active = self._run is not None
            if self.active:
                self._run_dir = Path(self._run.dir).parent  # <dir>/wandb/<mode>-run-<time>-<id>
                log.info("W&B run %s (%s mode) in %s", self._run.id, self.mode, self._run_dir)
        except Exception as err:
            self._fail("init", err)

    def log_metrics(self, metrics) -> None:
        self._wait()
        if not self.active:
            return
        try:
            self._run.log(dict(metrics))
            self._run.summary.update(dict(metrics))
        except Exception as err:
            self._fail("log_metrics", err)

    def log_table(self, key, columns, rows) -> None:
        self._wait()
        if not self.active:
            return
        try:
            self._run.log({key: self._wandb.Table(columns=list(columns),
                                                  data=[list(r) for r in rows])})
        except Exception as err:
            self._fail("log_table", err)

    def log_image(self, key, path, caption=None) -> None:
        self._wait()
        if not self.active:
            return
        try:
            self._run.log({key: self._wandb.Image(str(path), caption=caption)})
        except Exception as err:
            self._fail("log_image", err)

    def finish(self, exit_code: int = 0) -> None:
        self._wait()
        run, self._run = self._run, None
        self.active = False
        if run is None:
            return
        try:
            run.finish(exit_code=exit_code)
        except Exception as err:
            log.warning("W&B finish failed (%s: %s); local results are unaffected",
                        type(err).__name__, err)
            return
        if self.mode == "offline":
            log.info("W&B offline run saved; upload it with: wandb sync %s", self._run_dir)
