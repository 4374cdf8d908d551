"""Image files -> model-ready tensors inside DataLoader workers, with a bad-image policy.

``ImageRows`` is a map-style ``Dataset`` over some rows of a split's image list: item ``i`` is
row ``rows[i]``, decoded with PIL (RGB) and passed through the encoder's image preprocessing
(``encoder.image_preprocessor()``, a picklable callable).
A file that cannot be read or decoded (missing, truncated, not an image) does not raise in the
worker: the item carries the error instead, and ``collate_rows`` separates the good items from
the failed ones. The caller (``nnn.embed``) applies the policy in the main process:

- ``on_bad_image="error"`` (the default): stop with ``BadImageError`` (an ``OSError``, so
  ``run.py`` prints its one line) naming each image's id, path and the decoder's message;
- ``on_bad_image="skip"``: drop the image (and later its captions), count and log it.

Only decoding errors count as a bad image; an exception in the transform is a bug and raises.

``jpeg_draft``: when set to ``s``, JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8)
whose shorter side is still at least ``s`` pixels (PIL's ``Image.draft``), before the transform
resizes them. This is several times cheaper for large photos; the pixels differ slightly from a
full decode followed by the same resize, so it is off by default and is part of the cache key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")

#: What PIL raises for unreadable files: OSError (missing, truncated, UnidentifiedImageError),
#: SyntaxError / ValueError (malformed headers), DecompressionBombError (absurd sizes).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def check_bad_image_policy(on_bad_image: str) -> str:
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_bad_image must be one of {list(BAD_IMAGE_POLICIES)}, "
                         f"got {on_bad_image!r}")
    return on_bad_image


class BadImageError(OSError):
    """Images that could not be decoded; ``failures`` lists (image id, path, reason).

    An ``OSError`` (a user error, see ``nnn.errors``) with a one-line message naming the first
    ``SHOWN`` of them and the setting that skips them (``config_key``: the dataset's config node,
    ``reference.dataset`` for a reference set's own dataset).
    """

    SHOWN = 10

    def __init__(self, failures: Sequence[tuple[str, str, str]], split: str = "",
                 config_key: str = "dataset"):
        self.failures, self.split, self.config_key = list(failures), split, config_key
        shown = "; ".join(f"image {i} ({p}): {' '.join(str(r).split())}"
                          for i, p, r in self.failures[:self.SHOWN])
        more = (f"; ... and {len(self.failures) - self.SHOWN} more"
                if len(self.failures) > self.SHOWN else "")
        where = f" in split {split!r}" if split else ""
        super().__init__(
            f"{len(self.failures)} image(s){where} could not be read: {shown}{more}. "
            f"Re-download or replace these files, or set {config_key}.on_bad_image=skip to drop "
            "them (with their captions) and count them.")


def decode_image(path: str | Path, *, jpeg_draft: int | None = None) -> Image.Image:
    """Open ``path`` fully decoded as an RGB PIL image; raises one of ``DECODE_ERRORS``."""
    with Image.open(path) as img:
        if jpeg_draft is not None and img.format == "JPEG":
            w, h = img.size
            scale = min(w, h) / jpeg_draft
            if scale >= 2:  # draft keeps the size >= the requested one; ask for the short side
                img.draft("RGB", (max(1, int(np.ceil(w / scale))), max(1, int(np.ceil(h / scale)))))
        return img.convert("RGB")  # convert() loads every pixel, so truncation raises here


class ImageRows(torch.utils.data.Dataset):
    """Item ``i`` -> (row, pixels (3, H, W) or None, error message or None) for row ``rows[i]``.

    paths: every image path of the split (n_img,); rows: the rows to serve (default all);
    transform: PIL image -> (3, H, W) tensor (``encoder.image_preprocessor()``).
    """

    def __init__(self, paths: Sequence[str | Path], transform: Callable, *,
                 rows: Sequence[int] | np.ndarray | None = None, jpeg_draft: int | None = None):
        self.paths = [str(p) for p in paths]
        self.rows = (np.arange(len(self.paths), dtype=np.int64) if rows is None
                     else np.asarray(rows, dtype=np.int64))
        self.transform = transform
        self.jpeg_draft = jpeg_draft

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        row = int(self.rows[i])
        try:
            img = decode_image(self.paths[row], jpeg_draft=self.jpeg_draft)
        except DECODE_ERRORS as e:
            return row, None, f"{type(e).__name__}: {e}"
        return row, self.transform(img), None


def collate_rows(items: list[tuple[int, torch.Tensor | None, str | None]]) -> dict:
    """Batch of ``ImageRows`` items -> dict.

    rows (b_ok,) int64 and pixels (b_ok, 3, H, W) of the decoded images; failed_rows (b_bad,)
    int64 and errors (b_bad strings) of the others.
    """
    good = [(r, px) for r, px, err in items if err is None]
    bad = [(r, err) for r, _, err in items if err is not None]
    pixels = torch.stack([px for _, px in good]) if good else torch.empty(0)
    return {"rows": torch.tensor([r for r, _ in good], dtype=torch.int64),
            "pixels": pixels,
            "failed_rows": torch.tensor([r for r, _ in bad], dtype=torch.int64),
            "errors": [err for _, err in bad]}
