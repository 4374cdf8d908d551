"""The W&B side of ``nnn.loggers.WandbLogger``: one W&B run, driven by calls sent as plain dicts.

``python -m nnn.wandb_worker`` is the child process the logger normally starts: it reads one JSON
call per line on stdin and writes one JSON answer per line on stdout (``WandbRun`` lists both).
W&B runs there so that importing it (over a second of CPU) and starting its service happen on
another core, beside the experiment, instead of competing with it for the experiment's GIL.
The child ends after ``finish``; when its parent goes away without one (stdin closes, e.g. the
parent was killed), it finishes the run as failed and ends too. It ignores Ctrl-C, which reaches
the parent as well: the parent then finishes the run, marked failed. Everything else the child
prints (W&B's own lines, when its settings are not silent) goes to stderr, never into the
answers.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
from pathlib import Path

#: the calls a ``WandbRun`` answers
CALLS = ("start", "log_metrics", "log_table", "log_image", "finish")


def failure(err: BaseException) -> dict:
    """The answer that reports ``err`` (also used by the logger for its own failures)."""
    return {"ok": False, "error": type(err).__name__, "message": str(err),
            "import_error": isinstance(err, ImportError)}


class WandbRun:
    """One W&B run. Calling it with a call returns the answer and never raises.

    Calls: ``{"call": "start", "init": {...}, "settings": {...}}`` (``init``: the keyword
    arguments of ``wandb.init`` but ``settings``; ``settings``: the ``wandb.Settings`` fields),
    ``{"call": "log_metrics", "metrics": {...}}`` (logged and put in the run's summary),
    ``{"call": "log_table", "key": ..., "columns": [...], "rows": [[...], ...]}``,
    ``{"call": "log_image", "key": ..., "path": ..., "caption": ...}`` and
    ``{"call": "finish", "exit_code": int}``.
    Answers: ``{"ok": True, ...}`` (start adds the run's ``id`` and ``run_dir``, ``id`` None when
    W&B started no run; finish adds ``finished``: whether a run was open) or ``failure(err)``;
    each also names its ``call`` (None: not a call), so that a caller whose wait for an answer
    was interrupted (Ctrl-C) can tell that late answer from the next one.
    """

    def __init__(self):
        self._wandb = None
        self._run = None

    def __call__(self, call: dict) -> dict:
        name = call.get("call") if isinstance(call, dict) else None
        try:
            if name not in CALLS:
                raise ValueError(f"not a W&B call: {call!r:.200}; expected one of {CALLS}")
            args = {key: value for key, value in call.items() if key != "call"}
            return {"ok": True, "call": name, **getattr(self, "_" + name)(**args)}
        except Exception as err:
            return {**failure(err), "call": name if name in CALLS else None}

    def _start(self, init: dict, settings: dict) -> dict:
        import wandb

        if init.get("dir") is not None:
            Path(init["dir"]).mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self._run = wandb.init(**init, settings=wandb.Settings(**settings),
                               reinit="finish_previous")
        if self._run is None:
            return {"id": None}
        # <dir>/wandb/<mode>-run-<time>-<id>
        return {"id": self._run.id, "run_dir": str(Path(self._run.dir).parent)}

    def _log_metrics(self, metrics: dict) -> dict:
        self._run.log(dict(metrics))
        self._run.summary.update(dict(metrics))
        return {}

    def _log_table(self, key: str, columns: list, rows: list) -> dict:
        self._run.log({key: self._wandb.Table(columns=list(columns),
                                              data=[list(r) for r in rows])})
        return {}

    def _log_image(self, key: str, path: str, caption: str | None = None) -> dict:
        self._run.log({key: self._wandb.Image(str(path), caption=caption)})
        return {}

    def _finish(self, exit_code: int) -> dict:
        run, self._run = self._run, None
        if run is not None:
            run.finish(exit_code=exit_code)
        return {"finished": run is not None}


def main() -> None:
    """Answer the calls on stdin until ``finish`` or the end of stdin, then end the process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # any other output: to stderr
    run = WandbRun()
    for line in sys.stdin:
        try:
            call = json.loads(line)
        except ValueError as err:
            call = None
            answer = failure(err)
        else:
            answer = run(call)
        try:
            answers.write(json.dumps(answer) + "\n")
            answers.flush()
        except OSError:  # a broken pipe: the parent is gone
            break
        if isinstance(call, dict) and call.get("call") == "finish":
            break
    run({"call": "finish", "exit_code": 1})  # a no-op after finish; else the parent is gone
    # The parent waits for this process to end. Python's exit handlers (W&B's teardown) run;
    # the interpreter's finalisation, ~0.3 s with W&B loaded and nothing left to do, is skipped.
    atexit._run_exitfuncs()  # noqa: SLF001  the handlers Python would run at exit
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
