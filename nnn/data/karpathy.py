"""Karpathy-split caption datasets (COCO 2014, Flickr30k) as ``RetrievalSplit``s.

Both datasets ship their split in one JSON file (Karpathy & Fei-Fei 2015), e.g.
``dataset_coco.json``::

    {"dataset": "coco",
     "images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg",
                 "imgid": 0, "split": "test", "cocoid": 391895, "sentids": [770337, ...],
                 "sentences": [{"raw": "A man riding ...", "tokens": ["a", "man", ...],
                                "imgid": 0, "sentid": 770337}, ...]}, ...]}

``split`` is one of train / val / test / restval (COCO's "restval" images join "train" in the
standard protocol; Flickr30k has none). Flickr30k records have no ``filepath``/``cocoid``.

``KarpathyDataset`` holds what both share: reading and checking the JSON, building splits in
file order, the first ``captions_per_image`` sentences of each image (COCO has a few images with
6 or 7; the standard protocol keeps 5; ``None`` keeps all), errors for empty captions, and the
cache identity. Subclasses say where images live and how to download them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from nnn.data.base import RetrievalSplit
from nnn.data.images import check_bad_image_policy
from nnn.errors import MissingResourceError

log = logging.getLogger(__name__)


#: the fields every image record needs, and the JSON type of each
RECORD_FIELDS = {"filename": str, "split": str, "sentences": list}


def load_karpathy_json(path: Path, fields: dict[str, type] = RECORD_FIELDS) -> list[dict]:
    """The image records of a Karpathy JSON file, each checked to hold ``fields`` (name ->
    JSON type); ``ValueError`` naming the file and the first record that does not."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON ({e}); re-download it "
                         "(dataset.download=true or docs/data.md)") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path} is not a Karpathy split file: expected a JSON object with an "
                         "'images' list (see docs/data.md)")
    records = data["images"]
    for i, rec in enumerate(records):
        values = rec if isinstance(rec, dict) else {}
        bad = [f"{k!r} (a {t.__name__})" for k, t in fields.items()
               if not isinstance(values.get(k), t)]
        if bad:
            raise ValueError(f"{path}: image record {i} lacks {', '.join(bad)}: "
                             f"{str(rec)[:200]}; is it this dataset's Karpathy split file?")
    return records


def build_split(records: list[dict], *, name: str, image_ids: list[str],
                image_paths: list[Path], captions_per_image: int | None) -> RetrievalSplit:
    """One split from its image records (in order) and their ids and paths.

    Keeps the first ``captions_per_image`` sentences of each image (all when None). Raises
    ``ValueError`` listing the ids of images with no sentence, repeated image ids, and of empty
    or whitespace-only captions.
    """
    captions: list[str] = []
    caption_to_image: list[int] = []
    empty, no_caption, short = [], [], []
    for row, (rec, image_id) in enumerate(zip(records, image_ids)):
        sentences = rec["sentences"][:captions_per_image]
        if not sentences:
            no_caption.append(image_id)
        elif captions_per_image is not None and len(sentences) < captions_per_image:
            short.append(image_id)
        for k, sent in enumerate(sentences):
            sent = sent if isinstance(sent, dict) else {}
            raw = sent.get("raw")
            if not isinstance(raw, str) or not raw.strip():
                empty.append(f"image {image_id} sentence {sent.get('sentid', k)}")
                raw = ""
            captions.append(raw)
            caption_to_image.append(row)
    if no_caption:
        raise ValueError(f"split {name!r}: {len(no_caption)} images have no caption, e.g. ids "
                         f"{no_caption[:10]}; fix the annotation file")
    if empty:
        raise ValueError(f"split {name!r}: {len(empty)} empty or whitespace-only captions: "
                         f"{empty[:20]}{' ...' if len(empty) > 20 else ''}; fix the annotation "
                         "file or remove those sentences")
    ids, counts = np.unique(np.asarray(image_ids, dtype=str), return_counts=True)
    repeated = ids[counts > 1].tolist()
    if repeated:
        raise ValueError(f"split {name!r}: image ids appear more than once: {repeated[:10]}")
    if short:
        log.warning("split %r: %d images have fewer than %d captions (e.g. %s); they keep "
                    "what they have", name, len(short), captions_per_image, short[:5])
    return RetrievalSplit(name, list(image_ids), list(image_paths), captions,
                          np.asarray(caption_to_image, dtype=np.int64))


class KarpathyDataset(ABC):
    """A Karpathy-split dataset under ``<root>/<name>/`` (layout in docs/data.md).

    root: the data root; download: fetch (checksummed) what a requested split needs when it is
    missing; on_bad_image: "error" | "skip" (applied during extraction, see nnn.data.images);
    captions_per_image: keep the first n sentences of each image (None keeps all); config_key:
    the config node of these settings, which messages name ("dataset", or "reference.dataset"
    for the references' own dataset).
    """

    name: ClassVar[str]
    annotation_file: ClassVar[str]
    #: split name -> the Karpathy "split" values it is made of
    split_parts: ClassVar[dict[str, tuple[str, ...]]]
    #: published split sizes (images); a different count is logged, not an error
    expected_images: ClassVar[dict[str, int]]
    #: the fields (name -> JSON type) each image record of the annotation file must hold
    record_fields: ClassVar[dict[str, type]] = RECORD_FIELDS

    def __init__(self, root: str | Path, *, download: bool = False, on_bad_image: str = "error",
                 captions_per_image: int | None = 5, config_key: str = "dataset"):
        if root is None or str(root) == "":
            raise ValueError(f"{type(self).__name__}: root must be a directory path (the data "
                             f"root, e.g. {config_key}.root=/data), see docs/data.md")
        if captions_per_image is not None and (isinstance(captions_per_image, bool) or
                                               not isinstance(captions_per_image, int) or
                                               captions_per_image < 1):
            raise ValueError(f"captions_per_image must be a positive integer or None (keep all), "
                             f"got {captions_per_image!r}")
        self.root = Path(root).expanduser()
        self.download = bool(download)
        self.on_bad_image = check_bad_image_policy(on_bad_image)
        self.captions_per_image = captions_per_image
        self.config_key = config_key
        self._records: list[dict] | None = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, on_bad_image="
                f"{self.on_bad_image!r}, captions_per_image={self.captions_per_image})")

    # -- layout -----------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / self.name

    @property
    def annotation_path(self) -> Path:
        return self.data_dir / self.annotation_file

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @abstractmethod
    def image_relpath(self, record: dict) -> str:
        """Path of the record's image relative to ``images_dir``."""

    @abstractmethod
    def image_id(self, record: dict) -> str:
        """A stable id of the record's image (e.g. the COCO id)."""

    @abstractmethod
    def _download(self, split_parts: tuple[str, ...]) -> None:
        """Fetch and verify the annotation file and the images of these Karpathy split values."""

    def missing(self, path: Path, what: str) -> MissingResourceError:
        return MissingResourceError(
            f"{self.name}: {what} not found at {path}. Point {self.config_key}.root at a data "
            f"root laid out as in docs/data.md (now {self.config_key}.root={self.root}), or set "
            f"{self.config_key}.download=true to fetch it (checksummed).")

    # -- splits -----------------------------------------------------------------------------------
    def records(self) -> list[dict]:
        """All image records of the annotation file (read once)."""
        if self._records is None and self.download and not self.annotation_path.is_file():
            self._download(())  # may read the records itself
        if self._records is None:
            if not self.annotation_path.is_file():
                raise self.missing(self.annotation_path, "the Karpathy annotation file")
            self._records = load_karpathy_json(self.annotation_path, self.record_fields)
        return self._records

    def split(self, name: str) -> RetrievalSplit:
        """The "train", "val" or "test" split, images in annotation-file order."""
        if name not in self.split_parts:
            raise ValueError(f"{self.name} has splits {list(self.split_parts)}, not {name!r}")
        parts = self.split_parts[name]
        records = [r for r in self.records() if r["split"] in parts]
        if not records:
            raise ValueError(f"{self.annotation_path} has no images with split in {list(parts)}")
        relpaths = [self.image_relpath(r) for r in records]
        dirs = sorted({(self.images_dir / p).parent for p in relpaths})
        if self.download and not all(d.is_dir() for d in dirs):
            self._download(parts)
        for d in dirs:
            if not d.is_dir():
                raise self.missing(d, f"the image directory of split {name!r}")
        split = build_split(records, name=name, image_ids=[self.image_id(r) for r in records],
                            image_paths=[self.images_dir / p for p in relpaths],
                            captions_per_image=self.captions_per_image)
        expected = self.expected_images.get(name)
        if expected is not None and split.n_images != expected:
            log.warning("%s %s: %d images, the published Karpathy split has %d", self.name, name,
                        split.n_images, expected)
        return split

    def identity(self, split: RetrievalSplit) -> dict:
        """JSON-able description of ``split``'s data for the embedding cache key.

        Holds the dataset, split name, options and a sha256 of the split's content (image ids,
        image paths relative to ``images_dir``, captions, caption->image index), so a subset
        (``split.subset_images(rows)``) or an edited annotation file gets its own key, while
        moving the data root does not.
        """
        h = hashlib.sha256()
        for image_id, path in zip(split.image_ids, split.image_paths):
            try:
                rel = Path(path).relative_to(self.images_dir).as_posix()
            except ValueError:
                rel = str(path)
            h.update(f"{image_id}\t{rel}\n".encode())
        for caption in split.captions:
            h.update(caption.encode() + b"\n")
        h.update(np.ascontiguousarray(split.caption_to_image, dtype=np.int64).tobytes())
        return {"dataset": self.name, "annotations": self.annotation_file, "split": split.name,
                "captions_per_image": self.captions_per_image, "on_bad_image": self.on_bad_image,
                "n_images": split.n_images, "n_captions": split.n_captions,
                "content_sha256": h.hexdigest()}
