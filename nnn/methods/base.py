"""The estimator interface shared by every correction method.

``fit(gallery, query_bank=None, gallery_bank=None)`` checks and stores the gallery (n_g, d) and the
banks (n_b, d) a method needs; ``score(queries)`` returns adjusted scores (n_q, n_g) that rank
like the method; ``search(queries, top_k)`` returns the top-k scores and gallery ids per query,
scoring ``batch_size`` queries at a time so that n_q x n_g is never held at once.

Each class also declares what the rest of the project needs to know about it (the registry,
``nnn.methods.registry``): ``option`` (its ``conf/method`` option, e.g. "qb_norm"),
``paper_name`` ("QB-Norm"; ``dynamic_paper_name`` for the gated variant, "DIS"),
``tuned_params`` (the constructor keywords the tuner sets; none: nothing to tune),
``tuning_grid`` (the tuner's keywords -> the paper's values, ``nnn.methods.grids``),
``fit_grid_params`` (tuned keyword -> the constructor keyword whose values one fit prepares for
``with_params``) and ``zero_is_identity`` (all tuned values 0 is the raw similarity).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from nnn._arrays import (as_matrix, as_tensor, check_positive_int, owned_matrix, parse_device,
                         resolve_device)


class RetrievalMethod:
    """Base class. Subclasses set ``requires`` and implement ``_fit`` and ``_score_block``.

    Fitted attributes end in ``_``: ``gallery_`` (n_g, d) float32, ``device_``.
    """

    #: the banks ``fit`` must receive ("query_bank", "gallery_bank")
    requires: tuple[str, ...] = ()
    #: registry attributes (module docstring)
    option: str = ""
    paper_name: str = ""
    dynamic_paper_name: str | None = None
    tuned_params: tuple[str, ...] = ()
    tuning_grid: dict = {}
    fit_grid_params: dict[str, str] = {}
    zero_is_identity: bool = False

    def __init__(self, *, batch_size: int = 4096, device: str = "cpu", normalize: bool = False):
        self.batch_size = check_positive_int(batch_size, "batch_size")
        if device not in (None, "auto"):
            parse_device(device)  # a misspelt device fails here, not at fit
        self.device = device
        self.normalize = normalize

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, gallery, query_bank=None, gallery_bank=None):
        """Check the inputs, store the gallery and compute what the method needs. Returns self."""
        # the fitted state must not change when the caller edits its array
        g = owned_matrix(gallery, "gallery", normalize=self.normalize)
        banks = {}
        for name, bank in (("query_bank", query_bank), ("gallery_bank", gallery_bank)):
            if bank is None:
                if name in self.requires:
                    raise ValueError(f"{type(self).__name__} needs {name}= in fit(); pass the "
                                     f"{'reference queries' if name == 'query_bank' else 'reference gallery items'}"
                                     " as an (n, d) array")
                banks[name] = None
            else:
                banks[name] = self._check_bank(bank, name, g.shape[1])
        self._fitted = False
        self.device_ = resolve_device(self.device)
        self.gallery_ = g
        self._gallery_t = as_tensor(g).to(self.device_)
        self._fit(g, **banks)
        self._fitted = True
        return self

    def _require_fitted(self) -> None:
        """``RuntimeError`` unless ``fit`` has completed."""
        if not getattr(self, "_fitted", False):
            banks = "".join(f", {name}=..." for name in self.requires)
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(gallery{banks}) "
                               "first")

    def with_params(self, **params):
        """A fitted copy with other values of ``tuned_params`` (None keeps a value), from the
        fitted state: no second pass over the banks. Subclasses that support it implement
        ``_set_params``."""
        self._require_fitted()
        unknown = sorted(set(params) - set(self.tuned_params))
        if unknown:
            raise TypeError(f"{type(self).__name__}.with_params() got {unknown}; it takes "
                            f"{list(self.tuned_params)}")
        other = copy.copy(self)
        other._set_params({k: v for k, v in params.items() if v is not None})
        return other

    def _set_params(self, params: dict) -> None:
        """Subclass hook of ``with_params``: check ``params`` and set them with what follows."""
        name = type(self).__name__
        raise TypeError(f"{name}.with_params is not supported (its fitted state depends on "
                        f"every parameter); fit a new {name}(...) instead")

    def _check_bank(self, bank, name: str, dim: int):
        """A bank as a checked float32 (n_b, ``dim``) array; subclasses may accept other types."""
        return as_matrix(bank, name, dim=dim, normalize=self.normalize)

    def _fit(self, gallery: np.ndarray, query_bank: np.ndarray | None,
             gallery_bank: np.ndarray | None) -> None:
        """Subclass hook: compute fitted state from checked float32 arrays."""

    # -- scoring -------------------------------------------------------------------------------
    def _score_block(self, q: torch.Tensor) -> torch.Tensor:
        """Adjusted scores of a query block: (b, d) float32 on ``device_`` -> (b, n_g) float32."""
        raise NotImplementedError

    def _check_queries(self, queries) -> np.ndarray:
        self._require_fitted()
        return as_matrix(queries, "queries", dim=self.gallery_.shape[1], normalize=self.normalize)

    def _blocks(self, q: np.ndarray):
        for start in range(0, len(q), self.batch_size):
            stop = min(start + self.batch_size, len(q))
            block = as_tensor(q[start:stop]).to(self.device_)
            yield start, stop, self._score_block(block)

    def score(self, queries) -> np.ndarray:
        """Adjusted scores (n_q, n_g) float32 for queries (n_q, d)."""
        q = self._check_queries(queries)
        out = np.empty((len(q), len(self.gallery_)), dtype=np.float32)
        for start, stop, block in self._blocks(q):
            out[start:stop] = block.float().cpu().numpy()
        return out

    def search(self, queries, top_k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query: scores (n_q, top_k) float32 descending and gallery ids (n_q, top_k) int64."""
        q = self._check_queries(queries)
        top_k = check_positive_int(top_k, "top_k", upper=len(self.gallery_),
                                   upper_name="the gallery size")
        scores = np.empty((len(q), top_k), dtype=np.float32)
        ids = np.empty((len(q), top_k), dtype=np.int64)
        for start, stop, block in self._blocks(q):
            vals, idx = torch.topk(block.float(), top_k, dim=1)
            scores[start:stop] = vals.cpu().numpy()
            ids[start:stop] = idx.cpu().numpy()
        return scores, ids

    def __repr__(self) -> str:
        params = {k: v for k, v in vars(self).items() if not k.startswith("_") and not k.endswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"
