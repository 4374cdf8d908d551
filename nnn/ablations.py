"""Library code of the ablations: plain arrays in, plain values out (never a config).

- ``nnn_recall_grid``: R@1 of NNN over an alpha x k grid from ONE fit (one top-k reference table,
  ``NNN.bias_grid``) and ONE pass over the queries: each block of raw similarities q . r is
  computed once and every grid point only subtracts its biases. On the test split this is an
  *analysis* (how R@1 depends on alpha and k); choosing alpha and k is done on the tuning split
  (``nnn.tuning``).
- ``top_hubs`` / ``hub_occupancy``: how many queries the biggest hubs capture, and how many
  gallery items have each N_k, before and after a correction.
- ``write_hub_counts`` / ``read_hub_counts``: the per-item N_k counts of a run
  (``hubness_counts.npz``), so reports and notebooks can look at individual hubs.
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from nnn._arrays import as_matrix, check_grid, check_non_negative, check_positive_int
from nnn._atomic import atomic_write_bytes
from nnn.methods import NNN
from nnn.task import RetrievalTask

log = logging.getLogger(__name__)

HUB_COUNTS_NPZ = "hubness_counts.npz"
#: N_k bins of ``hub_occupancy``: [0], [1], [2], [3, 5), [5, 10), ..., [50, inf)
OCCUPANCY_EDGES = (0, 1, 2, 3, 5, 10, 20, 50)


# -- R@1 over the alpha x k grid -------------------------------------------------------------
def _relevant_index(task: RetrievalTask, device: torch.device) -> torch.Tensor:
    """(n_q, m) int64 gallery rows that answer each query, padded with -1.

    t2i: each caption's one image (m = 1); i2t: each image's captions (m = most captions of an
    image).
    """
    c2i = np.asarray(task.caption_to_image, dtype=np.int64)
    if task.direction == "t2i":
        return torch.from_numpy(c2i[:, None].copy()).to(device)
    n_img = len(task.queries)
    order = np.argsort(c2i, kind="stable")
    per_image = np.bincount(c2i, minlength=n_img)
    slot = np.arange(len(c2i)) - np.repeat(np.cumsum(per_image) - per_image, per_image)
    idx = np.full((n_img, max(int(per_image.max()), 1)), -1, dtype=np.int64)
    idx[c2i[order], slot] = order
    return torch.from_numpy(idx).to(device)


def _grid_hits(sims: torch.Tensor, idx: torch.Tensor, biases: torch.Tensor) -> torch.Tensor:
    """Hits (P,) of one query block for P bias vectors, checking every gallery item.

    sims (b, n_g) raw similarities; idx (b, m) relevant gallery rows (-1: padding); biases
    (P, n_g). A hit: a relevant item reaches the top score and no other item ties with it.
    """
    pad = idx < 0
    idx = idx.clamp(min=0)
    hits = torch.zeros(len(biases), dtype=torch.int64, device=sims.device)
    for p in range(len(biases)):
        scores = sims - biases[p]
        top = scores.amax(dim=1, keepdim=True)
        rel = scores.gather(1, idx).masked_fill(pad, -torch.inf)
        n_top, n_rel_top = (scores == top).sum(dim=1), (rel == top).sum(dim=1)
        hits[p] = ((n_rel_top > 0) & (n_top == n_rel_top)).sum()
    return hits


def nnn_recall_grid(task: RetrievalTask, *, alphas: Sequence[float], ks: Sequence[int],
                    batch_size: int = 1024, **nnn_kwargs) -> np.ndarray:
    """R@1 in percent of NNN for every (alpha, k): (len(alphas), len(ks)) float64.

    ``task``: one direction of a split with its references (``RetrievalTask.from_sets``); NNN is
    fitted once on ``task.gallery`` with ``k_max = max(ks)`` (``nnn_kwargs`` go to ``NNN``, e.g.
    ``backend``, ``device``). Queries are scored ``batch_size`` at a time; each block's raw
    similarities are computed once for the whole grid. A query counts as a hit when a relevant
    item scores strictly above every other item (ties count against it, as in ``nnn.metrics``),
    so the table equals R@1 of separate runs.
    """
    alphas = check_grid(alphas, "alphas", check_non_negative)
    ks = check_grid(ks, "ks", check_positive_int)
    n_refs = len(task.query_bank)
    too_big = [k for k in ks if k > n_refs]
    if too_big:
        raise ValueError(f"ks {too_big} are larger than the number of references ({n_refs}) "
                         f"in the {task.direction} query bank; NNN averages the k most similar "
                         f"references, so use k <= {n_refs} (in a run: analysis.ks; null cuts "
                         "the paper's grid at the reference size)")
    batch_size = check_positive_int(batch_size, "batch_size")
    fitted = task.fit(NNN(k=min(ks), k_max=max(ks), alpha=alphas[0], **nnn_kwargs))
    dev = fitted.device_
    gallery = torch.from_numpy(fitted.gallery_).to(dev)
    queries = torch.from_numpy(as_matrix(task.queries, "queries", dim=gallery.shape[1],
                                         normalize=fitted.normalize)).to(dev)
    biases = torch.from_numpy(fitted.bias_grid(ks, alphas)).to(dev).reshape(-1, len(gallery))
    rel_idx = _relevant_index(task, dev)                                # (n_q, m)
    n_q = len(queries)
    hits = torch.zeros(len(biases), dtype=torch.int64, device=dev)
    for start in tqdm(range(0, n_q, batch_size), desc=f"{task.direction} alpha x k grid",
                      leave=False, disable=None):
        stop = min(start + batch_size, n_q)
        sims = queries[start:stop] @ gallery.T                          # (b, n_g)
        hits += _grid_hits(sims, rel_idx[start:stop], biases)
    table = hits.reshape(len(alphas), len(ks)).cpu().numpy().astype(np.float64)
    return table * 100.0 / n_q


# -- images per hub ---------------------------------------------------------------------------
def alpha_k_analysis(task: RetrievalTask, *, alphas: Sequence[float] | None = None,
                     ks: Sequence[int] | None = None, split: str = "test",
                     batch_size: int = 1024, **nnn_kwargs) -> dict:
    """``nnn_recall_grid`` as results.json's ``analysis.alpha_k[direction]`` records it:
    {"split", "axes": {"alpha", "k"}, "table": R@1 (n_alpha, n_k) as lists}. None axes are
    NNN's tuning grid, k cut at the number of references. An analysis of the evaluation
    ``split``: it chooses nothing."""
    grid = NNN.tuning_grid
    alphas = list(grid["alphas"]) if alphas is None else list(alphas)
    ks = [k for k in grid["ks"] if k <= len(task.query_bank)] if ks is None else list(ks)
    table = nnn_recall_grid(task, alphas=alphas, ks=ks, batch_size=batch_size, **nnn_kwargs)
    return {"split": split, "axes": {"alpha": alphas, "k": ks}, "table": table.tolist()}


def hub_analysis(counts: Mapping[str, tuple[np.ndarray, np.ndarray]], top: int) -> dict:
    """results.json's ``analysis.hubs``: per direction the ``top`` biggest hubs (``top_hubs``,
    at most the gallery) and how many items have each N_k (``hub_occupancy``), before/after.
    ``counts``: {direction: (N_k before (n_g,), N_k after (n_g,))}."""
    return {d: {"top": top_hubs(b, a, top=min(int(top), len(b))),
                "occupancy": hub_occupancy(b, a)} for d, (b, a) in counts.items()}


def _counts_pair(before, after) -> tuple[np.ndarray, np.ndarray]:
    b, a = np.asarray(before), np.asarray(after)
    for name, c in (("before", b), ("after", a)):
        if c.ndim != 1 or c.dtype.kind not in "iu" or len(c) == 0 or c.min() < 0:
            raise ValueError(f"{name} must be a non-empty 1-D array of counts >= 0 (N_k per "
                             f"gallery item), got shape {c.shape} dtype {c.dtype}")
    if len(b) != len(a):
        raise ValueError(f"before has {len(b)} gallery items but after has {len(a)}; pass the "
                         "N_k counts of the same gallery")
    return b.astype(np.int64), a.astype(np.int64)


def top_hubs(before, after, *, top: int = 10) -> list[dict]:
    """The ``top`` biggest hubs before the correction and their N_k after it.

    before, after: (n_g,) N_k counts of the same gallery. Rows, largest N_k first (ties: lower
    id first): ``rank``, ``item`` (gallery row), ``before``, ``after`` and the percent of all
    query hits each captures (``before_share``, ``after_share``).
    """
    b, a = _counts_pair(before, after)
    top = check_positive_int(top, "top", upper=len(b), upper_name="the gallery size")
    order = np.lexsort((np.arange(len(b)), -b))[:top]
    tb, ta = max(int(b.sum()), 1), max(int(a.sum()), 1)
    return [{"rank": i + 1, "item": int(r), "before": int(b[r]), "after": int(a[r]),
             "before_share": 100.0 * b[r] / tb, "after_share": 100.0 * a[r] / ta}
            for i, r in enumerate(order)]


def hub_occupancy(before, after, *, edges: Sequence[int] = OCCUPANCY_EDGES) -> list[dict]:
    """How many gallery items have each N_k, before and after: one row per bin.

    Bins are [edges[i], edges[i+1]) and [edges[-1], inf); rows: ``bin`` (label, e.g. "5-9"),
    ``low``, ``high`` (None for the last), ``before``, ``after`` (numbers of items).
    """
    b, a = _counts_pair(before, after)
    edges = [int(e) for e in edges]
    if not edges or edges[0] != 0 or any(x >= y for x, y in zip(edges, edges[1:])):
        raise ValueError(f"edges must start at 0 and increase strictly, got {edges}")
    rows = []
    for low, high in zip(edges, [*edges[1:], None]):
        if high is None:
            label = f">={low}"
        else:
            label = str(low) if high == low + 1 else f"{low}-{high - 1}"
        inside = (lambda c: (c >= low) & (c < high)) if high is not None else (lambda c: c >= low)
        rows.append({"bin": label, "low": low, "high": high,
                     "before": int(inside(b).sum()), "after": int(inside(a).sum())})
    return rows


# -- the counts file --------------------------------------------------------------------------
def write_hub_counts(path: str | Path,
                     counts: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Save ``{direction: (before (n_g,), after (n_g,))}`` N_k counts as an ``.npz`` (atomic).

    Keys in the file: ``<direction>_baseline`` and ``<direction>_method``.
    """
    arrays = {}
    for direction, (before, after) in counts.items():
        b, a = _counts_pair(before, after)
        arrays[f"{direction}_baseline"], arrays[f"{direction}_method"] = b, a
    if not arrays:
        raise ValueError("write_hub_counts needs counts for at least one direction")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def read_hub_counts(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{direction: (before (n_g,), after (n_g,))}`` int64 from a file written by
    ``write_hub_counts`` (or the run directory holding ``hubness_counts.npz``); a missing file is
    ``FileNotFoundError``, a truncated, corrupt or foreign one ``ValueError``."""
    p = Path(path)
    if p.is_dir():
        p = p / HUB_COUNTS_NPZ
    if not p.is_file():
        raise FileNotFoundError(f"no N_k counts file at {str(p)!r}; runs write {HUB_COUNTS_NPZ} "
                                "into their output directory")
    try:
        with np.load(p, allow_pickle=False) as z:
            directions = [k[: -len("_baseline")] for k in z.files if k.endswith("_baseline")]
            counts = {d: _counts_pair(z[f"{d}_baseline"], z[f"{d}_method"]) for d in directions}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        raise ValueError(f"{str(p)!r} is not a readable N_k counts file: it is truncated, "
                         "corrupt or not written by write_hub_counts; rerun the run to rewrite "
                         f"{HUB_COUNTS_NPZ}") from None
    if not counts:
        raise ValueError(f"{str(p)!r} holds no N_k counts (no '<direction>_baseline' arrays); "
                         f"rerun the run to rewrite {HUB_COUNTS_NPZ}")
    return counts
