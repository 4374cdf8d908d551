"""Flickr30k in the Karpathy split: 29,000 train, 1,014 val and 1,000 test images, 5 captions each.

Layout under the data root (docs/data.md)::

    <root>/flickr30k/dataset_flickr30k.json   Karpathy split file
    <root>/flickr30k/images/<filename>.jpg    e.g. 1000092795.jpg
    <root>/flickr30k/downloads/               files fetched by download=true (deletable)

Image ids are the file names without extension (the Flickr photo ids).

``download=true`` fetches the Hugging Face dataset repository ``nlphuji/flickr30k`` at a pinned
revision: ``flickr_annotations_30k.csv`` (the Karpathy split: columns raw, sentids, split,
filename, img_id) and ``flickr30k-images.zip``, each checked against the sha256 the Hub lists for
it. The repository is a script-based dataset, which ``datasets`` >= 4 no longer runs, so its two
files are read directly; the CSV is rewritten here as ``dataset_flickr30k.json`` (``tokens`` are
lower-cased words of ``raw``; nothing here uses them). Karpathy's own ``dataset_flickr30k.json``
(in ``caption_datasets.zip``) can be put in its place instead.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

from nnn._atomic import atomic_write_json
from nnn.data.download import RemoteFile, extract_dir, fetch
from nnn.data.karpathy import KarpathyDataset

log = logging.getLogger(__name__)

HF_REPO = "nlphuji/flickr30k"
HF_REVISION = "2b239befc81b6e3f035ce6bd52f5f4d60f5625f7"
HF_CSV = "flickr_annotations_30k.csv"
HF_IMAGES = "flickr30k-images.zip"
_CSV_COLUMNS = ("raw", "sentids", "split", "filename", "img_id")


def hub_file(filename: str) -> RemoteFile:
    """A file of the pinned repository revision, with the sha256 the Hub lists (None offline)."""
    url = f"https://huggingface.co/datasets/{HF_REPO}/resolve/{HF_REVISION}/{filename}"
    sha256 = size = None
    try:
        from huggingface_hub import HfApi

        (info,) = HfApi().get_paths_info(HF_REPO, [filename], repo_type="dataset",
                                         revision=HF_REVISION)
        size = info.size
        sha256 = info.lfs.sha256 if info.lfs is not None else None
    except Exception as e:  # the Hub API is optional; the download itself will fail if offline
        log.warning("could not read the sha256 of %s from the Hub (%s); it will be recorded on "
                    "first download instead", filename, e)
    return RemoteFile(url, filename, size=size, sha256=sha256)


def csv_to_karpathy(csv_path: Path, json_path: Path) -> Path:
    """Rewrite nlphuji's ``flickr_annotations_30k.csv`` as a Karpathy ``dataset_flickr30k.json``."""
    images = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path} lacks columns {missing} (has {reader.fieldnames}); "
                             "the Hub file changed, see docs/data.md for a manual download")
        for row in reader:
            imgid = int(row["img_id"])
            raws, sentids = json.loads(row["raw"]), [int(s) for s in json.loads(row["sentids"])]
            if len(raws) != len(sentids):
                raise ValueError(f"{csv_path}: image {row['filename']} has {len(raws)} captions "
                                 f"but {len(sentids)} sentence ids")
            images.append({
                "filename": row["filename"], "imgid": imgid, "split": row["split"],
                "sentids": sentids,
                "sentences": [{"raw": raw, "tokens": re.findall(r"[a-z0-9]+", raw.lower()),
                               "imgid": imgid, "sentid": sid} for raw, sid in zip(raws, sentids)],
            })
    return atomic_write_json(json_path, {"images": images, "dataset": "flickr30k"}, indent=None)


class Flickr30k(KarpathyDataset):
    """Flickr30k, Karpathy split. See ``KarpathyDataset`` for the arguments."""

    name = "flickr30k"
    annotation_file = "dataset_flickr30k.json"
    split_parts = {"train": ("train",), "val": ("val",), "test": ("test",)}
    expected_images = {"train": 29_000, "val": 1_014, "test": 1_000}

    def image_relpath(self, record: dict) -> str:
        return record["filename"]

    def image_id(self, record: dict) -> str:
        return Path(record["filename"]).stem

    def _download(self, split_parts: tuple[str, ...]) -> None:
        downloads = self.data_dir / "downloads"
        if not self.annotation_path.is_file():
            csv_to_karpathy(fetch(hub_file(HF_CSV), downloads), self.annotation_path)
        if split_parts and not self.images_dir.is_dir():
            archive = fetch(hub_file(HF_IMAGES), downloads)
            extract_dir(archive, "flickr30k-images", self.images_dir)
