"""The preprocessing cut at uint8 (nnn.encoders.pixels): the workers' uint8 part and the
device's finish give the very pixels of the whole transform, so the extraction's embeddings
are the same bit for bit whichever way the pixels travel; other transforms do not split."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from fixtures_karpathy import make_karpathy_fixture, tiny_clip_encoder
from PIL import Image
from torchvision import transforms as T

from nnn.cache import EmbeddingCache
from nnn.data.flickr30k import Flickr30k
from nnn.embed import embed_dataset_split
from nnn.encoders.pixels import PILToUint8, Uint8Finish, split_at_uint8

pytestmark = pytest.mark.filterwarnings("ignore:.*treespec:FutureWarning")  # Lightning vs torch
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for h, w in [(480, 640), (333, 500), (224, 224), (17, 301), (9, 9)]]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_clip_encoder(tmp_path_factory.mktemp("openclip_cfg")).load()


@pytest.mark.parametrize("normalize", [True, False])
def test_split_gives_the_same_pixels_bit_for_bit(normalize):
    whole = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
                       T.CenterCrop(224), T.ToTensor(), *([T.Normalize(MEAN, STD)] * normalize)])
    part, finish = pickle.loads(pickle.dumps(split_at_uint8(whole)))  # as workers get it
    images = _images()
    sent = torch.stack([part(im) for im in images])
    assert sent.dtype == torch.uint8 and sent.shape == (len(images), 3, 224, 224)
    assert torch.equal(finish(sent), torch.stack([whole(im) for im in images]))


def test_open_clip_preprocessing_splits_and_matches(encoder):
    part = encoder.uint8_image_preprocessor()
    assert part is not None
    images = _images()
    sent = torch.stack([part(im) for im in images])
    whole = torch.stack([encoder.image_transform(im) for im in images])
    np.testing.assert_array_equal(encoder.encode_image_batch(sent).numpy(),
                                  encoder.encode_image_batch(whole).numpy())


def test_other_transforms_do_not_split():
    norm = T.Normalize(MEAN, STD)
    for transform in (lambda im: T.functional.to_tensor(im),             # not a Compose
                      T.Compose([T.Resize(8), T.CenterCrop(8)]),          # no ToTensor
                      T.Compose([T.ToTensor(), norm, T.Lambda(lambda x: x * 2)]),  # after it
                      T.Compose([T.PILToTensor(), T.ToTensor(), norm]),   # a tensor step before
                      T.Compose([T.ToTensor(), T.ToTensor(), norm])):
        assert split_at_uint8(transform) is None
    with pytest.raises(ValueError, match="RGB PIL images"):
        PILToUint8()(Image.new("L", (4, 4)))
    assert torch.equal(Uint8Finish()(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)),
                       torch.ones(1, 3, 1, 1))


def test_uint8_pixels_for_an_encoder_that_does_not_split_are_refused(encoder, monkeypatch):
    monkeypatch.setattr(encoder, "_split", (encoder._preprocess, None))
    assert encoder.uint8_image_preprocessor() is None
    with pytest.raises(ValueError, match="takes float pixels"):
        encoder.encode_image_batch(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("lightning", [None, dict(accelerator="cpu", devices=1, strategy="auto")])
def test_extraction_with_uint8_pixels_is_the_same_bit_for_bit(encoder, tmp_path, monkeypatch,
                                                              lightning):
    """The uint8 path (the default for open_clip) and the float path forced: local and
    Lightning paths store the same embeddings."""
    make_karpathy_fixture(tmp_path / "data", "flickr30k", n_train=3, n_val=2, n_test=7)
    ds = Flickr30k(tmp_path / "data")
    opts = dict(batch_size=3, shard_size=4, num_workers=1, progress=False, lightning=lightning)
    with monkeypatch.context() as m:
        m.setattr(encoder, "uint8_image_preprocessor", lambda: None)  # the float path
        plain = embed_dataset_split(encoder, ds, "test", EmbeddingCache(tmp_path / "a"), **opts)
    sent, uint8_part = [], encoder.uint8_image_preprocessor
    monkeypatch.setattr(encoder, "uint8_image_preprocessor",
                        lambda: sent.append(1) or uint8_part())
    uint8 = embed_dataset_split(encoder, ds, "test", EmbeddingCache(tmp_path / "b"), **opts)
    assert sent  # the uint8 path ran
    np.testing.assert_array_equal(uint8.image, plain.image)
    np.testing.assert_array_equal(uint8.text, plain.text)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_extraction_sends_uint8_and_matches_the_cpu(tmp_path):
    """On a GPU the workers send uint8 pixels and the GPU finishes them: the embeddings match
    the CPU's float path up to float32 rounding. Run by benchmarks/gpu_check.py."""
    make_karpathy_fixture(tmp_path / "data", "flickr30k", n_train=3, n_val=2, n_test=7)
    ds = Flickr30k(tmp_path / "data")
    opts = dict(batch_size=3, shard_size=4, num_workers=1, progress=False)
    cpu = tiny_clip_encoder(tmp_path / "cfg").load()
    gpu = tiny_clip_encoder(tmp_path / "cfg", device="cuda").load()
    assert gpu.uint8_image_preprocessor() is not None
    want = embed_dataset_split(cpu, ds, "test", EmbeddingCache(tmp_path / "a"), **opts)
    got = embed_dataset_split(gpu, ds, "test", EmbeddingCache(tmp_path / "b"),
                              device="cuda", **opts)
    np.testing.assert_allclose(got.image, want.image, atol=1e-4)
