"""Shared test fixtures: seeded random unit vectors, a hub-heavy retrieval problem, real embeddings.

- ``rng``: a NumPy Generator seeded with 0 (fresh per test).
- ``unit(n, d)``: (n, d) float32 rows of unit L2 norm drawn from ``rng``.
- ``hub_retrieval(...)``: a synthetic paired retrieval problem in which a few gallery items are
  hubs (see ``make_hub_retrieval``).
- ``real_flickr``: folder of real CLIP ViT-L/14 Flickr30k embeddings (1,000 pairs); tests using
  it are skipped when it is absent. Found at ``$NNN_SHARED_DATA/flickr30k_clip_vitl14_1k``, by
  default ``<repo>/../shared/data/flickr30k_clip_vitl14_1k``.
- ``run_py(*args)``: ``python run.py *args`` inside the test process (Hydra's own command-line
  path), returning the exit code; for tests whose subject is not the fresh interpreter.

The repository root goes first on ``sys.path`` and on ``PYTHONPATH`` (inherited by every
subprocess: ``run.py``, ``experiments/*.py``, notebook kernels), so that this checkout's ``nnn``
is tested even when another clone is installed (editable) in the same environment.
"""

from __future__ import annotations

import atexit
import logging
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                           if p)
REAL_FLICKR = "flickr30k_clip_vitl14_1k"


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm, as float32."""
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_hub_retrieval(*, n_pairs: int = 300, n_refs: int = 600, d: int = 32, n_hubs: int = 5,
                       noise: float = 1.2, hub_strength: float = 1.5, query_shift: float = 0.8,
                       seed: int = 0):
    """A paired retrieval problem with hubs: query i's correct gallery item is item i.

    Every query (and reference query) leans towards one shared direction h; ``n_hubs`` gallery
    items also lean strongly towards h, so they score high with every query and steal top-1
    spots. Reference queries are drawn like the queries, around other (unseen) items.
    Returns ``gallery (n_pairs, d), queries (n_pairs, d), refs (n_refs, d), hubs (n_hubs,)``,
    all float32 unit rows except ``hubs`` (int64 gallery ids).
    """
    rng = np.random.default_rng(seed)
    h = unit_rows(rng.standard_normal((1, d)))[0]
    items = unit_rows(rng.standard_normal((n_pairs, d)))
    hubs = rng.choice(n_pairs, n_hubs, replace=False)
    gallery = items.copy()
    gallery[hubs] = unit_rows(items[hubs] + hub_strength * h)

    def queries_around(centres):
        return unit_rows(centres + noise * rng.standard_normal(centres.shape) / np.sqrt(d)
                         + query_shift * h)

    queries = queries_around(items)
    refs = queries_around(unit_rows(rng.standard_normal((n_refs, d))))
    return gallery, queries, refs, np.sort(hubs)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def unit(rng):
    """``unit(n, d)`` -> (n, d) float32 random unit rows (seeded through ``rng``)."""
    def make(n: int, d: int) -> np.ndarray:
        return unit_rows(rng.standard_normal((n, d)))
    return make


@pytest.fixture
def hub_retrieval():
    """The ``make_hub_retrieval`` function (keyword arguments, seeded)."""
    return make_hub_retrieval


def shared_data_dir() -> Path:
    """``$NNN_SHARED_DATA`` or ``shared/data`` beside the repository folder."""
    env = os.environ.get("NNN_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def real_flickr() -> Path:
    """Folder holding ``image_embeddings.npy`` and ``text_embeddings.npy`` (1000 x 768 each)."""
    path = shared_data_dir() / REAL_FLICKR
    needed = [path / "image_embeddings.npy", path / "text_embeddings.npy"]
    if not all(p.is_file() for p in needed):
        pytest.skip(f"real embeddings not found at {path} (set NNN_SHARED_DATA to the folder "
                    f"holding {REAL_FLICKR}/)")
    return path


@pytest.fixture
def run_py(monkeypatch, hydra_restore_singletons):
    """``run_py(*args)`` runs ``python run.py *args`` in this process and returns its exit code.

    The script runs as ``__main__`` (``runpy``), as on the command line: Hydra's argument
    parsing, run or ``-m`` multirun with the basic launcher, callbacks, logging set-up, error
    report and exit code, without the seconds a fresh interpreter spends importing. Hydra's
    singletons and the root logger's handlers are restored afterwards. Output: ``capsys``.
    """
    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def end_call(code: int) -> None:  # run.py's exit_fast ends the process: end the call instead
        raise SystemExit(code)

    def call(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["run.py", *args])
        monkeypatch.setattr(os, "_exit", end_call)
        monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: None)  # pytest's own stay queued
        try:
            runpy.run_path(str(REPO / "run.py"), run_name="__main__")
        except SystemExit as stop:
            return stop.code if isinstance(stop.code, int) else 1
        finally:
            GlobalHydra.instance().clear()
            for handler in root.handlers:
                if handler not in handlers:
                    handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)
        return 0

    return call
