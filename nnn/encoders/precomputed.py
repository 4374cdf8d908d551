"""Embeddings computed elsewhere (e.g. BEiT-3 with its own repository), read from files.

Layout: one folder ``root`` holding, for each split PREFIX of the dataset (``test``, ``train``,
``val``; a pipeline subset such as ``train/reference`` reads the files of ``train``)::

    PREFIX_image.npy               (n_img, d) float image embeddings (or .pt, .pth, .safetensors)
    PREFIX_image_ids.txt           n_img lines: the dataset image id of each row
    PREFIX_text.npy                (n_cap, d) float caption embeddings (or .pt, .pth, .safetensors)
    PREFIX_caption_image_ids.txt   n_cap lines: the image id that each caption row describes
    PREFIX_captions.txt            optional, n_cap lines: the caption text of each row

Image ids are those of the dataset's ``RetrievalSplit.image_ids`` (e.g. COCO ids written as
text). ``embed_split(split)`` returns the split's ``EmbeddingSet`` with rows in the split's
order: images are matched by id; captions by (image id, caption text with whitespace collapsed,
occurrence) when ``PREFIX_captions.txt`` exists, else by (image id, rank): the k-th caption row
of an image is its k-th caption in the split. Files may hold more rows than the split (extra
rows are ignored); an id of the split that is missing raises ``ValueError`` naming it.

Files are read by ``nnn.data.precomputed.load_array`` (``.npy``, ``.pt``/``.pth``,
``.safetensors``; nothing is unpickled; an empty, truncated or garbled file raises a one-line
``ValueError`` naming it). Rows are L2-normalised on load (float32).
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import numpy as np

from nnn._arrays import as_matrix
from nnn.data.base import EmbeddingSet, RetrievalSplit
from nnn.data.precomputed import ARRAY_SUFFIXES, load_array
from nnn.encoders.sources import fingerprint
from nnn.encoders.base import Encoder
from nnn.errors import MissingResourceError

log = logging.getLogger(__name__)


def split_prefix(split_name: str) -> str:
    """File prefix of a split: ``"train/reference"`` -> ``"train"``."""
    return split_name.split("/", 1)[0]


def read_lines(path: Path, n_rows: int) -> list[str]:
    """The lines of a UTF-8 text file, stripped; ValueError unless there are ``n_rows``."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); write one line per row") from None
    if len(lines) != n_rows:
        raise ValueError(f"{path} has {len(lines)} lines but its embedding file has {n_rows} "
                         "rows; write one line per row")
    return [line.strip() for line in lines]


def _keyed(bases: list[tuple]) -> list[tuple]:
    """Append to each key its occurrence number among equal keys (first = 0)."""
    seen: collections.Counter = collections.Counter()
    out = []
    for base in bases:
        out.append((*base, seen[base]))
        seen[base] += 1
    return out


def _rows_for(wanted: list, index: dict, what: str, source: Path) -> np.ndarray:
    """Rows of ``index`` for each key in ``wanted``; ValueError listing the missing ones."""
    missing = [k for k in wanted if k not in index]
    if missing:
        raise ValueError(f"{len(missing)} {what} of the split are not in {source} (first: "
                         f"{missing[:10]}); re-export the embeddings so that they include them, or "
                         "check that the files belong to this dataset and split")
    return np.fromiter((index[k] for k in wanted), dtype=np.int64, count=len(wanted))


class PrecomputedEncoder(Encoder):
    """Reads embeddings made elsewhere from ``root`` (layout in the module doc); no model runs."""

    family = "precomputed"
    adapter_version = "1"

    def __init__(self, *, root: str, name: str = "precomputed", device: str = "auto",
                 precision: str = "fp32", batch_size: int = 256):
        super().__init__(device=device, precision=precision, batch_size=batch_size)
        if not root:
            raise ValueError("root must be the folder holding the embedding files "
                             "(model.root=PATH)")
        self.root = Path(root).expanduser()
        self.name = name

    def load(self) -> "PrecomputedEncoder":
        if not self.root.is_dir():
            raise MissingResourceError(f"precomputed embeddings folder {self.root} (model.root) "
                                       "does not exist; export the embeddings there in the "
                                       "layout of nnn/encoders/precomputed.py")
        return self

    def cache_identity(self) -> dict:
        return {"family": self.family, "name": self.name, "files": fingerprint(self.root),
                "adapter_version": self.adapter_version}

    def _cannot_encode(self, *_args, **_kwargs):
        raise NotImplementedError(f"precomputed embeddings ({self.name}, {self.root}) cannot "
                                  "encode new images or captions; use embed_split(split)")

    image_transform = _cannot_encode
    encode_image_batch = _cannot_encode
    encode_text_batch = _cannot_encode

    def _file(self, stem: str, suffixes: tuple[str, ...]) -> Path:
        found = [self.root / f"{stem}{s}" for s in suffixes if (self.root / f"{stem}{s}").is_file()]
        if len(found) > 1:
            raise ValueError(f"both {found[0].name} and {found[1].name} exist in {self.root}; "
                             "keep one")
        if not found:
            present = sorted(p.name.removesuffix("_image_ids.txt")
                             for p in self.root.glob("*_image_ids.txt")
                             if not p.name.endswith("_caption_image_ids.txt"))
            raise MissingResourceError(f"{self.root} has no {stem}{'|'.join(suffixes)} (splits "
                                       f"present: {present}); see the layout in "
                                       "nnn/encoders/precomputed.py")
        return found[0]

    def embed_split(self, split: RetrievalSplit) -> EmbeddingSet:
        """Embeddings of ``split``'s images and captions, rows in the split's order."""
        self.load()
        prefix = split_prefix(split.name)
        image_file = self._file(f"{prefix}_image", ARRAY_SUFFIXES)
        text_file = self._file(f"{prefix}_text", ARRAY_SUFFIXES)
        image, text = (load_array(f, "precomputed embeddings", expected="a 2-D float array "
                                  "(n, d)", ndim=2, kinds="f", mmap=True)
                       for f in (image_file, text_file))
        if image.shape[1] != text.shape[1]:
            raise ValueError(f"{image_file} has dimension {image.shape[1]} but {text_file} has "
                             f"{text.shape[1]}; both must come from the same model")
        image_ids = read_lines(self._file(f"{prefix}_image_ids", (".txt",)), len(image))
        index = {i: r for r, i in enumerate(image_ids)}
        if len(index) != len(image_ids):
            dup = [i for i, c in collections.Counter(image_ids).items() if c > 1]
            raise ValueError(f"{prefix}_image_ids.txt repeats image ids {dup[:10]}; each image "
                             "must appear once")
        split_image_ids = [str(i) for i in split.image_ids]
        image_rows = _rows_for(split_image_ids, index, "image ids", image_file)

        caption_ids = read_lines(self._file(f"{prefix}_caption_image_ids", (".txt",)), len(text))
        split_ids = [split_image_ids[r] for r in split.caption_to_image]
        texts_file = self.root / f"{prefix}_captions.txt"
        if texts_file.is_file():
            file_keys = _keyed(list(zip(caption_ids, [" ".join(t.split()) for t in
                                                      read_lines(texts_file, len(text))])))
            wanted = _keyed(list(zip(split_ids, [" ".join(c.split()) for c in split.captions])))
        else:
            file_keys = _keyed([(i,) for i in caption_ids])
            wanted = _keyed([(i,) for i in split_ids])
        text_rows = _rows_for(wanted, {k: r for r, k in enumerate(file_keys)},
                              "captions (image id, [text,] occurrence)", text_file)
        log.info("precomputed %s: split %r uses %d of %d image rows and %d of %d caption rows "
                 "from %s", self.name, split.name, len(image_rows), len(image), len(text_rows),
                 len(text), self.root)
        return EmbeddingSet(split.name,
                            as_matrix(np.asarray(image[image_rows]), f"{image_file.name} rows",
                                      normalize=True),
                            as_matrix(np.asarray(text[text_rows]), f"{text_file.name} rows",
                                      normalize=True),
                            split.caption_to_image.copy(),
                            {"split": split.name, "source": f"precomputed:{self.name}",
                             "n_bad_images": 0, "bad_image_ids": []})
