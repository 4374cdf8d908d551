"""LavisEncoder against a fake ``lavis`` package that records how it is called.

LAVIS cannot be installed beside open_clip 3.x (see docs/lavis.md), so these tests inject a
stand-in with the attributes the adapter uses (the retrieval models' visual_encoder,
text_encoder, vision_proj, text_proj, tokenizer, and the eval processors) and check the calls,
the shapes, the normalisation and the batching.
"""

from __future__ import annotations

import sys
import types
import urllib.error

import numpy as np
import pytest
import torch

from nnn.encoders.lavis import LavisEncoder
from nnn.errors import MissingResourceError

WIDTH, EMBED, TOKENS = 12, 8, 5


class Tokens(dict):
    """What a transformers tokenizer returns: a dict with attribute access and .to(device)."""

    __getattr__ = dict.__getitem__

    def to(self, device):
        return Tokens({k: v.to(device) for k, v in self.items()})


class FakeTokenizer:
    def __init__(self):
        self.calls = []

    def __call__(self, texts, **kwargs):
        self.calls.append((list(texts), kwargs))
        n = kwargs["max_length"]
        ids = torch.zeros(len(texts), n, dtype=torch.long)
        for i, t in enumerate(texts):
            words = [sum(map(ord, w)) % 97 + 1 for w in t.split()][: n - 1]
            ids[i, 0] = 101  # [CLS]
            ids[i, 1:1 + len(words)] = torch.tensor(words, dtype=torch.long)
        return Tokens(input_ids=ids, attention_mask=(ids > 0).long())


class FakeVisualEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = torch.nn.Linear(3 * 4 * 4, WIDTH)

    def forward_features(self, image):  # (b, 3, 8, 8) -> (b, 1 + 4, WIDTH), [CLS] first
        patches = torch.nn.functional.unfold(image, 4, stride=4).transpose(1, 2)
        states = self.patch(patches)
        return torch.cat([states.mean(1, keepdim=True), states], dim=1)


class FakeTextEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(200, WIDTH)
        self.calls = 0

    def forward_text(self, tokens):
        self.calls += 1
        mask = tokens.attention_mask[..., None].float()
        states = self.embed(tokens.input_ids) * mask
        states[:, 0] = states.sum(1) / mask.sum(1)  # a [CLS] state that sees every real token
        return types.SimpleNamespace(last_hidden_state=states)


class FakeRetrievalModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.visual_encoder = FakeVisualEncoder()
        self.text_encoder = FakeTextEncoder()
        self.vision_proj = torch.nn.Linear(WIDTH, EMBED)
        self.text_proj = torch.nn.Linear(WIDTH, EMBED)
        self.itm_head = torch.nn.Linear(WIDTH, 2)  # must not be used
        self.itm_head.register_forward_hook(lambda *a: pytest.fail("the ITM head was used"))
        self.tokenizer = FakeTokenizer()


class FakeCaptionProcessor:
    max_words = 50

    def __call__(self, caption):
        return caption.lower().replace(".", " ").strip()


def fake_image_processor(image):
    return torch.as_tensor(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255


@pytest.fixture
def fake_lavis(monkeypatch):
    """Install a fake ``lavis`` package; returns the list of load calls."""
    calls = []

    def load_model_and_preprocess(name, model_type, is_eval=False, device="cpu"):
        calls.append(dict(name=name, model_type=model_type, is_eval=is_eval, device=str(device)))
        torch.manual_seed(0)
        model = FakeRetrievalModel()
        calls.append(model)
        return model, {"eval": fake_image_processor}, {"eval": FakeCaptionProcessor()}

    lavis = types.ModuleType("lavis")
    lavis.models = types.ModuleType("lavis.models")
    lavis.models.load_model_and_preprocess = load_model_and_preprocess
    monkeypatch.setitem(sys.modules, "lavis", lavis)
    monkeypatch.setitem(sys.modules, "lavis.models", lavis.models)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network probe
    return calls


def unit(x: torch.Tensor) -> np.ndarray:
    x = x.double()
    return (x / x.norm(dim=1, keepdim=True)).numpy()


def test_loads_through_load_model_and_preprocess(fake_lavis):
    enc = LavisEncoder(name="albef_retrieval", model_type="flickr", device="cpu").load()
    assert fake_lavis[0] == dict(name="albef_retrieval", model_type="flickr", is_eval=True,
                                 device="cpu")
    ident = enc.cache_identity()
    assert ident["family"] == "lavis" and ident["name"] == "albef_retrieval"
    assert ident["model_type"] == "flickr" and ident["precision"] == "fp32"
    assert ident["max_text_length"] == 35 and ident["adapter_version"]


def test_identity_needs_neither_lavis_nor_a_load(monkeypatch):
    monkeypatch.setitem(sys.modules, "lavis", None)  # `import lavis` would fail
    enc = LavisEncoder(model_type="flickr", device="cpu")
    ident = enc.cache_identity()
    assert ident["library"] == "salesforce-lavis None"  # not installed in this environment
    for other in (dict(model_type="coco"), dict(model_type="flickr", name="blip_retrieval"),
                  dict(model_type="flickr", max_text_length=30),
                  dict(model_type="flickr", precision="bf16")):
        assert LavisEncoder(device="cpu", **other).cache_identity() != ident


def test_image_embeddings_are_normalised_projected_cls_states(fake_lavis):
    enc = LavisEncoder(device="cpu", batch_size=2).load()
    model = fake_lavis[1]
    from PIL import Image

    rng = np.random.default_rng(0)
    px = torch.stack([enc.image_transform(Image.fromarray(rng.integers(0, 256, (8, 8, 3),
                                                                       dtype=np.uint8)))
                      for _ in range(5)])
    out = enc.encode_image_batch(px)
    with torch.no_grad():
        ref = unit(model.vision_proj(model.visual_encoder.forward_features(px)[:, 0, :]))
    assert out.shape == (5, EMBED) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)
    parts = torch.cat([enc.encode_image_batch(px[:3]), enc.encode_image_batch(px[3:])])
    np.testing.assert_allclose(parts.numpy(), out.numpy(), atol=1e-6)


def test_text_embeddings_use_the_eval_processor_and_tokenizer(fake_lavis):
    enc = LavisEncoder(device="cpu", batch_size=2, max_text_length=7).load()
    model = fake_lavis[1]
    captions = ["A dog.", "Two cats on a sofa.", "A red car", "people walking", "x"]
    out = enc.encode_texts(captions)  # batches of 2, 2, 1
    texts, kwargs = model.tokenizer.calls[0]
    assert texts == ["a dog", "two cats on a sofa"]
    assert kwargs == dict(padding="max_length", truncation=True, max_length=7, return_tensors="pt")
    assert model.text_encoder.calls == 3
    tokens = model.tokenizer([FakeCaptionProcessor()(c) for c in captions], max_length=7)
    with torch.no_grad():
        ref = unit(model.text_proj(model.text_encoder.forward_text(tokens).last_hidden_state[:, 0]))
    assert out.shape == (5, EMBED) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_caption_tokenizer_apart_gives_the_same_rows(fake_lavis):
    enc = LavisEncoder(device="cpu", batch_size=2, max_text_length=7).load()
    captions = ["A dog.", "Two cats on a sofa.", "x"]
    tokens = enc.caption_tokenizer()(captions)  # what a DataLoader worker would compute
    np.testing.assert_array_equal(enc.encode_token_batch(tokens).numpy(),
                                  enc.encode_text_batch(captions).numpy())


class BlipImageEvalProcessor:
    """LAVIS's eval image processor, as lavis/processors/blip_processors.py builds it."""

    def __init__(self, image_size=8):
        from torchvision import transforms as T

        self.transform = T.Compose([T.Resize((image_size, image_size),
                                             interpolation=T.InterpolationMode.BICUBIC),
                                    T.ToTensor(), T.Normalize((0.48, 0.46, 0.41),
                                                              (0.27, 0.26, 0.28))])

    def __call__(self, item):
        return self.transform(item)


def test_blip_eval_processor_splits_at_uint8_with_the_same_embeddings(fake_lavis, monkeypatch):
    from PIL import Image

    import nnn.encoders.lavis as adapter

    processor, fake = BlipImageEvalProcessor(), sys.modules["lavis.models"]
    load = fake.load_model_and_preprocess
    monkeypatch.setattr(fake, "load_model_and_preprocess", lambda *a, **k: (
        load(*a, **k)[0], {"eval": processor}, {"eval": FakeCaptionProcessor()}))
    enc = LavisEncoder(device="cpu", batch_size=2).load()
    assert enc.image_preprocessor() is processor.transform
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in [(9, 13), (8, 8), (30, 7)]]
    sent = torch.stack([enc.uint8_image_preprocessor()(im) for im in images])
    whole = torch.stack([processor(im) for im in images])
    assert sent.dtype == torch.uint8
    np.testing.assert_array_equal(enc.encode_image_batch(sent).numpy(),
                                  enc.encode_image_batch(whole).numpy())
    assert adapter._bare_transform(fake_image_processor) is fake_image_processor  # other kinds


def test_without_lavis_the_error_points_to_its_own_environment(monkeypatch):
    monkeypatch.setitem(sys.modules, "lavis", None)  # makes `import lavis` fail
    monkeypatch.delitem(sys.modules, "lavis.models", raising=False)
    with pytest.raises(ImportError,
                       match=r"(?s)pip install salesforce-lavis.*timm==0\.4\.12.*separate "
                             r"environment.*docs/lavis\.md") as err:
        LavisEncoder(device="cpu").load()
    assert isinstance(err.value, MissingResourceError)  # a user error: run.py prints one line


def _url_error(*args, **kwargs):
    raise RuntimeError("checkpoint url or path is invalid") from urllib.error.URLError(
        "[Errno -2] Name or service not known")


def _bare_oserror(*args, **kwargs):  # what transformers 4.26 raises for an uncached tokenizer
    raise OSError("Can't load tokenizer for 'bert-base-uncased'.")


@pytest.mark.parametrize("failure", [_url_error, _bare_oserror])
def test_download_failures_become_missing_resource_errors(fake_lavis, monkeypatch, failure):
    monkeypatch.setattr(sys.modules["lavis.models"], "load_model_and_preprocess", failure)
    with pytest.raises(MissingResourceError, match="albef_retrieval \\(coco\\).*network access"):
        LavisEncoder(device="cpu").load()


def test_argument_checks():
    with pytest.raises(ValueError, match="model_type"):
        LavisEncoder(model_type="")
    with pytest.raises(ValueError, match="max_text_length"):
        LavisEncoder(max_text_length=1)
    with pytest.raises(ValueError, match="precision"):
        LavisEncoder(precision="fp8")
