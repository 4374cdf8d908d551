"""A tiny COCO / Flickr30k look-alike on disk, and a tiny open_clip encoder, for offline tests.

``make_karpathy_fixture(root, "coco" | "flickr30k", ...)`` writes small JPEGs and a split file in
the real Karpathy formats (``dataset_coco.json`` with filepath/cocoid and a restval split;
``dataset_flickr30k.json`` with flat file names) into the layout of docs/data.md, and returns
the records it wrote. ``corrupt(path, kind)`` turns an image into a truncated or garbage file.

``tiny_clip_encoder()`` is a 2-layer open_clip CLIP with random (seeded) weights, built offline
from a JSON config, through the project's open_clip adapter (``nnn.encoders.open_clip``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "stripe", "dot", "cross", "ring"]

#: Karpathy split value -> COCO folder, as in the real dataset (restval images come from val2014)
_COCO_FOLDER = {"train": "train2014", "restval": "val2014", "val": "val2014", "test": "val2014"}


def _image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A smooth random picture: a colour gradient with a bright rectangle (JPEG-friendly)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-2, 2, (3, 2))
    img = base + xx[..., None] * slope[:, 0] + yy[..., None] * slope[:, 1]
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    img[y0:y0 + h // 3, x0:x0 + w // 3] = rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def make_karpathy_fixture(root: str | Path, dataset: str = "coco", *, n_train: int = 10,
                          n_restval: int = 4, n_val: int = 5, n_test: int = 6,
                          captions: int = 5, extra_captions: dict[int, int] | None = None,
                          image_size: tuple[int, int] = (40, 32), seed: int = 0) -> list[dict]:
    """Write ``<root>/<dataset>/`` (annotation JSON + images); returns the image records.

    Images are listed test, val, train, restval shuffled together (seeded), as in the real files,
    which interleave splits. ``extra_captions`` maps a record position to extra sentences (COCO
    has a few images with 6-7). ``n_restval`` is ignored for Flickr30k, which has no restval.
    """
    if dataset not in ("coco", "flickr30k"):
        raise ValueError(f"dataset must be 'coco' or 'flickr30k', got {dataset!r}")
    rng = np.random.default_rng(seed)
    splits = (["train"] * n_train + ["val"] * n_val + ["test"] * n_test
              + (["restval"] * n_restval if dataset == "coco" else []))
    splits = [splits[i] for i in rng.permutation(len(splits))]
    extra_captions = extra_captions or {}
    data_dir = Path(root) / dataset
    records, sentid = [], 0
    for imgid, split in enumerate(splits):
        n_sent = captions + extra_captions.get(imgid, 0)
        sentences = []
        for k in range(n_sent):
            raw = (f"A {COLORS[(imgid + k) % len(COLORS)]} {SHAPES[(3 * imgid + k) % len(SHAPES)]} "
                   f"in picture {imgid}, take {k}.")
            tokens = raw.lower().rstrip(".").replace(",", "").split()
            sentences.append({"raw": raw, "tokens": tokens, "imgid": imgid, "sentid": sentid})
            sentid += 1
        rec = {"filename": "", "imgid": imgid, "split": split,
               "sentids": [s["sentid"] for s in sentences], "sentences": sentences}
        if dataset == "coco":
            folder, cocoid = _COCO_FOLDER[split], 100000 + 7 * imgid
            rec.update(filepath=folder, cocoid=cocoid,
                       filename=f"COCO_{folder}_{cocoid:012d}.jpg")
            path = data_dir / "images" / folder / rec["filename"]
        else:
            rec["filename"] = f"{3000000 + 11 * imgid}.jpg"
            path = data_dir / "images" / rec["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        _image(rng, image_size).save(path, quality=90)
        records.append(rec)
    (data_dir / f"dataset_{dataset}.json").write_text(
        json.dumps({"images": records, "dataset": dataset}), encoding="utf-8")
    return records


def corrupt(path: str | Path, kind: str = "truncate") -> None:
    """Make an image unreadable: ``truncate`` keeps 200 bytes, ``garbage`` overwrites it."""
    path = Path(path)
    if kind == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "garbage":
        path.write_bytes(b"this is not an image" * 10)
    else:
        raise ValueError(f"kind must be 'truncate' or 'garbage', got {kind!r}")


# -- a tiny open_clip encoder -----------------------------------------------------------------
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_NAME = "nnn-test-tiny"


def register_tiny_config(directory: str | Path) -> str:
    """Write the tiny open_clip config into ``directory`` and register it; returns its name."""
    import open_clip

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(directory)
    return TINY_NAME


def tiny_clip_encoder(config_dir: str | Path, *, device: str = "cpu", batch_size: int = 8,
                      seed: int = 0):
    """The project's open_clip adapter around the tiny model; random weights seeded on every
    ``load()`` (so each DDP rank, which loads its own copy, gets the same ones)."""
    import torch

    from nnn.encoders.open_clip import OpenClipEncoder

    register_tiny_config(config_dir)

    class SeededOpenClip(OpenClipEncoder):
        def load(self):
            torch.manual_seed(seed)
            return super().load()

    return SeededOpenClip(model_name=TINY_NAME, pretrained=None, model_config_dir=str(config_dir),
                          device=device, batch_size=batch_size)


if __name__ == "__main__":  # python tests/fixtures_karpathy.py DIR: write both fixtures there
    for ds in ("coco", "flickr30k"):
        make_karpathy_fixture(sys.argv[1], ds)


class CountingEncoder:
    """Wraps an encoder; counts loads, encoded images and captions, and can fail after
    ``fail_after`` image batches (a crash injected mid-extraction)."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after = inner, fail_after
        self.images = self.batches = self.captions = self.loads = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def load(self):  # the Lightning path loads on the rank's device
        self.loads += 1
        self.inner.load()
        return self

    def encode_texts(self, captions, *, progress=True):
        self.captions += len(captions)
        return self.inner.encode_texts(captions, progress=progress)

    def encode_image_batch(self, pixels):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise RuntimeError("injected crash")
        self.batches += 1
        self.images += len(pixels)
        return self.inner.encode_image_batch(pixels)
