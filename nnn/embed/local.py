"""One-process extraction: a DataLoader feeds the encoder on one device, shard by shard.

``embed_split_local(encoder, split, cache, *, identity, on_bad_image="error", batch_size=256,
num_workers=4, pin_memory=True, shard_size=8192, device=None, jpeg_draft=None, progress=True)``
-> ``EmbeddingSet``: image (m, d), text (k, d) float32 unit rows, caption_to_image (k,). On a
cache hit the stored arrays are returned (memory-mapped), no image is read and the encoder is
not loaded (its ``cache_identity()`` needs only its configuration). On a miss the encoder is
loaded (``encoder.load()``, unless ``encoder.is_loaded``) before the first image, then:

- Images: DataLoader workers decode and transform them (``nnn.embed.batches.image_loader``);
  batches, pinned when on CUDA, go to ``encoder.encode_image_batch`` under inference mode and
  the encoder's autocast. A tqdm bar shows images/s.
- Shards: every ``shard_size`` images, the rows done so far are written as one atomic part in
  the cache's work dir (``nnn.embed.shards.ShardDir``). A killed job, rerun, verifies the parts
  there, skips their images and computes only the rest.
- Bad images: ``on_bad_image="error"`` stops at the first batch holding an unreadable image and
  names it (``BadImageError``); ``"skip"`` drops it and its captions and logs the count.
- Captions and the cache entry: ``nnn.embed.shards.finish_arrays`` (its own tqdm bar; on a
  GPU the ``num_workers`` workers also tokenise the captions); the cache then removes the
  work dir. ``progress=False`` hides both bars.

Encoders that bring their own embeddings (``encoder.embed_split``) are dispatched before this
module, by ``nnn.embed.embed_split``.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from nnn._arrays import check_positive_int, resolve_device
from nnn.data.base import EmbeddingSet, RetrievalSplit
from nnn.data.images import BadImageError, check_bad_image_policy
from nnn.embed.batches import encode_pixels, image_loader
from nnn.embed.shards import ShardDir, bad_image_failures, finish_arrays, to_embedding_set

log = logging.getLogger(__name__)


def ensure_loaded(encoder) -> None:
    """Load ``encoder`` unless it is loaded already (called on a cache miss only)."""
    if not encoder.is_loaded:
        log.info("loading encoder %s", type(encoder).__name__)
        encoder.load()


def _shard_batches(n: int, batch_size: int, shard_size: int) -> tuple[list[list[int]], list[bool]]:
    """Batches of positions 0..n-1 that never straddle a shard; and which one ends a shard."""
    batches, ends = [], []
    for start in range(0, n, shard_size):
        stop = min(start + shard_size, n)
        for b in range(start, stop, batch_size):
            batches.append(list(range(b, min(b + batch_size, stop))))
            ends.append(b + batch_size >= stop)
    return batches, ends


def _encode_pending(encoder, split: RetrievalSplit, shards: ShardDir, pending: np.ndarray, *,
                    on_bad_image: str, batch_size: int, shard_size: int, num_workers: int,
                    pin_memory: bool, device: torch.device, jpeg_draft: int | None,
                    progress: bool) -> None:
    """Encode the images at ``pending`` rows, writing a shard every ``shard_size`` of them."""
    batches, ends = _shard_batches(len(pending), batch_size, shard_size)
    loader = image_loader(encoder, split, pending, batch_sampler=batches, device=device,
                          num_workers=num_workers, pin_memory=pin_memory, jpeg_draft=jpeg_draft)
    buf: dict[str, list] = {"rows": [], "emb": [], "failed_rows": [], "errors": []}
    n_done = split.n_images - len(pending)
    n_bad, t0 = 0, time.perf_counter()
    with tqdm(total=split.n_images, initial=n_done, unit="img", desc=f"embed {split.name}",
              disable=not progress, smoothing=0.05) as bar:
        for batch, ends_shard in zip(loader, ends):
            if len(batch["failed_rows"]):
                failed = dict(zip(batch["failed_rows"].tolist(), batch["errors"]))
                if on_bad_image == "error":
                    raise BadImageError(bad_image_failures(split, failed), split.name)
                n_bad += len(failed)
                bar.set_postfix(skipped=n_bad)
                buf["failed_rows"].extend(failed)
                buf["errors"].extend(failed.values())
            if len(batch["rows"]):
                buf["rows"].append(batch["rows"].numpy())
                buf["emb"].append(encode_pixels(encoder, batch["pixels"], device))
            bar.update(len(batch["rows"]) + len(batch["failed_rows"]))
            if ends_shard:
                rows = np.concatenate(buf["rows"]) if buf["rows"] else np.zeros(0, np.int64)
                emb = np.concatenate(buf["emb"]) if buf["emb"] else np.zeros((0, 0), np.float32)
                shards.write(rows, emb, buf["failed_rows"], buf["errors"],
                             tag=f"{int(np.min(np.r_[rows, buf['failed_rows']])):09d}")
                buf = {k: [] for k in buf}
    seconds = time.perf_counter() - t0
    log.info("split %r: encoded %d images in %.1f s (%.1f images/s)", split.name, len(pending),
             seconds, len(pending) / max(seconds, 1e-9))


def embed_split_local(encoder, split: RetrievalSplit, cache, *, identity: dict,
                      on_bad_image: str = "error", batch_size: int = 256, num_workers: int = 4,
                      pin_memory: bool = True, shard_size: int = 8192, device=None,
                      jpeg_draft: int | None = None, progress: bool = True) -> EmbeddingSet:
    """Embeddings of ``split`` in this process (see the module doc); ``identity`` is the cache
    identity, to which ``jpeg_draft`` (see nnn.data.images) is added when set."""
    on_bad_image = check_bad_image_policy(on_bad_image)
    batch_size = check_positive_int(batch_size, "batch_size")
    shard_size = check_positive_int(shard_size, "shard_size")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    if jpeg_draft is not None:
        identity = {**identity, "jpeg_draft": check_positive_int(jpeg_draft, "jpeg_draft")}
    dev = resolve_device(device if device is not None else getattr(encoder, "device", None))

    def compute() -> dict[str, np.ndarray]:
        ensure_loaded(encoder)
        shards = ShardDir(cache.work_dir(identity), split.n_images)
        pending = shards.pending(on_bad_image)
        if len(pending) < split.n_images:
            log.info("split %r: resuming, %d of %d images already in shards under %s",
                     split.name, split.n_images - len(pending), split.n_images, shards.path)
        if len(pending):
            _encode_pending(encoder, split, shards, pending, on_bad_image=on_bad_image,
                            batch_size=batch_size, shard_size=shard_size,
                            num_workers=num_workers, pin_memory=pin_memory, device=dev,
                            jpeg_draft=jpeg_draft, progress=progress)
        return finish_arrays(encoder, split, shards, on_bad_image=on_bad_image, device=dev,
                             progress=progress, num_workers=num_workers)

    return to_embedding_set(split, cache.get_or_compute(identity, compute))
