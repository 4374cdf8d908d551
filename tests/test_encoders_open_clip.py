"""OpenClipEncoder on a tiny random open_clip architecture (registered from a JSON config), offline.

The tokenizer vocabulary ships inside open_clip, so tokenising works without a network; the
"missing weights" tests only ever see the hub through offline mode or a mocked probe.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

from nnn.encoders import sources  # noqa: E402
from nnn.encoders.open_clip import OpenClipEncoder  # noqa: E402
from nnn.errors import MissingResourceError  # noqa: E402

TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                       "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 2}}
CAPTIONS = ["a cat sitting on a mat", "two dogs", "a red car parked next to a very tall building",
            "people", "an empty street at night.", "a bowl of fruit", "a man riding a horse"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test here may reach a network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("open_clip_cfg")
    (d / "nnn-tiny-a.json").write_text(json.dumps(TINY))
    other = json.loads(json.dumps(TINY))
    other["embed_dim"] = 24
    (d / "nnn-tiny-b.json").write_text(json.dumps(other))
    return d


def make(config_dir, name="nnn-tiny-a", **kw) -> OpenClipEncoder:
    torch.manual_seed(0)
    return OpenClipEncoder(model_name=name, pretrained=None, model_config_dir=str(config_dir),
                           device="cpu", **kw).load()


@pytest.fixture(scope="module")
def encoder(config_dir):
    return make(config_dir, batch_size=3)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    from PIL import Image

    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for h, w in [(40, 50), (32, 32), (64, 20), (17, 90), (33, 33)]]


def pixels(encoder, images) -> torch.Tensor:
    return torch.stack([encoder.image_transform(im) for im in images])


def test_modules_import_without_their_libraries():
    code = ("import sys, nnn.encoders.open_clip, nnn.encoders.hf, nnn.encoders.lavis, "
            "nnn.encoders.precomputed; "
            "print(sorted(m for m in ('open_clip', 'transformers', 'lavis') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_shapes_dtype_unit_norm(encoder, images):
    img = encoder.encode_image_batch(pixels(encoder, images))
    txt = encoder.encode_texts(CAPTIONS)
    assert img.shape == (len(images), 32) and img.dtype == torch.float32
    assert txt.shape == (len(CAPTIONS), 32) and txt.dtype == np.float32
    np.testing.assert_allclose(img.norm(dim=1).numpy(), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-5)


def test_matches_the_model_directly(encoder, images):
    """The adapter returns open_clip's encode_image / encode_text, L2-normalised."""
    import open_clip

    px = pixels(encoder, images)
    model = encoder._model
    with torch.no_grad():
        ref_img = model.encode_image(px).double()
        ref_txt = model.encode_text(open_clip.get_tokenizer("nnn-tiny-a")(CAPTIONS)).double()
    ref_img /= ref_img.norm(dim=1, keepdim=True)
    ref_txt /= ref_txt.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(encoder.encode_image_batch(px).numpy(), ref_img.numpy(), atol=1e-5)
    np.testing.assert_allclose(encoder.encode_texts(CAPTIONS), ref_txt.numpy(), atol=1e-5)


def test_deterministic_and_batch_size_invariant(encoder, config_dir, images):
    px = pixels(encoder, images)
    whole = encoder.encode_image_batch(px)
    assert torch.equal(whole, encoder.encode_image_batch(px))
    pieces = torch.cat([encoder.encode_image_batch(px[:2]), encoder.encode_image_batch(px[2:])])
    np.testing.assert_allclose(pieces.numpy(), whole.numpy(), atol=1e-5)
    by3 = encoder.encode_texts(CAPTIONS)  # batch_size=3: batches of 3, 3, 1
    by7 = make(config_dir, batch_size=7).encode_texts(CAPTIONS)  # same seed -> same weights
    np.testing.assert_allclose(by3, by7, atol=1e-5)


def test_image_preprocessor_pickles(encoder, images):
    transform = pickle.loads(pickle.dumps(encoder.image_preprocessor()))
    assert torch.equal(transform(images[0]), encoder.image_transform(images[0]))


def unloaded(config_dir, name="nnn-tiny-a", **kw) -> OpenClipEncoder:
    return OpenClipEncoder(model_name=name, model_config_dir=str(config_dir), device="cpu", **kw)


def test_identity_names_what_determines_the_embeddings(encoder, config_dir):
    ident = encoder.cache_identity()
    assert json.loads(json.dumps(ident)) == ident
    assert ident["family"] == "open_clip" and ident["model_name"] == "nnn-tiny-a"
    assert ident["pretrained"] is None and ident["precision"] == "fp32"
    assert ident["model_config"]["embed_dim"] == 32
    assert ident["library"].startswith("open_clip ") and ident["adapter_version"]
    assert make(config_dir, "nnn-tiny-b").cache_identity() != ident
    bf16 = make(config_dir, precision="bf16").cache_identity()
    assert bf16["precision"] == "bf16" and bf16 != ident


def test_identity_needs_no_load_and_survives_it(config_dir, monkeypatch):
    """The identity comes from the configuration: the same before and after load(), so a cache
    entry is found without building the model."""
    enc = unloaded(config_dir)
    before = enc.cache_identity()
    assert not enc.is_loaded
    torch.manual_seed(0)
    assert enc.load().is_loaded and enc.cache_identity() == before
    fp16 = unloaded(config_dir, precision="fp16")
    assert fp16.cache_identity() == before  # fp16 on CPU runs, and is named, as fp32
    with pytest.warns(UserWarning, match="fp16.*CPU"):
        fp16.load()
    assert fp16.cache_identity() == before
    with monkeypatch.context() as m:  # on CUDA fp16 is what runs (nothing is built here)
        m.setattr(torch.cuda, "is_available", lambda: True)
        cuda = OpenClipEncoder(model_name="nnn-tiny-a", model_config_dir=str(config_dir),
                               device="auto", precision="fp16").cache_identity()
    assert cuda["precision"] == "fp16" and cuda != before
    monkeypatch.setattr(OpenClipEncoder, "adapter_version", "2")
    assert unloaded(config_dir).cache_identity() == {**before, "adapter_version": "2"}


def test_identity_of_pretrained_tags_offline_without_weights(monkeypatch):
    monkeypatch.setattr(OpenClipEncoder, "_load", lambda *a: pytest.fail("loaded a model"))
    ident = OpenClipEncoder(model_name="ViT-B-32", pretrained="openai").cache_identity()
    assert ident["pretrained"] == "openai" and ident["model_config"]["embed_dim"] == 512
    for other in (dict(model_name="ViT-B-16", pretrained="openai"),
                  dict(model_name="ViT-B-32", pretrained="laion2b_s34b_b79k"),
                  dict(model_name="ViT-B-32", pretrained="openai", precision="bf16")):
        assert OpenClipEncoder(**other).cache_identity() != ident
    hub = OpenClipEncoder(model_name="hf-hub:org/model").cache_identity()  # no config download
    assert hub["model_name"] == "hf-hub:org/model" and hub["model_config"] is None
    with pytest.raises(ValueError, match="no pretrained tag 'opnai'"):
        OpenClipEncoder(model_name="ViT-B-32", pretrained="opnai").cache_identity()


def test_bf16_on_cpu_is_close_to_fp32(encoder, config_dir, images):
    bf16 = make(config_dir, precision="bf16")
    px = pixels(encoder, images)
    for a, b in [(encoder.encode_image_batch(px), bf16.encode_image_batch(px)),
                 (torch.from_numpy(encoder.encode_texts(CAPTIONS)),
                  torch.from_numpy(bf16.encode_texts(CAPTIONS)))]:
        assert b.dtype == torch.float32
        np.testing.assert_allclose(b.norm(dim=1).numpy(), 1, atol=1e-5)
        assert (a * b).sum(1).min() > 0.98


def test_fp16_on_cpu_falls_back_to_fp32_with_a_warning(config_dir):
    with pytest.warns(UserWarning, match="fp16.*CPU"):
        enc = make(config_dir, precision="fp16")
    assert enc.precision == "fp32" and enc.cache_identity()["precision"] == "fp32"


def test_local_checkpoint_loads_and_is_fingerprinted(encoder, config_dir, tmp_path, images):
    path = tmp_path / "tiny.pt"
    torch.save(encoder._model.state_dict(), path)
    torch.manual_seed(123)  # different random init: equal outputs must come from the file
    local = OpenClipEncoder(model_name="nnn-tiny-a", pretrained=str(path),
                            model_config_dir=str(config_dir), device="cpu").load()
    px = pixels(encoder, images)
    np.testing.assert_allclose(local.encode_image_batch(px).numpy(),
                               encoder.encode_image_batch(px).numpy(), atol=1e-6)
    weights = local.cache_identity()["pretrained"]
    assert weights["path"] == str(path.resolve())
    assert weights["files"]["tiny.pt"][0] == path.stat().st_size


def test_bad_names_and_paths(config_dir, tmp_path):
    with pytest.raises(ValueError, match="no model 'ViT-B-33'.*ViT-B-32"):
        OpenClipEncoder(model_name="ViT-B-33", pretrained="openai", device="cpu").load()
    with pytest.raises(ValueError, match="no pretrained tag 'opnai'.*openai"):
        OpenClipEncoder(model_name="ViT-B-32", pretrained="opnai", device="cpu").load()
    with pytest.raises(MissingResourceError, match="missing.pt"):
        OpenClipEncoder(model_name="nnn-tiny-a", pretrained=str(tmp_path / "missing.pt"),
                        model_config_dir=str(config_dir), device="cpu").load()
    with pytest.raises(RuntimeError, match="load"):
        OpenClipEncoder(model_name="ViT-B-32", pretrained="openai").encode_text_batch(["x"])


def test_missing_weights_offline_fail_fast(tmp_path, caplog):
    enc = OpenClipEncoder(model_name="ViT-B-32", pretrained="openai", device="cpu",
                          cache_dir=str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(MissingResourceError) as info:
        enc.load()
    assert time.perf_counter() - t0 < 10
    # open_clip's own "Failed to download weights" log line is not printed beside ours
    assert not [r for r in caplog.records if "Failed to download" in r.getMessage()]
    msg = str(info.value)
    assert "ViT-B-32" in msg and "openai" in msg and "offline" in msg
    assert "hf download timm/vit_base_patch32_clip_224.openai" in msg and "model.pretrained" in msg


def test_unreachable_hub_fails_fast_without_offline_mode(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=0: False)
    enc = OpenClipEncoder(model_name="ViT-B-32", pretrained="openai", device="cpu",
                          cache_dir=str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(MissingResourceError, match="cannot be reached"):
        enc.load()
    assert time.perf_counter() - t0 < 10


def test_a_missing_encoder_package_is_a_user_error_saying_how_to_install_it():
    from nnn.encoders.torch_model import import_or_explain
    from nnn.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError, match=r"needs the 'no_such_package_x' package.*"
                                                     r"install it with: pip install x") as err:
        import_or_explain("no_such_package_x", "pip install x")
    assert isinstance(err.value, ImportError)


def test_quick_gelu_weights_run_with_quick_gelu(encoder, config_dir, tmp_path, images,
                                                 monkeypatch, recwarn):
    """A tag trained with QuickGELU (openai, metaclip_*, ...) on a GELU config (ViT-B-32,
    ViT-L-14): open_clip 3.x only warns and runs GELU; the adapter builds QuickGELU, as trained,
    and names it in the identity, so embeddings cached from the GELU build are not reused."""
    import open_clip
    from open_clip.pretrained import _PRETRAINED
    from open_clip.transformer import QuickGELU

    path = tmp_path / "trained_with_quick_gelu.pt"
    torch.save(encoder._model.state_dict(), path)
    monkeypatch.setitem(_PRETRAINED, "nnn-tiny-a", {"qg": {"file": str(path), "quick_gelu": True},
                                                    "plain": {"file": str(path)}})
    enc = OpenClipEncoder(model_name="nnn-tiny-a", pretrained="qg",
                          model_config_dir=str(config_dir), device="cpu").load()
    assert not [w for w in recwarn if "QuickGELU mismatch" in str(w.message)]
    assert isinstance(enc._model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    reference = open_clip.create_model("nnn-tiny-a", force_quick_gelu=True)
    reference.load_state_dict(torch.load(path))
    px = pixels(encoder, images)
    with torch.no_grad():
        ref = reference.eval().encode_image(px).double()
    np.testing.assert_allclose(enc.encode_image_batch(px).numpy(),
                               (ref / ref.norm(dim=1, keepdim=True)).numpy(), atol=1e-5)
    plain = OpenClipEncoder(model_name="nnn-tiny-a", pretrained="plain",
                            model_config_dir=str(config_dir), device="cpu")
    assert enc.cache_identity()["model_config"]["quick_gelu"] is True
    assert "quick_gelu" not in plain.cache_identity()["model_config"]
    assert isinstance(plain.load()._model.visual.transformer.resblocks[0].mlp.gelu,
                      torch.nn.GELU)
    # the project's model=clip and model=clip_l14, identified without any weights
    for name in ("ViT-B-32", "ViT-L-14"):
        assert OpenClipEncoder(model_name=name, pretrained="openai").cache_identity()[
            "model_config"]["quick_gelu"] is True
    laion = OpenClipEncoder(model_name="ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert "quick_gelu" not in laion.cache_identity()["model_config"]
