"""Batches in, unit rows out: the DataLoader over a split's images and the encoder calls that
both extraction paths (``nnn.embed.local``, ``nnn.embed.lightning``) share.

- ``image_loader`` -> DataLoader whose workers decode and preprocess images
  (``nnn.data.images.ImageRows`` with ``encoder.uint8_image_preprocessor()`` when the encoder
  has one, whose uint8 pixels the model's device finishes, else ``image_preprocessor()``) into
  ``collate_rows`` batches; memory is pinned only when ``device`` is CUDA.
- ``encode_pixels``: (b, 3, H, W) -> (b, d); ``encode_captions``: n captions -> (n, d), with
  the tokenising in DataLoader workers when asked (``CaptionBatches``; ``caption_workers``
  says when it pays). Both run under ``torch.inference_mode()`` and the autocast of
  ``encoder.precision``
  (``nnn.encoders.torch_model.autocast``) and return float32 rows re-normalised to unit L2 norm;
  a NaN/Inf embedding (e.g. an fp16 overflow) raises ``ValueError`` naming the precision.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from nnn.data.base import RetrievalSplit
from nnn.data.images import ImageRows, collate_rows
from nnn.encoders.torch_model import autocast


def _unit_rows(x: np.ndarray, encoder, what: str) -> np.ndarray:
    """(n, d) -> (n, d) float32 rows of unit L2 norm (an all-zero row stays zero).

    ValueError when a row holds NaN/Inf (``what`` names the rows, e.g. "images of a batch"):
    image rows like that are refused by the shards and would be recomputed on every rerun,
    caption rows would be cached.
    """
    x = np.asarray(x, dtype=np.float32)
    bad = int((~np.isfinite(x).all(axis=1)).sum())
    if bad:
        remedy = ("a half-precision overflow is the usual cause: set model.precision=fp32"
                  if encoder.precision != "fp32" else "check the model's weights")
        raise ValueError(f"{type(encoder).__name__} produced NaN/Inf embeddings for {bad} of "
                         f"{len(x)} {what} (precision={encoder.precision}); {remedy}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def encode_pixels(encoder, pixels: torch.Tensor, device: torch.device) -> np.ndarray:
    """(b, 3, H, W) -> (b, d) float32 unit rows, on ``device`` in ``encoder.precision``."""
    pixels = pixels.to(device, non_blocking=True)
    with torch.inference_mode(), autocast(device, encoder.precision):
        out = encoder.encode_image_batch(pixels)
    return _unit_rows(out.float().cpu().numpy(), encoder, "images of a batch")


class CaptionBatches(torch.utils.data.Dataset):
    """Item i: the tokens of captions [i * batch_size, (i + 1) * batch_size), tokenised by
    ``tokenize`` (an encoder's ``caption_tokenizer()``) where the item is read: in a worker."""

    def __init__(self, captions: Sequence[str], batch_size: int, tokenize):
        self.captions, self.batch_size, self.tokenize = list(captions), batch_size, tokenize

    def __len__(self) -> int:
        return -(-len(self.captions) // self.batch_size)

    def __getitem__(self, i: int):
        return self.tokenize(self.captions[i * self.batch_size:(i + 1) * self.batch_size])


def _as_is(item):
    """The DataLoader's per-item conversion when items are whole batches: none."""
    return item


def caption_workers(num_workers: int, device: torch.device) -> int:
    """How many DataLoader workers should tokenise captions for a model on ``device``: the
    image workers' number on an accelerator, where tokenising in one process can be the wall
    (open_clip's Python tokenizer: ~11-21k captions/s on one Zen 4 core; benchmarks/gpu_check.py
    times both ways); none on the CPU, where the forward already uses every core (2-core
    Zen 4, tiny model: 4,647 captions/s in one process, 4,331 with 2 workers; RESULTS.md, "What
    travels from the workers to the model")."""
    return 0 if device.type == "cpu" else num_workers


def encode_captions(encoder, captions: Sequence[str], device: torch.device, *,
                    progress: bool = True, num_workers: int = 0) -> np.ndarray:
    """n captions -> (n, d) float32 unit rows, ``encoder.batch_size`` at a time (a tqdm bar
    when ``progress``). With ``num_workers`` > 0, more than one batch and an encoder that
    offers ``caption_tokenizer()``, that many DataLoader workers tokenise the batches ahead of
    the model (open_clip's and BERT's tokenizers are Python, ~10k captions/s on one core);
    the tokens, and so the rows, are the same."""
    captions = list(captions)
    tokenize = (encoder.caption_tokenizer()
                if num_workers and len(captions) > encoder.batch_size else None)
    with torch.inference_mode(), autocast(device, encoder.precision):
        if tokenize is None:
            text = encoder.encode_texts(captions, progress=progress)
        else:
            from tqdm.auto import tqdm

            batches = CaptionBatches(captions, encoder.batch_size, tokenize)
            loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=_as_is,
                                                 num_workers=min(num_workers, len(batches)))
            text = np.concatenate([encoder.encode_token_batch(tokens).float().cpu().numpy()
                                   for tokens in tqdm(loader, desc="encode captions",
                                                      unit="batch", disable=not progress)])
    return _unit_rows(text, encoder, "captions")


def image_loader(encoder, split: RetrievalSplit, rows: np.ndarray, *, device: torch.device,
                 num_workers: int, pin_memory: bool, jpeg_draft: int | None,
                 batch_size: int | None = None,
                 batch_sampler: Sequence[Sequence[int]] | None = None
                 ) -> torch.utils.data.DataLoader:
    """DataLoader of ``collate_rows`` batches of the images at ``rows`` (m,) of ``split``.

    Batches are either consecutive runs of ``batch_size`` items (a sampler may then be swapped
    in, as Lightning does for DDP) or the lists of positions in ``rows`` that ``batch_sampler``
    gives; exactly one of the two is set.
    """
    if (batch_size is None) == (batch_sampler is None):
        raise ValueError("image_loader needs exactly one of batch_size and batch_sampler, got "
                         f"batch_size={batch_size!r} and batch_sampler={batch_sampler!r}")
    # uint8 pixels are a quarter of the bytes to pass from the workers, pin and copy; finishing
    # them where the model runs paid on the CPU too (benchmarks/RESULTS.md, "What travels from
    # the workers to the model")
    transform = encoder.uint8_image_preprocessor() or encoder.image_preprocessor()
    dataset = ImageRows(split.image_paths, transform, rows=rows, jpeg_draft=jpeg_draft)
    batching = ({"batch_size": batch_size} if batch_sampler is None
                else {"batch_sampler": batch_sampler})
    return torch.utils.data.DataLoader(dataset, num_workers=num_workers, collate_fn=collate_rows,
                                       pin_memory=pin_memory and device.type == "cuda",
                                       **batching)
