"""Single-process extraction: correctness against direct encoding, cache, shards and resume,
bad images, and the precomputed-encoder shortcut. Uses a tiny random open_clip model."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_karpathy import CountingEncoder, corrupt, make_karpathy_fixture, tiny_clip_encoder
from PIL import Image

from nnn.cache import EmbeddingCache
from nnn.data.coco import COCO
from nnn.data.flickr30k import Flickr30k
from nnn.data.images import BadImageError
from nnn.embed import embed_dataset_split, embed_split
from nnn.embed.batches import image_loader
from nnn.embed.local import _shard_batches
from nnn.embed.shards import PART_GLOB, ShardDir
from nnn.errors import MissingResourceError

PICTURE = re.compile(r"in picture (\d+),")
OPTS = dict(batch_size=4, shard_size=6, num_workers=0, progress=False)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_clip_encoder(tmp_path_factory.mktemp("openclip_cfg")).load()


@pytest.fixture
def coco(tmp_path):
    make_karpathy_fixture(tmp_path / "data", "coco", n_train=11, n_restval=4, n_val=3, n_test=4,
                          extra_captions={2: 2})
    return COCO(tmp_path / "data")


def _reference(encoder, split):
    """Float64 reference: each image decoded and encoded alone, each caption alone."""
    with torch.no_grad():
        img = np.stack([encoder.encode_image_batch(
            encoder.image_transform(Image.open(p).convert("RGB"))[None]).double().numpy()[0]
            for p in split.image_paths])
        txt = np.concatenate([encoder.encode_text_batch([c]).double().numpy()
                              for c in split.captions])
    return (img / np.linalg.norm(img, axis=1, keepdims=True),
            txt / np.linalg.norm(txt, axis=1, keepdims=True))


def test_shard_batches_never_straddle():
    for n, b, s in [(0, 4, 6), (1, 4, 6), (13, 4, 6), (24, 8, 8), (17, 5, 3)]:
        batches, ends = _shard_batches(n, b, s)
        assert [i for bt in batches for i in bt] == list(range(n))
        assert all(len(bt) <= b and len({i // s for i in bt}) == 1 for bt in batches)
        assert sum(ends) == -(-n // s)
        assert all(e == (bt[-1] % s == s - 1 or bt[-1] == n - 1) for bt, e in zip(batches, ends))


def test_matches_direct_encoding_and_caches(encoder, coco, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    split = coco.split("train")  # 15 images: not a multiple of batch 4 or shard 6
    es = embed_dataset_split(encoder, coco, "train", cache, **OPTS)
    ref_img, ref_txt = _reference(encoder, split)
    assert es.image.shape == (15, 16) and es.text.shape == (split.n_captions, 16)
    np.testing.assert_allclose(es.image, ref_img, atol=1e-5)
    np.testing.assert_allclose(es.text, ref_txt, atol=1e-5)
    assert np.array_equal(es.caption_to_image, split.caption_to_image)
    assert es.meta["n_bad_images"] == 0 and es.name == "train"
    assert not (cache.root / ".work" / cache.last.key).exists()  # work dir removed after store
    counting = CountingEncoder(encoder)
    again = embed_dataset_split(counting, coco, "train", cache, **OPTS)
    assert cache.last.hit and counting.images == 0
    np.testing.assert_array_equal(again.image, es.image)
    # workers, another batch/shard size: same numbers (fresh cache)
    other = embed_dataset_split(encoder, coco, "train", EmbeddingCache(tmp_path / "c2"),
                                batch_size=3, shard_size=5, num_workers=2, progress=False)
    np.testing.assert_allclose(other.image, es.image, atol=1e-6)


def test_resume_after_crash(encoder, coco, tmp_path):
    split = coco.split("train")
    cache = EmbeddingCache(tmp_path / "cache")
    crashing = CountingEncoder(encoder, fail_after=3)  # batches of 4 in shards of 6: shard 1 done
    with pytest.raises(RuntimeError, match="injected crash"):
        embed_dataset_split(crashing, coco, "train", cache, **OPTS)
    ident_key = next((cache.root / ".work").iterdir())
    parts = sorted(ident_key.glob(PART_GLOB))
    assert len(parts) == 1  # shard 0 (rows 0-5) written; batch 3 was lost with the crash
    resumed = CountingEncoder(encoder)
    es = embed_dataset_split(resumed, coco, "train", cache, **OPTS)
    assert resumed.images == split.n_images - 6  # finished shard not recomputed
    fresh = embed_dataset_split(encoder, coco, "train", EmbeddingCache(tmp_path / "fresh"), **OPTS)
    np.testing.assert_array_equal(es.image, fresh.image)
    np.testing.assert_array_equal(es.text, fresh.text)
    np.testing.assert_array_equal(es.caption_to_image, fresh.caption_to_image)
    assert not ident_key.exists()


def test_corrupt_shard_is_recomputed(encoder, coco, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="injected crash"):
        embed_dataset_split(CountingEncoder(encoder, fail_after=3), coco, "train", cache, **OPTS)
    work = next((cache.root / ".work").iterdir())
    (part,) = work.glob(PART_GLOB)
    part.write_bytes(part.read_bytes()[:100])  # a torn file (e.g. disk full)
    resumed = CountingEncoder(encoder)
    es = embed_dataset_split(resumed, coco, "train", cache, **OPTS)
    assert resumed.images == 15
    fresh = embed_dataset_split(encoder, coco, "train", EmbeddingCache(tmp_path / "fresh"), **OPTS)
    np.testing.assert_array_equal(es.image, fresh.image)


def test_bad_image_error_names_it(encoder, coco, tmp_path):
    split = coco.split("test")
    corrupt(split.image_paths[2], "truncate")
    with pytest.raises(BadImageError, match=rf"image {split.image_ids[2]} \(") as err:
        embed_dataset_split(encoder, coco, "test", EmbeddingCache(tmp_path / "c"), **OPTS)
    assert str(split.image_paths[2]) in str(err.value) and "on_bad_image=skip" in str(err.value)
    split.image_paths[3].unlink()  # a missing file is a bad image too
    with pytest.raises(BadImageError, match=split.image_ids[3]):
        embed_dataset_split(encoder, coco, "test", EmbeddingCache(tmp_path / "c"), **OPTS)


def test_bad_image_of_a_reference_dataset_names_its_own_setting(encoder, coco, tmp_path):
    """A bad image of the references' own dataset (dataset@reference.dataset=...) says to set
    reference.dataset.on_bad_image, the node that holds that dataset's policy."""
    ref = COCO(coco.root, config_key="reference.dataset")
    corrupt(ref.split("train").image_paths[0], "truncate")
    with pytest.raises(BadImageError, match=r"set reference\.dataset\.on_bad_image=skip") as err:
        embed_dataset_split(encoder, ref, "train", EmbeddingCache(tmp_path / "c"), **OPTS)
    assert err.value.failures and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["truncate", "garbage"])
def test_bad_image_skip_keeps_index_consistent(encoder, tmp_path, kind):
    records = make_karpathy_fixture(tmp_path / "data", "flickr30k", n_train=9, n_val=2, n_test=3)
    ds = Flickr30k(tmp_path / "data", on_bad_image="skip")
    split = ds.split("train")
    bad_rows = [1, 6]
    for r in bad_rows:
        corrupt(split.image_paths[r], kind)
    es = embed_dataset_split(encoder, ds, "train", EmbeddingCache(tmp_path / "c"), **OPTS)
    keep = [r for r in range(split.n_images) if r not in bad_rows]
    assert es.meta["n_bad_images"] == 2
    assert es.meta["bad_image_ids"] == [split.image_ids[r] for r in bad_rows]
    assert es.image.shape[0] == len(keep) and es.text.shape[0] == 5 * len(keep)
    # same numbers as embedding only the good images, and captions still point at their images
    good = split.subset_images(keep)
    ref_img, ref_txt = _reference(encoder, good)
    np.testing.assert_allclose(es.image, ref_img, atol=1e-5)
    np.testing.assert_allclose(es.text, ref_txt, atol=1e-5)
    stem = {r["imgid"]: r["filename"][:-4] for r in records}
    for caption, row in zip(good.captions, es.caption_to_image):
        assert good.image_ids[row] == stem[int(PICTURE.search(caption).group(1))]


@pytest.mark.filterwarnings("ignore:.*treespec:FutureWarning")  # Lightning vs torch
@pytest.mark.parametrize("path", ["local", "lightning"])
def test_a_shard_of_unreadable_images_only_is_written_and_merged(encoder, tmp_path, path):
    """on_bad_image=skip with a whole shard of bad images (it has rows failed, none embedded):
    its part holds no embedding columns, and the merge still gives the good images."""
    make_karpathy_fixture(tmp_path / "data", "flickr30k", n_train=9, n_val=2, n_test=3)
    ds = Flickr30k(tmp_path / "data", on_bad_image="skip")
    split = ds.split("train")
    for r in range(4):  # the first shard (shard_size 4)
        corrupt(split.image_paths[r], "garbage")
    lightning = dict(accelerator="cpu", devices=1, strategy="auto") if path == "lightning" else None
    es = embed_dataset_split(encoder, ds, "train", EmbeddingCache(tmp_path / "c"),
                             lightning=lightning, **{**OPTS, "batch_size": 4, "shard_size": 4})
    assert es.meta["n_bad_images"] == 4 and es.image.shape[0] == split.n_images - 4
    ref_img, _ = _reference(encoder, split.subset_images(range(4, split.n_images)))
    np.testing.assert_allclose(es.image, ref_img, atol=1e-5)


def test_captions_tokenised_in_workers_give_the_same_rows(encoder):
    """encode_captions with DataLoader workers tokenising (open_clip's Python tokenizer) equals
    the one-process loop, row for row and in order, across uneven batches."""

    from nnn.embed.batches import caption_workers, encode_captions

    captions = [f"a photo of {n} {w}" for n in range(23) for w in ("dogs", "cats on a sofa")]
    assert len(captions) % encoder.batch_size  # a short last batch
    tokenize = pickle.loads(pickle.dumps(encoder.caption_tokenizer()))  # what spawn would send
    assert torch.equal(tokenize(captions[:3]), encoder.caption_tokenizer()(captions[:3]))
    serial = encode_captions(encoder, captions, torch.device("cpu"), progress=False)
    workers = encode_captions(encoder, captions, torch.device("cpu"), progress=False,
                              num_workers=2)
    np.testing.assert_array_equal(workers, serial)
    assert serial.shape == (len(captions), encoder.encode_text_batch(["x"]).shape[1])
    # extraction asks for them only where the model is not on the CPU (whose cores it uses)
    assert caption_workers(4, torch.device("cpu")) == 0
    assert caption_workers(4, torch.device("cuda", 1)) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_captions_tokenised_in_workers_match_the_cpu(encoder, tmp_path):
    """On a GPU, extraction tokenises in workers (caption_workers): the rows equal the GPU's
    in-process ones and the CPU's up to float32 rounding. Run by benchmarks/gpu_check.py."""
    from nnn.embed.batches import caption_workers, encode_captions

    gpu = tiny_clip_encoder(tmp_path / "cfg", device="cuda").load()  # the same seeded weights
    dev = torch.device("cuda")
    captions = [f"a photo of {n} {w}" for n in range(61) for w in ("dogs", "cats on a sofa")]
    workers = encode_captions(gpu, captions, dev, progress=False,
                              num_workers=caption_workers(2, dev))
    np.testing.assert_allclose(workers, encode_captions(gpu, captions, dev, progress=False),
                               atol=1e-6)
    np.testing.assert_allclose(workers, encode_captions(encoder, captions, torch.device("cpu"),
                                                        progress=False), atol=1e-4)


def test_jpeg_draft_is_keyed_and_close(encoder, tmp_path):
    make_karpathy_fixture(tmp_path / "data", "flickr30k", n_train=3, n_val=2, n_test=3,
                          image_size=(160, 120))
    ds = Flickr30k(tmp_path / "data")
    cache = EmbeddingCache(tmp_path / "c")
    full = embed_dataset_split(encoder, ds, "test", cache, **OPTS)
    key_full = cache.last.key
    draft = embed_dataset_split(encoder, ds, "test", cache, jpeg_draft=32, **OPTS)
    assert cache.last.key != key_full and not cache.last.hit
    cos = np.sum(full.image * draft.image, axis=1)
    assert np.all(cos > 0.9) and not np.array_equal(full.image, draft.image)


def test_cache_hit_needs_no_model_and_a_miss_loads_it(encoder, coco, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    stored = embed_dataset_split(encoder, coco, "val", cache, **OPTS)

    def no_weights():
        raise RuntimeError("no weights on this machine")

    offline = tiny_clip_encoder(encoder.model_config_dir)  # same configuration, never loaded
    offline.load = no_weights
    assert offline.cache_identity() == encoder.cache_identity()
    hit = embed_dataset_split(offline, coco, "val", cache, **OPTS)
    assert cache.last.hit and not offline.is_loaded
    np.testing.assert_array_equal(hit.image, stored.image)
    np.testing.assert_array_equal(hit.text, stored.text)
    with pytest.raises(RuntimeError, match="no weights"):  # a miss needs the model
        embed_dataset_split(offline, coco, "test", cache, **OPTS)
    lazy = tiny_clip_encoder(encoder.model_config_dir)
    miss = embed_dataset_split(lazy, coco, "test", cache, **OPTS)
    assert not cache.last.hit and lazy.is_loaded
    ref_img, _ = _reference(encoder, coco.split("test"))
    np.testing.assert_allclose(miss.image, ref_img, atol=1e-5)


def test_loader_workers_get_the_transform_not_the_encoder(encoder, coco):
    """Workers started with spawn/forkserver unpickle the dataset: it must not hold the model."""
    split = coco.split("val")
    loader = image_loader(encoder, split, np.arange(split.n_images), batch_sampler=[[0, 1], [2]],
                          num_workers=0, pin_memory=False, device=torch.device("cpu"),
                          jpeg_draft=None)
    assert loader.dataset.transform is encoder.uint8_image_preprocessor()  # open_clip splits
    model_bytes = sum(t.numel() * t.element_size() for t in encoder._model.state_dict().values())
    assert len(pickle.dumps(loader.dataset)) < model_bytes / 10
    for batching in ({}, {"batch_size": 2, "batch_sampler": [[0, 1]]}):
        with pytest.raises(ValueError, match="exactly one of batch_size and batch_sampler"):
            image_loader(encoder, split, np.arange(2), num_workers=0, pin_memory=False,
                         device=torch.device("cpu"), jpeg_draft=None, **batching)


def test_pipeline_completes_offline_from_the_cache(tmp_path, monkeypatch):
    """model=clip (ViT-B-32, openai weights, not on this machine) with HF_HUB_OFFLINE=1: once
    its embeddings are cached, a run needs neither the weights nor the network."""
    from nnn.encoders.open_clip import OpenClipEncoder
    from nnn.pipeline import run
    from nnn.settings import compose

    make_karpathy_fixture(tmp_path / "data", "coco", n_train=10, n_test=6)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose(["model=clip", "dataset=coco", "logger=none", "reference.fraction=0.5",
                   "method.k=2", "eval.n_boot=20", "extract.num_workers=0",
                   "extract.progress=false",
                   f"paths.data_root={tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}"])
    tiny = tiny_clip_encoder(tmp_path / "tiny_cfg").load()

    def tiny_weights(self, device):  # stands in for the download, under model=clip's identity
        self._model, self._preprocess, self._tokenizer = (tiny._model, tiny._preprocess,
                                                          tiny._tokenizer)

    with monkeypatch.context() as m:
        m.setattr(OpenClipEncoder, "_load", tiny_weights)
        first = run(cfg, output_dir=tmp_path / "first")
    loads = []
    real_load = OpenClipEncoder.load
    monkeypatch.setattr(OpenClipEncoder, "load", lambda self: loads.append(self) or real_load(self))
    again = run(cfg, output_dir=tmp_path / "again")
    assert again["status"] == "completed" and loads == []
    assert again["metrics"] == first["metrics"]
    with pytest.raises(MissingResourceError, match="ViT-B-32"):  # the weights are not here
        OpenClipEncoder(model_name="ViT-B-32", pretrained="openai", device="cpu",
                        cache_dir=str(tmp_path / "hf")).load()


def test_encoder_with_embed_split_is_used(coco, tmp_path):
    class Precomputed:
        def __init__(self):
            self.calls = []

        def embed_split(self, split):
            self.calls.append(split.name)
            return "precomputed"

    enc = Precomputed()
    split = coco.split("val")
    out = embed_split(enc, split, EmbeddingCache(tmp_path / "c"), identity={"x": 1})
    assert out == "precomputed"
    assert enc.calls == ["val"] and not (tmp_path / "c").exists()
    # the same one branch serves extract=ddp: no Trainer, no cache
    out = embed_split(enc, split, EmbeddingCache(tmp_path / "c"), identity={"x": 1},
                      lightning={"accelerator": "cpu", "devices": 2})
    assert out == "precomputed"
    assert enc.calls == ["val", "val"] and not (tmp_path / "c").exists()


def test_import_is_cheap_and_acyclic():
    """``import nnn.embed`` loads neither torch, PIL nor Lightning; and no module of the package
    imports the package itself (counting imports inside functions), so there is no cycle. The
    import graph is the one ``test_architecture`` checks for the whole of ``nnn/``."""
    import subprocess
    import sys

    from test_architecture import graph

    code = ("import sys, nnn.embed; print(sorted(m for m in ('torch', 'PIL', 'lightning') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    imported = {name: {d for d in deps if d.startswith("nnn.embed")}
                for name, deps in graph().items() if name.startswith("nnn.embed")}
    assert imported["nnn.embed"] == {"nnn.embed.local", "nnn.embed.lightning"}
    assert not any("nnn.embed" in deps for deps in imported.values())
    assert "nnn.embed.local" not in imported["nnn.embed.lightning"]
    assert imported["nnn.embed.batches"] == set()


def test_shard_dir_dedups_and_validates(tmp_path):
    shards = ShardDir(tmp_path / "w", n_images=5)
    a = np.eye(3, 4, dtype=np.float32)
    shards.write([0, 1, 2], a, [4], ["OSError: broken"], tag="x")
    b = np.array([[0, 0, 0, 1]], dtype=np.float32)
    shards.write([2, 3], np.concatenate([a[2:], b]), tag="y")  # row 2 again (sampler padding)
    (tmp_path / "w" / "images-z-bad.npz").write_bytes(b"junk")
    rows, emb, failed = shards.assemble()
    assert rows.tolist() == [0, 1, 2, 3] and emb.shape == (4, 4)
    np.testing.assert_array_equal(emb, np.concatenate([a, b]))
    assert failed == {4: "OSError: broken"}
    assert not (tmp_path / "w" / "images-z-bad.npz").exists()
    assert shards.pending("error").tolist() == [4] and shards.pending("skip").tolist() == []
    with pytest.raises(ValueError):
        shards.write([7], b, tag="out")  # fine to write ...
        shards._read(next((tmp_path / "w").glob("images-out-*.npz")), None)  # ... refused on read


def test_shard_dir_caption_parts_merge_and_skip_unusable_ones(tmp_path):
    shards = ShardDir(tmp_path / "w", n_images=2)
    text = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    assert shards.text(7) is None and not shards.has_text(0, 7, 7)
    shards.save_text(text[:3])
    shards.save_text(text[3:5], start=3)
    assert shards.has_text(0, 5, 7) and not shards.has_text(4, 7, 7) and shards.text(7) is None
    w = tmp_path / "w"
    np.save(w / "text-000000005-000000007.npy", np.full((2, 4), np.nan, np.float32))  # NaN
    np.save(w / "text-000000004-000000007.npy", np.ones((2, 4), np.float32))  # 2 rows for 3
    np.save(w / "text-000000005-000000009.npy", np.ones((4, 4), np.float32))  # past the end
    (w / "text-notes.npy").write_bytes(b"junk")  # not a part: ignored
    assert shards.text(7) is None
    np.save(w / "text-000000005-000000007.npy", np.ones((2, 3), np.float32))  # other dimension
    assert shards.text(7) is None
    shards.save_text(text[5:], start=5)  # the same name: replaces the bad part
    np.testing.assert_array_equal(shards.text(7), text)
    shards.save_text(text[1:6], start=1)  # an overlapping part from a rerun: same values
    np.testing.assert_array_equal(shards.text(7), text)
    shards.clear()
    assert not list(w.glob("text-0*.npy")) and shards.text(7) is None


def test_bad_options(encoder, coco, tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    for bad in (dict(batch_size=0), dict(shard_size=-1), dict(num_workers=-1),
                dict(on_bad_image="maybe"), dict(jpeg_draft=0)):
        with pytest.raises(ValueError):
            embed_dataset_split(encoder, coco, "val", cache, **{**OPTS, **bad})


def _compose(overrides):
    """conf/config.yaml with ``overrides``; the hydra node is kept (launcher checks)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        try:
            return compose("config", overrides=overrides, return_hydra_config=True)
        except ConfigCompositionException:  # extract/ not yet in the defaults list
            return compose("config", overrides=[f"+{o}" if o.startswith("extract=") else o
                                                for o in overrides], return_hydra_config=True)


@pytest.mark.parametrize("dataset", ["coco", "flickr30k"])
def test_configs_drive_extraction(encoder, tmp_path, dataset):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    make_karpathy_fixture(tmp_path / "data", dataset, n_train=3, n_val=2, n_test=3)
    cfg = _compose([f"dataset={dataset}", "extract=default", f"paths.data_root={tmp_path / 'data'}",
                    "extract.num_workers=0", "extract.progress=false"])
    ds = instantiate(cfg.dataset)
    assert type(ds) is {"coco": COCO, "flickr30k": Flickr30k}[dataset]
    assert ds.captions_per_image == 5 and ds.on_bad_image == "error" and not ds.download
    options = OmegaConf.to_container(cfg.extract, resolve=True)
    es = embed_dataset_split(encoder, ds, "test", EmbeddingCache(tmp_path / "c"), **options)
    assert es.image.shape == (3, 16)
    ddp = _compose([f"dataset={dataset}", "extract=ddp", "hydra/launcher=submitit_slurm",
                    "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4"])
    assert ddp.extract.lightning.strategy == "ddp" and ddp.extract.batch_size == 256
    assert ddp.hydra.launcher._target_.endswith("SlurmLauncher")
    assert ddp.hydra.launcher.tasks_per_node == 4
