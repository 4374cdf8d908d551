"""Embeddings of a ``RetrievalSplit``: computed once, resumably, stored in the embedding cache.

API
---
``embed_dataset_split(encoder, dataset, name, cache, *, rows=None, subset=None, **options)``
    What the pipeline calls. ``dataset.split(name)`` (optionally only the images at ``rows``,
    e.g. the reference part of a training split, described by ``subset``), keyed by
    ``nnn.cache.embedding_identity(encoder.cache_identity(), dataset=dataset.identity(split),
    split=name, subset=subset)``, with the dataset's ``on_bad_image``. ``options`` are those of
    ``embed_split``; ``lightning={...}`` (Trainer arguments: accelerator, devices, num_nodes,
    strategy) runs ``nnn.extract_lightning.embed_split_lightning`` instead (several GPUs/nodes).

``embed_split(encoder, split, cache, *, identity, on_bad_image="error", batch_size=256,
num_workers=4, pin_memory=True, shard_size=8192, device=None, jpeg_draft=None, progress=True)``
    -> ``EmbeddingSet``. On a cache hit the stored arrays are returned (memory-mapped), no image
    is read and the encoder is not loaded (its ``cache_identity()`` needs only its
    configuration). On a miss the encoder is loaded (``encoder.load()``, unless
    ``encoder.is_loaded``) before the first image. An encoder with its own
    ``embed_split(split)`` (precomputed embeddings) is simply asked for them.

How a miss is computed
----------------------
- Images: a DataLoader whose workers decode and transform them (``encoder.image_preprocessor()``,
  ``nnn.data.images``) feeds batches, pinned when on CUDA, to ``encoder.encode_image_batch`` under
  ``torch.inference_mode()`` and autocast in ``encoder.precision`` (fp16/bf16); outputs are
  re-normalised in float32. A tqdm bar shows images/s.
- Shards: every ``shard_size`` images, the rows done so far are written as one atomic ``.npz``
  file in the cache's per-key work dir (``cache.work_dir(identity)``). A killed job, rerun,
  verifies the shards there, skips their images and computes only the rest.
- Captions are encoded in batches too (``encoder.encode_texts``), saved as ``text.npy`` there.
- Bad images: ``on_bad_image="error"`` stops at the first batch holding an unreadable image and
  names it (``BadImageError``); ``"skip"`` drops it and its captions, logs the count, and the
  caption->image index is rebuilt over the images that remain.
- The arrays are stored in the cache (which then removes the work dir).

Cache entry: image (m, d) float32, text (k, d) float32, caption_to_image (k,) int64 (rows of
``image``), image_rows (m,) and caption_rows (k,) int64 (positions in the split; m < n_images
only when images were skipped).
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from nnn._arrays import check_positive_int, resolve_device
from nnn._atomic import atomic_open, atomic_save_npy
from nnn.data.base import EmbeddingSet, RetrievalSplit, subset_caption_index
from nnn.data.images import BadImageError, ImageRows, check_bad_image_policy, collate_rows
from nnn.encoders.torch_model import autocast

log = logging.getLogger(__name__)

TEXT_FILE = "text.npy"
PART_GLOB = "images-*.npz"


# -- encoding one batch ----------------------------------------------------------------------------
def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def encode_pixels(encoder, pixels: torch.Tensor, device: torch.device) -> np.ndarray:
    """(b, 3, H, W) -> (b, d) float32 unit rows, on ``device`` in ``encoder.precision``."""
    pixels = pixels.to(device, non_blocking=True)
    with torch.inference_mode(), autocast(device, encoder.precision):
        out = encoder.encode_image_batch(pixels)
    return _unit_rows(out.float().cpu().numpy())


def encode_captions(encoder, captions: list[str], device: torch.device) -> np.ndarray:
    """n captions -> (n, d) float32 unit rows, ``encoder.batch_size`` at a time."""
    with torch.inference_mode(), autocast(device, encoder.precision):
        return _unit_rows(encoder.encode_texts(list(captions)))


# -- resumable shards ------------------------------------------------------------------------------
class ShardDir:
    """Image-embedding shards of one split in a work directory (shared by both extraction paths).

    Each ``images-*.npz`` part holds rows (m,) int64 of decoded images, emb (m, d) float32,
    failed_rows (f,) int64 and errors (f,) of unreadable ones. Parts are written atomically and
    may overlap (the union of their rows counts; a repeated row keeps one embedding).
    """

    def __init__(self, path: str | Path, n_images: int):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.n_images = n_images

    def write(self, rows, emb, failed_rows=(), errors=(), *, tag: str) -> Path:
        """Write one part atomically; ``tag`` makes its name (a uuid is appended)."""
        target = self.path / f"images-{tag}-{uuid.uuid4().hex[:8]}.npz"
        rows = np.asarray(rows, dtype=np.int64)
        emb = np.asarray(emb, dtype=np.float32).reshape(len(rows), -1)
        with atomic_open(target, "wb") as f:
            np.savez(f, rows=rows, emb=emb, failed_rows=np.asarray(failed_rows, dtype=np.int64),
                     errors=np.asarray(list(errors), dtype=str))
        return target

    def _read(self, file: Path, dim: int | None) -> dict:
        """A part's arrays after checks; ValueError (or a read error) when it is unusable."""
        with np.load(file, allow_pickle=False) as z:
            part = {k: z[k] for k in ("rows", "emb", "failed_rows", "errors")}
        rows, emb, failed = part["rows"], part["emb"], part["failed_rows"]
        if rows.ndim != 1 or emb.ndim != 2 or emb.shape[0] != len(rows) or emb.dtype != np.float32:
            raise ValueError(f"rows {rows.shape} / emb {emb.shape} {emb.dtype} do not match")
        if dim is not None and len(rows) and emb.shape[1] != dim:
            raise ValueError(f"dimension {emb.shape[1]}, other shards have {dim}")
        for name, r in (("rows", rows), ("failed_rows", failed)):
            if len(r) and (r.min() < 0 or r.max() >= self.n_images):
                raise ValueError(f"{name} outside [0, {self.n_images})")
        if len(part["errors"]) != len(failed):
            raise ValueError("failed_rows and errors differ in length")
        if not np.isfinite(emb).all():
            raise ValueError("non-finite embeddings")
        return part

    def parts(self, *, remove_invalid: bool = True) -> list[dict]:
        """Every usable part (sorted by file name); unusable ones are logged (and deleted)."""
        out, dim = [], None
        for file in sorted(self.path.glob(PART_GLOB)):
            try:
                part = self._read(file, dim)
            except Exception as e:  # unreadable zip, bad CRC, wrong shapes: recompute its rows
                log.warning("ignoring unusable shard %s (%s); its images are recomputed", file, e)
                if remove_invalid:
                    file.unlink(missing_ok=True)
                continue
            if len(part["rows"]):
                dim = part["emb"].shape[1]
            out.append(part)
        return out

    def _status(self, parts: list[dict]) -> tuple[np.ndarray, dict[int, str]]:
        """(done (n_images,) bool: rows with an embedding, failed: row -> error message)."""
        done = np.zeros(self.n_images, dtype=bool)
        failed: dict[int, str] = {}
        for part in parts:
            done[part["rows"]] = True
            failed.update(zip(part["failed_rows"].tolist(), part["errors"].tolist()))
        # a row decoded on a later try (e.g. after its file was fixed) is no longer bad
        return done, {r: msg for r, msg in failed.items() if not done[r]}

    def pending(self, on_bad_image: str, *, remove_invalid: bool = True) -> np.ndarray:
        """Rows still to encode: not done, and (with "skip") not already known to be bad."""
        done, failed = self._status(self.parts(remove_invalid=remove_invalid))
        if on_bad_image == "skip":
            done[list(failed)] = True
        return np.flatnonzero(~done)

    def assemble(self) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """(rows (m,) sorted, emb (m, d), failed row -> error) from every part."""
        parts = self.parts()
        done, failed = self._status(parts)
        rows = np.flatnonzero(done)
        dims = {p["emb"].shape[1] for p in parts if len(p["rows"])}
        if not dims:
            return rows, np.zeros((0, 0), np.float32), failed
        emb = np.zeros((self.n_images, dims.pop()), dtype=np.float32)
        for part in parts:
            emb[part["rows"]] = part["emb"]
        return rows, emb[rows], failed

    def text(self, n_captions: int) -> np.ndarray | None:
        """The saved caption embeddings if present and shaped (n_captions, d), else None."""
        file = self.path / TEXT_FILE
        if not file.is_file():
            return None
        try:
            text = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable %s (%s)", file, e)
            return None
        if text.ndim != 2 or len(text) != n_captions or not np.isfinite(text).all():
            log.warning("ignoring %s of shape %s (expected %d rows)", file, text.shape, n_captions)
            return None
        return text

    def save_text(self, text: np.ndarray) -> None:
        atomic_save_npy(self.path / TEXT_FILE, np.asarray(text, dtype=np.float32))


def bad_image_failures(split: RetrievalSplit, failed: dict[int, str]) -> list[tuple[str, str, str]]:
    """(image id, path, error) of each failed row, in row order."""
    return [(split.image_ids[r], str(split.image_paths[r]), msg)
            for r, msg in sorted(failed.items())]


def finish_arrays(encoder, split: RetrievalSplit, shards: ShardDir, *, on_bad_image: str,
                  device: torch.device) -> dict[str, np.ndarray]:
    """Cache-entry arrays from the shards (all images done) plus the caption embeddings."""
    rows, image, failed = shards.assemble()
    if failed and on_bad_image == "error":
        raise BadImageError(bad_image_failures(split, failed), split.name)
    missing = split.n_images - len(rows) - len(failed)
    if missing:
        raise RuntimeError(f"split {split.name!r}: {missing} images have neither an embedding "
                           f"nor an error in {shards.path}; rerun to compute them")
    if not len(rows):
        raise BadImageError(bad_image_failures(split, failed), split.name)
    if failed:
        ids = [split.image_ids[r] for r in sorted(failed)]
        log.warning("split %r: skipped %d unreadable images (on_bad_image=skip) and their "
                    "captions; ids %s%s", split.name, len(failed), ids[:10],
                    " ..." if len(ids) > 10 else "")
    text = shards.text(split.n_captions)
    if text is None:
        log.info("encoding %d captions of split %r", split.n_captions, split.name)
        text = encode_captions(encoder, split.captions, device)
        shards.save_text(text)
    _, caption_rows, c2i = subset_caption_index(split.caption_to_image, split.n_images, rows)
    return {"image": image, "text": np.ascontiguousarray(text[caption_rows]),
            "caption_to_image": c2i, "image_rows": rows, "caption_rows": caption_rows}


def to_embedding_set(split: RetrievalSplit, arrays: dict[str, np.ndarray]) -> EmbeddingSet:
    """The cache entry of ``split`` as an ``EmbeddingSet`` (meta: bad image ids, if any)."""
    kept = np.zeros(split.n_images, dtype=bool)
    kept[np.asarray(arrays["image_rows"])] = True
    bad = [split.image_ids[r] for r in np.flatnonzero(~kept)]
    return EmbeddingSet(split.name, arrays["image"], arrays["text"], arrays["caption_to_image"],
                        {"split": split.name, "n_bad_images": len(bad), "bad_image_ids": bad})


# -- single-process extraction ---------------------------------------------------------------------
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


def image_loader(encoder, split: RetrievalSplit, rows: np.ndarray, batches: list[list[int]], *,
                 num_workers: int, pin_memory: bool, device: torch.device,
                 jpeg_draft: int | None) -> torch.utils.data.DataLoader:
    """DataLoader of ``collate_rows`` batches: ``batches`` are lists of positions in ``rows``."""
    dataset = ImageRows(split.image_paths, encoder.image_preprocessor(), rows=rows,
                        jpeg_draft=jpeg_draft)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate_rows,
        pin_memory=pin_memory and device.type == "cuda")


def _encode_pending(encoder, split: RetrievalSplit, shards: ShardDir, pending: np.ndarray, *,
                    on_bad_image: str, batch_size: int, shard_size: int, num_workers: int,
                    pin_memory: bool, device: torch.device, jpeg_draft: int | None,
                    progress: bool) -> None:
    """Encode the images at ``pending`` rows, writing a shard every ``shard_size`` of them."""
    batches, ends = _shard_batches(len(pending), batch_size, shard_size)
    loader = image_loader(encoder, split, pending, batches, num_workers=num_workers,
                          pin_memory=pin_memory, device=device, jpeg_draft=jpeg_draft)
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


def embed_split(encoder, split: RetrievalSplit, cache, *, identity: dict,
                on_bad_image: str = "error", batch_size: int = 256, num_workers: int = 4,
                pin_memory: bool = True, shard_size: int = 8192, device=None,
                jpeg_draft: int | None = None, progress: bool = True) -> EmbeddingSet:
    """Embeddings of ``split`` (see the module doc); ``identity`` is the cache identity.

    ``jpeg_draft`` (see nnn.data.images) is added to the identity when set.
    """
    if hasattr(encoder, "embed_split"):
        return encoder.embed_split(split)
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
        return finish_arrays(encoder, split, shards, on_bad_image=on_bad_image, device=dev)

    return to_embedding_set(split, cache.get_or_compute(identity, compute))


def embed_dataset_split(encoder, dataset, name: str, cache, *, rows=None, subset=None,
                        lightning: dict | None = None, **options) -> EmbeddingSet:
    """Embeddings of ``dataset.split(name)`` (only the images at ``rows`` when given).

    ``subset`` describes ``rows`` in the cache identity (e.g. {"part": "reference",
    "fraction": 0.2, "seed": 0}); the dataset identity also hashes the exact content.
    """
    from nnn.cache import embedding_identity

    split = dataset.split(name)
    if rows is not None:
        part = subset.get("part", "subset") if isinstance(subset, dict) else subset or "subset"
        split = split.subset_images(rows, name=f"{name}/{part}")
    identity = embedding_identity(encoder.cache_identity(), dataset=dataset.identity(split),
                                  split=name, subset=subset)
    options.setdefault("on_bad_image", dataset.on_bad_image)
    if lightning:
        from nnn.extract_lightning import embed_split_lightning

        return embed_split_lightning(encoder, split, cache, identity=identity, **lightning,
                                     **options)
    return embed_split(encoder, split, cache, identity=identity, **options)
