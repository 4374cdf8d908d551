"""Extraction as a user meets it: the progress switch, models that emit NaN/Inf, L2
normalisation against float64 at sizes that cross batch and shard boundaries. Uses a tiny
random open_clip model on CPU and a generated Flickr30k look-alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_karpathy import CountingEncoder, make_karpathy_fixture, tiny_clip_encoder

from nnn.cache import EmbeddingCache
from nnn.data.flickr30k import Flickr30k
from nnn.embed import embed_dataset_split
from nnn.embed.shards import PART_GLOB

OPTS = dict(batch_size=3, shard_size=4, num_workers=0)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_clip_encoder(tmp_path_factory.mktemp("openclip_cfg"), batch_size=4).load()


@pytest.fixture
def flickr(tmp_path):
    make_karpathy_fixture(tmp_path / "data", "flickr30k", n_train=7, n_val=2, n_test=3)
    return Flickr30k(tmp_path / "data")


def test_progress_false_hides_the_caption_bar_too(encoder, flickr, tmp_path, capfd):
    """extract.progress=false (e.g. for SLURM logs) silences every bar: 35 captions in batches
    of 4 used to draw an "encode captions" bar regardless."""
    embed_dataset_split(encoder, flickr, "train", EmbeddingCache(tmp_path / "quiet"),
                        progress=False, **OPTS)
    assert "encode captions" not in capfd.readouterr().err
    embed_dataset_split(encoder, flickr, "train", EmbeddingCache(tmp_path / "loud"),
                        progress=True, **OPTS)
    err = capfd.readouterr().err
    assert "encode captions" in err and "embed train" in err


class NonFinite(CountingEncoder):
    """The tiny encoder, with one row of each image batch or of each caption batch NaN (what
    an fp16 overflow gives)."""

    def __init__(self, inner, where: str):
        super().__init__(inner)
        self.where = where

    def encode_image_batch(self, pixels):
        out = super().encode_image_batch(pixels).clone()
        if self.where == "image":
            out[0] = float("nan")
        return out

    def encode_text_batch(self, captions):
        out = self.inner.encode_text_batch(captions).clone()
        if self.where == "text":
            out[-1] = float("inf")
        return out

    def encode_texts(self, captions, *, progress=True):  # the base loop, over the batch above
        return type(self.inner).encode_texts(self, captions, progress=progress)


@pytest.mark.parametrize("where", ["image", "text"])
def test_nan_embeddings_stop_with_the_precision_named(encoder, flickr, tmp_path, where):
    """NaN/Inf rows used to be dropped from the shards as "unusable" (then "N images have
    neither an embedding nor an error ...; rerun to compute them", for ever) or, for captions,
    stored in the cache. Now: one ValueError naming the precision, and nothing cached."""
    cache = EmbeddingCache(tmp_path / "c")
    rows = {"image": r"1 of 3 images of a batch", "text": r"9 of 35 captions"}[where]
    with pytest.raises(ValueError, match=rf"NonFinite produced NaN/Inf embeddings for {rows} "
                                         r"\(precision=fp32\); check the model's weights"):
        embed_dataset_split(NonFinite(encoder, where), flickr, "train", cache, progress=False,
                            **OPTS)
    assert not any(p.is_dir() and len(p.name) == 64 for p in cache.root.iterdir())
    if where == "text":  # the images were fine: their shards stay for the rerun
        assert list(next((cache.root / ".work").iterdir()).glob(PART_GLOB))


def test_half_precision_overflow_says_to_use_fp32(encoder, flickr, tmp_path):
    bf16 = NonFinite(encoder, "image")
    bf16.precision = "bf16"  # an attribute of the wrapper: the inner encoder stays fp32
    with pytest.raises(ValueError, match=r"precision=bf16\); a half-precision overflow is the "
                                         r"usual cause: set model.precision=fp32"):
        embed_dataset_split(bf16, flickr, "test", EmbeddingCache(tmp_path / "c"), progress=False,
                            **OPTS)


def test_unit_rows_match_float64(encoder, flickr, tmp_path):
    """7 images in batches of 3 and shards of 4, 35 captions in batches of 4: every row is the
    float64-normalised model output to float32 rounding."""
    split = flickr.split("train")
    es = embed_dataset_split(encoder, flickr, "train", EmbeddingCache(tmp_path / "c"),
                             progress=False, **OPTS)
    model = encoder._model
    from PIL import Image

    with torch.no_grad():
        px = torch.stack([encoder.image_transform(Image.open(p).convert("RGB"))
                          for p in split.image_paths])
        img = model.encode_image(px).double().numpy()
        txt = model.encode_text(encoder._tokenizer(split.captions)).double().numpy()
    for got, ref in ((es.image, img), (es.text, txt)):
        ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        assert got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got.astype(np.float64), axis=1), 1, atol=1e-6)
        np.testing.assert_allclose(got, ref, atol=1e-5)
