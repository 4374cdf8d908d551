"""MS-COCO 2014 captions in the Karpathy split: 113,287 train (train + restval), 5,000 val and
5,000 test images, 5 captions each (the first 5 where the file has 6 or 7).

Layout under the data root (docs/data.md)::

    <root>/coco/dataset_coco.json                 Karpathy split file
    <root>/coco/images/train2014/COCO_train2014_*.jpg
    <root>/coco/images/val2014/COCO_val2014_*.jpg  (val, test and restval images)
    <root>/coco/downloads/                         archives fetched by download=true (deletable)

Image ids are the COCO ids (``cocoid``). val and test need only ``val2014``; train needs both.
"""

from __future__ import annotations

from nnn.data.download import RemoteFile, extract_dir, extract_member, fetch
from nnn.data.karpathy import RECORD_FIELDS, KarpathyDataset

#: Karpathy's split files (COCO, Flickr8k, Flickr30k). No checksum is published for it: its
#: sha256 is recorded on first download (nnn.data.download, trust on first use).
KARPATHY_ZIP = RemoteFile(
    "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
    "caption_datasets.zip")
#: The official 2014 image archives with their published sizes and md5 sums.
COCO_IMAGE_ZIPS = {
    "train2014": RemoteFile("http://images.cocodataset.org/zips/train2014.zip", "train2014.zip",
                            size=13_510_573_713, md5="0da8c0bd3d6becc4dcb32757491aca88"),
    "val2014": RemoteFile("http://images.cocodataset.org/zips/val2014.zip", "val2014.zip",
                          size=6_645_013_297, md5="a3d79f5ed8d289b7a7554ce06a5782b3"),
}


class COCO(KarpathyDataset):
    """COCO 2014, Karpathy split. See ``KarpathyDataset`` for the arguments."""

    name = "coco"
    annotation_file = "dataset_coco.json"
    split_parts = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}
    expected_images = {"train": 113_287, "val": 5_000, "test": 5_000}
    record_fields = {**RECORD_FIELDS, "filepath": str}

    def image_relpath(self, record: dict) -> str:
        return f"{record['filepath']}/{record['filename']}"

    def image_id(self, record: dict) -> str:
        return str(record.get("cocoid", record.get("imgid")))

    def _download(self, split_parts: tuple[str, ...]) -> None:
        downloads = self.data_dir / "downloads"
        if not self.annotation_path.is_file():
            archive = fetch(KARPATHY_ZIP, downloads)
            extract_member(archive, self.annotation_file, self.annotation_path)
        folders = sorted({r["filepath"] for r in self.records() if r["split"] in split_parts})
        for folder in folders:
            if (self.images_dir / folder).is_dir():
                continue
            if folder not in COCO_IMAGE_ZIPS:
                raise ValueError(f"{self.annotation_path} refers to image folder {folder!r}; "
                                 f"only {sorted(COCO_IMAGE_ZIPS)} can be downloaded")
            archive = fetch(COCO_IMAGE_ZIPS[folder], downloads)
            extract_dir(archive, folder, self.images_dir / folder)
