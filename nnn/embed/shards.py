"""The resumable on-disk shard folder of one split, and the cache entry made from it.

``ShardDir`` is the per-key work directory (``cache.work_dir(identity)``) that both extraction
paths write image embeddings into, a shard at a time, and read back to resume: ``pending`` says
which rows are still to encode, ``assemble`` merges every part. ``finish_arrays`` turns a
complete folder into the arrays of the cache entry (encoding the captions that no
``text-*.npy`` part in the folder holds yet); ``to_embedding_set`` turns a cache entry into the
``EmbeddingSet`` the pipeline gets. Caption parts are ranges of the split's captions: one
process writes one part of them all, each DDP rank one part of its share.

Cache entry: image (m, d) float32, text (k, d) float32, caption_to_image (k,) int64 (rows of
``image``), image_rows (m,) and caption_rows (k,) int64 (positions in the split; m < n_images
only when images were skipped with ``on_bad_image="skip"``).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import numpy as np
import torch

from nnn._atomic import atomic_open, atomic_save_npy
from nnn.data.base import EmbeddingSet, RetrievalSplit, subset_caption_index
from nnn.data.images import BadImageError
from nnn.embed.batches import caption_workers, encode_captions

log = logging.getLogger(__name__)

TEXT_GLOB = "text-*.npy"
PART_GLOB = "images-*.npz"


class ShardDir:
    """Image-embedding shards of the ``n_images`` images of one split in the work directory
    ``path`` (created).

    Each ``images-*.npz`` part holds rows (m,) int64 of decoded images, emb (m, d) float32,
    failed_rows (f,) int64 and errors (f,) of unreadable ones. Parts are written atomically and
    may overlap (the union of their rows counts; a repeated row keeps one embedding).
    """

    def __init__(self, path: str | Path, n_images: int):
        if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) \
                or n_images < 0:
            raise ValueError(f"n_images must be an integer >= 0, got {n_images!r}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.n_images = n_images

    def write(self, rows, emb, failed_rows=(), errors=(), *, tag: str) -> Path:
        """Write one part atomically; ``tag`` makes its name (a uuid is appended)."""
        target = self.path / f"images-{tag}-{uuid.uuid4().hex[:8]}.npz"
        rows = np.asarray(rows, dtype=np.int64)
        # a part of unreadable images only has no embedding ((0, 0) cannot reshape to (0, -1))
        emb = (np.asarray(emb, dtype=np.float32).reshape(len(rows), -1) if len(rows)
               else np.zeros((0, 0), np.float32))
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
            if len(part["rows"]):  # a part of unreadable images only has no embedding columns
                emb[part["rows"]] = part["emb"]
        return rows, emb[rows], failed

    def _text_parts(self, n_captions: int) -> list[tuple[int, int, Path]]:
        """(start, stop, file) of each ``text-START-STOP.npy`` part inside [0, n_captions)."""
        out = []
        for file in sorted(self.path.glob(TEXT_GLOB)):
            try:
                start, stop = (int(x) for x in file.stem.split("-")[1:3])
            except ValueError:
                continue  # not a part of ours
            if 0 <= start < stop <= n_captions:
                out.append((start, stop, file))
        return out

    def has_text(self, start: int, stop: int, n_captions: int) -> bool:
        """Whether parts shaped right cover captions [start, stop) (read lazily; their values
        are checked by ``text``)."""
        covered = np.zeros(n_captions, dtype=bool)
        for lo, hi, file in self._text_parts(n_captions):
            try:
                arr = np.load(file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                continue
            if arr.ndim == 2 and len(arr) == hi - lo:
                covered[lo:hi] = True
        return bool(covered[start:stop].all())

    def text(self, n_captions: int) -> np.ndarray | None:
        """The (n_captions, d) caption embeddings merged from the parts, or None unless usable
        parts (shaped right, finite, one dimension) cover every caption."""
        out, covered = None, np.zeros(n_captions, dtype=bool)
        for start, stop, file in self._text_parts(n_captions):
            try:
                part = np.load(file, allow_pickle=False)
            except (OSError, ValueError) as e:
                log.warning("ignoring unreadable %s (%s)", file, e)
                continue
            if part.ndim != 2 or len(part) != stop - start or not np.isfinite(part).all() \
                    or (out is not None and part.shape[1] != out.shape[1]):
                log.warning("ignoring %s of shape %s (expected %d rows of one dimension, "
                            "finite)", file, part.shape, stop - start)
                continue
            if out is None:
                out = np.zeros((n_captions, part.shape[1]), dtype=np.float32)
            out[start:stop] = part
            covered[start:stop] = True
        return out if out is not None and covered.all() else None

    def save_text(self, text: np.ndarray, *, start: int = 0) -> Path:
        """Save the (m, d) embeddings of captions [start, start + m) as one part, atomically."""
        text = np.asarray(text, dtype=np.float32)
        target = self.path / f"text-{start:09d}-{start + len(text):09d}.npy"
        atomic_save_npy(target, text)
        return target

    def clear(self) -> None:
        """Delete every image and caption part (a forced recomputation)."""
        for file in [*self.path.glob(PART_GLOB), *self.path.glob(TEXT_GLOB)]:
            file.unlink(missing_ok=True)


def bad_image_failures(split: RetrievalSplit, failed: dict[int, str]) -> list[tuple[str, str, str]]:
    """(image id, path, error) of each failed row, in row order."""
    return [(split.image_ids[r], str(split.image_paths[r]), msg)
            for r, msg in sorted(failed.items())]


def finish_arrays(encoder, split: RetrievalSplit, shards: ShardDir, *, on_bad_image: str,
                  device: torch.device, progress: bool = True,
                  num_workers: int = 0) -> dict[str, np.ndarray]:
    """Cache-entry arrays from the shards (all images done) plus the caption embeddings
    (encoded with a tqdm bar when ``progress``; on an accelerator ``num_workers`` DataLoader
    workers tokenise them, see ``nnn.embed.batches.caption_workers``)."""
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
        text = encode_captions(encoder, split.captions, device, progress=progress,
                               num_workers=caption_workers(num_workers, device))
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
