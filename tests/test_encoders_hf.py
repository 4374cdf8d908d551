"""HFEncoder on tiny random transformers models saved to disk with a tokenizer built offline.

CLIP gets a byte-pair CLIPTokenizer from a vocab.json/merges.txt written here; SigLIP, ALIGN and
BLIP get a WordPiece BertTokenizer from a vocab.txt (SigLIP's own tokenizer needs the
sentencepiece package; the adapter does not depend on the tokenizer's kind). Each model's
embeddings are checked against what its own ``forward`` computes.
"""

from __future__ import annotations

import json
import pickle
import string
import time

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from nnn.encoders.hf import ARCHITECTURES, HFEncoder, HFImageTransform, blip_caption  # noqa: E402
from nnn.errors import MissingResourceError  # noqa: E402

CAPTIONS = ["a cat sat on the mat", "the red car", "a dog", "a man and a woman on a red car",
            "photo of the blue mat"]
WORDS = "a an the cat dog on of in sat mat red blue car photo man woman and".split()
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=24)
VISION = dict(image_size=32, patch_size=16, hidden_size=32, intermediate_size=64,
              num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test here may reach a network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def bert_tokenizer(tmp):
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (tmp / "vocab.txt").write_text("\n".join([*special, *WORDS]))
    return transformers.BertTokenizer(vocab=str(tmp / "vocab.txt"))


def clip_tokenizer(tmp):
    tokens = ["<|startoftext|>", "<|endoftext|>", *string.ascii_lowercase,
              *[c + "</w>" for c in string.ascii_lowercase], "ca", "cat</w>"]
    (tmp / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (tmp / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    return transformers.CLIPTokenizer(vocab=str(tmp / "vocab.json"), merges=str(tmp / "merges.txt"))


def build(kind: str, tmp):
    """(model, tokenizer, image processor) of a tiny random ``kind`` model."""
    size = {"height": 32, "width": 32}
    if kind == "clip":
        tok = clip_tokenizer(tmp)
        ids = dict(vocab_size=len(tok), bos_token_id=0, eos_token_id=1, pad_token_id=1)
        model = transformers.CLIPModel(transformers.CLIPConfig(
            text_config={**TEXT, **ids}, vision_config=dict(VISION), projection_dim=24))
        proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=size)
    elif kind == "siglip":
        tok = bert_tokenizer(tmp)
        ids = dict(vocab_size=len(tok), bos_token_id=2, eos_token_id=3, pad_token_id=0)
        model = transformers.SiglipModel(transformers.SiglipConfig(
            text_config={**TEXT, **ids}, vision_config=dict(VISION)))
        proc = transformers.SiglipImageProcessor(size=size)
    elif kind == "align":
        tok = bert_tokenizer(tmp)
        model = transformers.AlignModel(transformers.AlignConfig(
            text_config={**TEXT, "vocab_size": len(tok), "pad_token_id": 0},
            vision_config=dict(image_size=32, width_coefficient=0.1, depth_coefficient=0.1,
                               initializer_range=0.5),  # the default init vanishes here
            projection_dim=32))
        proc = transformers.EfficientNetImageProcessor(size=size)
    else:
        tok = bert_tokenizer(tmp)
        ids = dict(vocab_size=len(tok), bos_token_id=2, sep_token_id=3, pad_token_id=0)
        model = transformers.BlipForImageTextRetrieval(transformers.BlipConfig(
            text_config={**TEXT, **ids}, vision_config=dict(VISION), image_text_hidden_size=24))
        proc = transformers.BlipImageProcessor(size=size)
    return model.eval(), tok, proc


KINDS = ["clip", "siglip", "align", "blip"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """kind -> folder holding the tiny model, its tokenizer and image processor."""
    out = {}
    for kind in KINDS:
        d = tmp_path_factory.mktemp(kind)
        torch.manual_seed(0)
        for part in build(kind, d):
            part.save_pretrained(d)
        out[kind] = d
    return out


@pytest.fixture(scope="module")
def images():
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for h, w in [(40, 50), (32, 32), (64, 20), (17, 90)]]


def load(path, **kw) -> HFEncoder:
    padding = {"text_padding": "max_length"} if "siglip" in str(path) else {}
    return HFEncoder(model_id=str(path), device="cpu", **{**padding, **kw}).load()


def reference(kind, enc, px, captions):
    """Normalised (image, text) embeddings as the model's own forward pass computes them."""
    tokens = enc._tokenizer(captions, padding=enc.text_padding, truncation=True,
                            max_length=enc.text_length, return_tensors="pt")
    with torch.no_grad():
        if kind == "blip":  # forward(use_itm_head=False) gives cosine similarities only
            return enc._model(input_ids=tokens["input_ids"], pixel_values=px,
                              attention_mask=tokens["attention_mask"],
                              use_itm_head=False).itm_score
        out = enc._model(pixel_values=px, **tokens)
    return out.image_embeds, out.text_embeds


@pytest.mark.parametrize("kind", KINDS)
def test_embeddings_match_the_models_forward(kind, saved, images):
    enc = load(saved[kind], batch_size=2)
    assert enc.model_class == {"clip": "CLIPModel", "siglip": "SiglipModel", "align": "AlignModel",
                                "blip": "BlipForImageTextRetrieval"}[kind]
    px = torch.stack([enc.image_transform(im) for im in images])
    img = enc.encode_image_batch(px)
    txt = torch.from_numpy(enc.encode_texts(CAPTIONS))  # batches of 2, 2, 1
    assert img.dtype == txt.dtype == torch.float32 and img.shape[1] == txt.shape[1]
    assert img.shape[0] == len(images) and txt.shape[0] == len(CAPTIONS)
    np.testing.assert_allclose(img.norm(dim=1).numpy(), 1, atol=1e-5)
    np.testing.assert_allclose(txt.norm(dim=1).numpy(), 1, atol=1e-5)
    ref = reference(kind, enc, px, CAPTIONS)
    if kind == "blip":
        np.testing.assert_allclose((img @ txt.T).numpy(), ref.numpy(), atol=1e-5)
    else:
        np.testing.assert_allclose(img.numpy(), ref[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(txt.numpy(), ref[1].numpy(), atol=1e-5)
    whole = load(saved[kind], batch_size=len(CAPTIONS)).encode_texts(CAPTIONS)
    np.testing.assert_allclose(txt.numpy(), whole, atol=1e-5)


def test_blip_uses_the_projection_heads_not_the_itm_head(saved, images):
    enc = load(saved["blip"])
    m = enc._model
    px = torch.stack([enc.image_transform(im) for im in images])
    tokens = enc._tokenizer(CAPTIONS[:2], padding="longest", return_tensors="pt")
    with torch.no_grad():
        vis = m.vision_proj(m.vision_model(pixel_values=px).last_hidden_state[:, 0, :]).double()
        txt = m.text_proj(m.text_encoder(input_ids=tokens["input_ids"],
                                         attention_mask=tokens["attention_mask"]
                                         ).last_hidden_state[:, 0, :]).double()
    vis /= vis.norm(dim=1, keepdim=True)
    txt /= txt.norm(dim=1, keepdim=True)
    assert vis.shape[1] == 24  # image_text_hidden_size, not the 2 ITM logits
    np.testing.assert_allclose(enc.encode_image_batch(px).numpy(), vis.numpy(), atol=1e-5)
    np.testing.assert_allclose(enc.encode_text_batch(CAPTIONS[:2]).numpy(), txt.numpy(), atol=1e-5)


def test_identity_and_picklable_transform(saved, images):
    enc = load(saved["clip"])
    ident = enc.cache_identity()
    assert json.loads(json.dumps(ident)) == ident
    assert ident["family"] == "hf" and ident["architecture"] is None  # from the checkpoint
    assert enc.model_class == "CLIPModel" and enc.text_length == 24  # resolved by load()
    assert ident["weights"]["path"] == str(saved["clip"].resolve())
    assert {"model.safetensors", "preprocessor_config.json"} <= set(ident["weights"]["files"])
    assert ident["text"] == {"padding": "longest", "max_length": None, "caption_style": "raw"}
    assert ident["precision"] == "fp32" and ident["library"] == \
        f"transformers {transformers.__version__}"
    assert load(saved["clip"], precision="bf16").cache_identity() != ident
    assert load(saved["clip"], caption_style="blip").cache_identity() != ident
    transform = pickle.loads(pickle.dumps(enc.image_preprocessor()))
    assert isinstance(transform, HFImageTransform)
    assert torch.equal(transform(images[0]), enc.image_transform(images[0]))


@pytest.mark.parametrize("kind", KINDS)
def test_identity_needs_no_load_and_survives_it(kind, saved):
    enc = HFEncoder(model_id=str(saved[kind]), device="cpu")
    before = enc.cache_identity()
    assert not enc.is_loaded
    assert enc.load().is_loaded and enc.cache_identity() == before


def test_hub_identity_offline_without_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(HFEncoder, "_load", lambda *a: pytest.fail("loaded a model"))
    hub = dict(model_id="openai/clip-vit-base-patch32", cache_dir=str(tmp_path))
    ident = HFEncoder(**hub).cache_identity()
    assert ident["model_id"] == hub["model_id"] and ident["weights"] == {"revision": None}
    for other in (dict(hub, model_id="openai/clip-vit-large-patch14"),
                  dict(hub, revision="3d74acf"),
                  dict(hub, precision="bf16"), dict(hub, text_padding="max_length"),
                  dict(hub, max_text_length=64), dict(hub, architecture="CLIPModel")):
        assert HFEncoder(**other).cache_identity() != ident
    assert HFEncoder(**hub, batch_size=7).cache_identity() == ident
    monkeypatch.setattr(HFEncoder, "adapter_version", "2")
    assert HFEncoder(**hub).cache_identity() == {**ident, "adapter_version": "2"}


def test_architecture_comes_from_config_data(saved, tmp_path):
    assert set(ARCHITECTURES) == {"CLIPModel", "SiglipModel", "AlignModel",
                                  "BlipForImageTextRetrieval"}
    transformers.BertConfig(architectures=["BertModel"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'BertModel' is not one this adapter knows"):
        HFEncoder(model_id=str(tmp_path), device="cpu").load()
    with pytest.raises(ValueError, match="architecture='GPT2Model' is not supported"):
        HFEncoder(model_id="x", architecture="GPT2Model")
    with pytest.raises(ValueError, match="text_padding"):
        HFEncoder(model_id="x", text_padding="right")


def test_blip_caption_style():
    assert blip_caption('A man (riding) a "horse".\n  Fast!') == "a man riding a horse fast"


def test_missing_model_offline_fails_fast(tmp_path):
    enc = HFEncoder(model_id="openai/clip-vit-base-patch32", device="cpu", cache_dir=str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(MissingResourceError) as info:
        enc.load()
    assert time.perf_counter() - t0 < 10
    msg = str(info.value)
    assert "openai/clip-vit-base-patch32" in msg and "offline" in msg
    assert "hf download openai/clip-vit-base-patch32" in msg
    pinned = HFEncoder(model_id="openai/clip-vit-base-patch32", revision="abc123", device="cpu",
                       cache_dir=str(tmp_path))
    with pytest.raises(MissingResourceError, match=r"hf download openai/clip-vit-base-patch32 "
                                                   r"--revision abc123`"):
        pinned.load()


def test_a_missing_local_folder_is_named(tmp_path):
    """A path that is no hub id (``/...``, ``./...``, ``~/...``) or a file is a local folder
    the user meant: named, before any download is tried (not "Repo id must be in the form")."""
    for model_id in (str(tmp_path / "no_such_model"), "./no_such_model", "~/no_such_model"):
        with pytest.raises(MissingResourceError, match=r"model folder .*no_such_model "
                                                       r"\(model.model_id\) does not exist"):
            HFEncoder(model_id=model_id, device="cpu").cache_identity()
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(MissingResourceError, match="is not a folder; give a folder saved with"):
        HFEncoder(model_id=str(tmp_path / "model.safetensors"), device="cpu").load()


@pytest.mark.parametrize("kind", ["clip", "blip"])
def test_max_text_length_beyond_the_text_model_is_refused_at_load(kind, saved):
    """24 positions here: 25 would fail only at the first long caption, after every image (for
    BLIP as "The size of tensor a (25) must match ..."); it is refused when the model loads."""
    with pytest.raises(ValueError, match=r"model.max_text_length=25 is more than the 24 token "
                                         r"positions .*set it to at most 24, or null"):
        load(saved[kind], max_text_length=25)
    enc = load(saved[kind], max_text_length=24)
    long = " ".join(["the red car on the blue mat"] * 10)  # truncated to 24 tokens
    assert enc.text_length == 24 and enc.encode_texts([long, "a dog"]).shape[0] == 2


@pytest.mark.parametrize("kind", KINDS)
def test_caption_tokens_apart_give_the_same_rows(kind, saved):
    """The tokenising that DataLoader workers would run, then the model: the same rows as
    encode_text_batch. A fast (Rust) tokenizer is not sent to workers."""
    import pickle

    enc = load(saved[kind], batch_size=2)
    tokenize = pickle.loads(pickle.dumps(enc._caption_tokens()))  # as a spawned worker gets it
    tokens = tokenize(CAPTIONS[:3])
    assert isinstance(tokens, dict) and all(isinstance(v, torch.Tensor) for v in tokens.values())
    np.testing.assert_array_equal(enc.encode_token_batch(tokens).numpy(),
                                  enc.encode_text_batch(CAPTIONS[:3]).numpy())
    assert enc.caption_tokenizer() is None if enc._tokenizer.is_fast else enc.caption_tokenizer()
