"""The one interface every encoder implements.

An encoder is chosen by config data (family + model name + pretrained tag). Its heavy imports
happen in ``load()``, never at module import. ``cache_identity()`` lists everything that
determines its embeddings, so that the embedding cache misses whenever one of them changes; it
is computed from the configuration alone, so a cache hit needs no ``load()`` (no weights, no
network). Callers load lazily: ``if not encoder.is_loaded: encoder.load()``, on a miss only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch


class Encoder(ABC):
    """Base encoder.

    Subclasses implement ``load``, ``cache_identity``, ``image_transform`` (PIL image -> (3, H, W)
    tensor, run inside DataLoader workers), ``encode_image_batch`` ((b, 3, H, W) -> (b, d)) and
    ``encode_text_batch`` (b strings -> (b, d)); both return L2-normalised float32 tensors.
    """

    #: bump when the adapter changes what it outputs, so cached embeddings are recomputed
    adapter_version: str = "1"

    def __init__(self, *, device: str = "auto", precision: str = "fp32", batch_size: int = 256):
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be 'fp32', 'fp16' or 'bf16', got {precision!r}")
        self.device = device
        self.precision = precision
        self.batch_size = batch_size

    @abstractmethod
    def load(self) -> "Encoder":
        """Build the model and its preprocessing (downloads weights when online). Returns self."""

    @property
    def is_loaded(self) -> bool:
        """Whether ``load()`` has built what encoding needs. This default says False, so that
        callers load before encoding; adapters that keep a model report whether they have it."""
        return False

    @abstractmethod
    def cache_identity(self) -> dict:
        """JSON-able dict of everything that determines the embeddings (model, tag, precision,
        user-set preprocessing options, library version, adapter_version). It must not need
        ``load()``: it is read before the cache lookup, and must not change once loaded."""

    @abstractmethod
    def image_transform(self, image) -> torch.Tensor:
        """One PIL image -> (3, H, W) float tensor, as the model expects."""

    def image_preprocessor(self):
        """A picklable callable doing what ``image_transform`` does, for DataLoader workers.

        Prefer it to the bound method ``encoder.image_transform``, which pickles the whole
        encoder, model included, into each worker (spawn/forkserver start methods). Adapters
        return their bare transform; this default returns the bound method.
        """
        return self.image_transform

    def uint8_image_preprocessor(self):
        """A picklable PIL image -> (3, H, W) uint8 callable whose batches ``encode_image_batch``
        also takes, finishing the preprocessing on the model's device (a quarter of the bytes to
        send from workers and to copy to a GPU; the same pixels, see ``nnn.encoders.pixels``);
        None (this default) when the preprocessing does not split there."""
        return None

    @abstractmethod
    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) float pixels (``image_transform``), or uint8 ones
        (``uint8_image_preprocessor``) -> (b, d) L2-normalised float32."""

    @abstractmethod
    def encode_text_batch(self, captions: list[str]) -> torch.Tensor:
        """b captions -> (b, d) L2-normalised float32."""

    def caption_tokenizer(self):
        """A picklable callable, b captions -> the text model's inputs (CPU tensors) that
        ``encode_token_batch`` takes, so that DataLoader workers can tokenise ahead of the
        model; None (this default) when tokenising apart is not offered or not worth a worker
        (e.g. a Rust tokenizer). ``encode_token_batch(caption_tokenizer()(c))`` equals
        ``encode_text_batch(c)``."""
        return None

    def encode_token_batch(self, tokens) -> torch.Tensor:
        """``caption_tokenizer()(captions)`` of b captions -> (b, d) L2-normalised float32."""
        raise NotImplementedError(f"{type(self).__name__} offers no caption_tokenizer(); use "
                                  "encode_text_batch")

    def encode_texts(self, captions: list[str], *, progress: bool = True) -> np.ndarray:
        """All captions -> (n, d) float32, ``batch_size`` at a time (a tqdm bar when
        ``progress`` and there is more than one batch)."""
        from tqdm.auto import tqdm

        out = []
        for start in tqdm(range(0, len(captions), self.batch_size), desc="encode captions",
                          unit="batch", disable=not progress or len(captions) <= self.batch_size):
            out.append(self.encode_text_batch(captions[start:start + self.batch_size]).float().cpu().numpy())
        return np.concatenate(out, axis=0)
