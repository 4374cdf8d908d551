"""Streaming statistics of a bank against the gallery, shared by QB-Norm and DBNorm.

For a bank B (n_b, d), a gallery G (n_g, d) and each of several betas > 0, the inverted softmax
needs, per gallery item r,

    log_norm_beta(r) = log sum_{b in B} exp(beta * s(b, r)),      s = dot product,

and the dynamic variants need the *activation set*: gallery items that are among the
``activation_k`` most similar gallery items of at least one bank row. The activation set does
not depend on beta, and each log_norm depends only on (bank, beta).

All of them come from ONE pass over bank chunks of ``chunk_rows(n_g, d, memory_budget_mb)``
rows, however many betas are asked for (a grid search over beta costs one pass per bank). Each
chunk's (c, n_g) block of s is computed once into a reusable buffer, its top-k taken, and its
column maxima m subtracted in place; then for every beta the block beta * (s - m) (all <= 0) is
written into a second reusable buffer and its log-sum-exp down the bank axis is taken there in
float32, plus beta * m in float64, and merged into a float64 running value with ``logaddexp``.
The result is stable for any beta (100 and beyond), the bank x gallery matrix (11.8 GB at COCO
scale, 591,753 x 5,000) is never built, and each beta's value does not depend on which other
betas share the pass (a grid search gives bit for bit what a one-beta fit gives).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from nnn._arrays import as_tensor, check_non_negative

_BYTES_PER_VALUE = 4  # float32
#: the (c, n_g) float32 buffers of a chunk: similarities, and one beta's shifted exponent
_SCORE_BUFFERS = 2
#: bank x gallery sizes below this finish in about a second: no progress bar for them.
_PROGRESS_MIN_SCORES = 10**8


def chunk_rows(n_gallery: int, dim: int, memory_budget_mb: float, activation_k: int = 1) -> int:
    """Bank rows per chunk so that a chunk's two score buffers (c, n_g), its top-k values and
    ids (c, activation_k) and, on a GPU, its copy of the bank rows (c, d) fit in
    ``memory_budget_mb`` MiB."""
    per_row = ((_SCORE_BUFFERS * n_gallery + dim) * _BYTES_PER_VALUE
               + activation_k * (_BYTES_PER_VALUE + 8))
    return max(1, int(memory_budget_mb * 2**20 // per_row))


def check_memory_budget(memory_budget_mb) -> float:
    """Return ``memory_budget_mb`` as a finite float > 0, else raise ``ValueError``."""
    try:
        v = float(memory_budget_mb)
    except (TypeError, ValueError):
        raise ValueError(f"memory_budget_mb must be a number, got {memory_budget_mb!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError("memory_budget_mb must be a finite number > 0 (MiB), "
                         f"got {memory_budget_mb!r}")
    return v


def check_beta_grid(values, name: str) -> tuple[float, ...]:
    """``values`` (None = none) as a tuple of floats > 0, else ``ValueError`` naming ``name``."""
    out = tuple(check_non_negative(v, f"every value in {name}") for v in np.atleast_1d(
        () if values is None else values).tolist())
    if 0 in out:
        raise ValueError(f"{name} must hold betas > 0, got {list(out)} (a beta of 0 needs no "
                         "bank statistics)")
    return out


@dataclass(frozen=True)
class BankStats:
    """One bank's statistics against one gallery of n_g items, from one streamed pass.

    ``log_norms``: beta -> (n_g,) float64 ``log sum_b exp(beta * s(b, r))``, for every fitted
    beta; ``activation``: (n_g,) bool, gallery items in the top-``activation_k`` of at least one
    bank row (``activation_k`` as given to ``bank_stats``).
    """

    log_norms: dict[float, np.ndarray]
    activation: np.ndarray

    def log_norm(self, beta: float, name: str = "beta") -> np.ndarray:
        """The (n_g,) float64 log-normaliser of ``beta``; ``ValueError`` if it was not fitted."""
        try:
            return self.log_norms[beta]
        except KeyError:
            raise ValueError(f"{name}={beta} was not fitted (fitted: {sorted(self.log_norms)}); "
                             "refit with it among the betas") from None


def bank_stats(bank: np.ndarray, gallery: torch.Tensor, *, betas: Sequence[float],
               activation_k: int, memory_budget_mb: float, desc: str = "bank",
               progress: bool = True) -> BankStats:
    """Stream ``bank`` (n_b, d) float32 once against ``gallery`` (n_g, d) float32 on its device.

    ``betas``: the betas (each > 0; repeats are computed once) whose log-normalisers to compute.
    Raises ``ValueError`` if a log-normaliser leaves the float32 range (scores are float32).
    """
    betas = list(dict.fromkeys(float(b) for b in betas))
    if not betas or not all(b > 0 for b in betas):
        raise ValueError(f"betas must be a non-empty list of numbers > 0, got {betas}")
    (n_b, d), n_g = bank.shape, len(gallery)
    dev = gallery.device
    step = min(n_b, chunk_rows(n_g, d, memory_budget_mb, activation_k))
    starts = range(0, n_b, step)
    sims = torch.empty((step, n_g), dtype=torch.float32, device=dev)
    work = torch.empty((step, n_g), dtype=torch.float32, device=dev)
    log_norm = torch.full((len(betas), n_g), -math.inf, dtype=torch.float64, device=dev)
    activation = torch.zeros(n_g, dtype=torch.bool, device=dev)
    bar = tqdm(starts, desc=desc, unit="chunk",
               disable=not progress or n_b * n_g < _PROGRESS_MIN_SCORES)
    with torch.inference_mode():
        for start in bar:
            xb = as_tensor(bank[start:start + step]).to(dev)
            s = torch.mm(xb, gallery.T, out=sims[:len(xb)])           # (c, n_g)
            _, top = torch.topk(s, activation_k, dim=1, sorted=False)  # (c, activation_k)
            activation[top.reshape(-1)] = True
            peak = s.amax(dim=0)                                       # (n_g,)
            s.sub_(peak)                                               # <= 0
            peak = peak.double()
            for i, beta in enumerate(betas):
                # In place in ``work``, unlike torch.logsumexp, which allocates a (c, n_g) block.
                e = torch.mul(s, beta, out=work[:len(xb)])
                chunk = e.exp_().sum(dim=0).log_().double() + beta * peak
                log_norm[i] = torch.logaddexp(log_norm[i], chunk)
    bad = [b for b, row in zip(betas, log_norm) if not torch.isfinite(row.float()).all()]
    if bad:
        raise ValueError(f"beta {bad} overflows float32 (beta * similarity must stay below "
                         "3e38); use a smaller beta")
    return BankStats(dict(zip(betas, log_norm.cpu().numpy())), activation.cpu().numpy())


def top1_in(s: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """(b,) bool: rows of ``s`` (b, n_g) whose top-1 gallery item lies in ``activation`` (n_g,)."""
    return activation[s.argmax(dim=1)]
