"""Tests of nnn.data.precomputed: file formats, caption indices, safety, errors, real embeddings."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_safetensors_numpy
from safetensors.torch import save_file as save_safetensors_torch

from nnn import metrics
from nnn.data import precomputed
from nnn.data.precomputed import PrecomputedDataset, load_caption_index, load_embedding_set
from nnn.errors import MissingResourceError
from nnn.methods.base import RetrievalMethod

SHARED_DATA = Path(os.environ.get("NNN_SHARED_DATA")
                   or Path(__file__).resolve().parents[2] / "shared/data")
FLICKR_1K = SHARED_DATA / "flickr30k_clip_vitl14_1k"


def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def save_array(path: Path, x: np.ndarray) -> Path:
    """Write one array in the format named by the suffix."""
    if path.suffix == ".npy":
        np.save(path, x)
    elif path.suffix == ".pt":
        torch.save(torch.from_numpy(x), path)
    elif path.suffix == ".safetensors":
        save_safetensors_numpy({"embeddings": x}, str(path))
    elif path.suffix == ".json":
        path.write_text(json.dumps(x.tolist()))
    elif path.suffix == ".txt":
        np.savetxt(path, x, fmt="%d")
    return path


@pytest.fixture
def pairs():
    """7 images x 3 captions each (shuffled index), d = 8."""
    rng = np.random.default_rng(0)
    image, text = unit_rows(rng, 7, 8), unit_rows(rng, 21, 8)
    c2i = rng.permutation(np.repeat(np.arange(7), 3))
    return image, text, c2i


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
def test_embedding_formats(tmp_path, pairs, suffix):
    image, text, c2i = pairs
    s = load_embedding_set(save_array(tmp_path / f"img{suffix}", image),
                           save_array(tmp_path / f"txt{suffix}", text), c2i, name="test")
    np.testing.assert_array_equal(s.image, image)
    np.testing.assert_array_equal(s.text, text)
    np.testing.assert_array_equal(s.caption_to_image, c2i)
    assert s.image.dtype == np.float32 and s.meta["source"] == "precomputed"


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors", ".json", ".txt"])
def test_caption_index_formats(tmp_path, pairs, suffix):
    _, _, c2i = pairs
    path = save_array(tmp_path / f"index{suffix}", c2i.astype(np.int64))
    got = load_caption_index(str(path), n_captions=21, n_images=7)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, c2i)


def test_identity_and_block_indices():
    np.testing.assert_array_equal(load_caption_index("identity", n_captions=4, n_images=4),
                                  np.arange(4))
    np.testing.assert_array_equal(load_caption_index(2, n_captions=6, n_images=3),
                                  [0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="'identity' needs as many captions as images"):
        load_caption_index("identity", n_captions=6, n_images=3)
    with pytest.raises(ValueError, match="needs 5 x 3 = 15 captions, got 6"):
        load_caption_index(5, n_captions=6, n_images=3)
    with pytest.raises(ValueError, match="must be 6 integers"):
        load_caption_index(np.zeros(5, dtype=int), n_captions=6, n_images=3)
    with pytest.raises(ValueError, match="must be 6 integers"):
        load_caption_index(np.zeros(6), n_captions=6, n_images=3)


def test_half_precision_tensors_are_read_as_float32(tmp_path, pairs):
    image, text, c2i = pairs
    save_safetensors_torch({"x": torch.from_numpy(image).to(torch.bfloat16)},
                           str(tmp_path / "img.safetensors"))
    torch.save(torch.from_numpy(text).half(), tmp_path / "txt.pt")
    s = load_embedding_set(tmp_path / "img.safetensors", tmp_path / "txt.pt", c2i, normalize=True)
    assert s.image.dtype == s.text.dtype == np.float32
    np.testing.assert_allclose(s.image, image, atol=2e-2)


def test_nothing_is_unpickled(tmp_path, pairs):
    image, text, _ = pairs
    np.save(tmp_path / "txt.npy", text)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="holds Python objects"):
        load_embedding_set(tmp_path / "objects.npy", tmp_path / "txt.npy")
    torch.save({"emb": image}, tmp_path / "numpy_inside.pt")  # a NumPy array needs unpickling
    with pytest.raises(ValueError, match="refuses to unpickle"):
        load_embedding_set(tmp_path / "numpy_inside.pt", tmp_path / "txt.npy")
    torch.save({"a": torch.zeros(2, 8), "b": torch.zeros(2, 8)}, tmp_path / "two.pt")
    with pytest.raises(ValueError, match="holds 2 tensors"):
        load_embedding_set(tmp_path / "two.pt", tmp_path / "txt.npy")
    torch.save([torch.zeros(2, 8)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a tensor"):
        load_embedding_set(tmp_path / "list.pt", tmp_path / "txt.npy")


def test_missing_and_unsupported_files(tmp_path, pairs):
    image, text, _ = pairs
    np.save(tmp_path / "img.npy", image)
    missing = tmp_path / "nope" / "txt.npy"
    with pytest.raises(MissingResourceError, match="test text embeddings file .*nope/txt.npy.* "
                                                    "provide \\(n_captions, d\\) float embeddings"):
        load_embedding_set(tmp_path / "img.npy", missing)
    (tmp_path / "img.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="unsupported type '.csv'"):
        load_embedding_set(tmp_path / "img.csv", tmp_path / "img.npy")
    with pytest.raises(MissingResourceError, match="caption_index file"):
        load_embedding_set(tmp_path / "img.npy", tmp_path / "img.npy", str(tmp_path / "i.json"))


def test_bad_contents(tmp_path, pairs):
    image, text, c2i = pairs
    img, txt = save_array(tmp_path / "img.npy", image), save_array(tmp_path / "txt.npy", text)
    with pytest.raises(ValueError, match="dimension 5"):
        load_embedding_set(img, save_array(tmp_path / "t5.npy", text[:, :5]), c2i)
    with pytest.raises(ValueError, match="2-D"):
        load_embedding_set(save_array(tmp_path / "flat.npy", image[0]), txt)
    with pytest.raises(ValueError, match="floating-point"):
        load_embedding_set(save_array(tmp_path / "int.npy", np.ones((7, 8), np.int64)), txt, c2i)
    nan = image.copy()
    nan[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        load_embedding_set(save_array(tmp_path / "nan.npy", nan), txt, c2i)
    with pytest.raises(ValueError, match="caption_to_image holds indices"):
        load_embedding_set(img, txt, np.where(c2i == 0, 9, c2i))


def test_normalisation_warns_or_normalises(tmp_path, pairs):
    image, text, c2i = pairs
    img = save_array(tmp_path / "img.npy", 3 * image)
    txt = save_array(tmp_path / "txt.npy", text)
    with pytest.warns(UserWarning, match="not L2-normalised"):
        load_embedding_set(img, txt, c2i)
    s = load_embedding_set(img, txt, c2i, normalize=True)
    np.testing.assert_allclose(s.image, image, atol=1e-6)


def test_dataset_with_training_files(tmp_path, pairs):
    image, text, c2i = pairs
    rng = np.random.default_rng(1)
    paths = {"image_path": save_array(tmp_path / "img.npy", image),
             "text_path": save_array(tmp_path / "txt.npy", text),
             "caption_index": str(save_array(tmp_path / "c2i.json", c2i)),
             "train_image_path": save_array(tmp_path / "timg.pt", unit_rows(rng, 4, 8)),
             "train_text_path": save_array(tmp_path / "ttxt.pt", unit_rows(rng, 8, 8)),
             "train_caption_index": 2}
    s = PrecomputedDataset(**paths).splits()
    assert set(s) == {"train", "test"}
    assert (s["test"].image.shape, s["train"].image.shape) == ((7, 8), (4, 8))
    np.testing.assert_array_equal(s["train"].caption_to_image, np.arange(8) // 2)
    with pytest.raises(ValueError, match="train_caption_index must be given"):
        PrecomputedDataset(**{**paths, "train_caption_index": None})
    with pytest.raises(ValueError, match="both train_image_path and train_text_path"):
        PrecomputedDataset(**{**paths, "train_text_path": None})
    bad_dim = save_array(tmp_path / "timg5.npy", unit_rows(rng, 4, 5))
    with pytest.raises(ValueError, match="dimension 5"):
        PrecomputedDataset(**{**paths, "train_image_path": bad_dim}).splits()


def test_dataset_splits_off_a_training_part(tmp_path, pairs):
    image, text, c2i = pairs
    kw = {"image_path": save_array(tmp_path / "img.npy", image),
          "text_path": save_array(tmp_path / "txt.npy", text), "caption_index": c2i,
          "train_fraction": 0.4, "seed": 3}
    s = PrecomputedDataset(**kw).splits()
    train, test = s["train"], s["test"]
    assert (len(train.image), len(test.image)) == (3, 4)
    assert (len(train.text), len(test.text)) == (9, 12)  # captions follow their images
    rows = {name: [int(np.flatnonzero((image == x).all(1))[0]) for x in part.image]
            for name, part in s.items()}
    assert sorted(rows["train"] + rows["test"]) == list(range(7))
    for part in (train, test):  # every caption still points at its own image
        for j, i in enumerate(part.caption_to_image):
            orig = int(np.flatnonzero((text == part.text[j]).all(1))[0])
            np.testing.assert_array_equal(image[c2i[orig]], part.image[i])
    again = PrecomputedDataset(**kw)
    np.testing.assert_array_equal(again.split("train").image, train.image)
    np.testing.assert_array_equal(again.split("test").text, test.text)
    with pytest.raises(ValueError, match="unknown split 'val'"):
        again.split("val")
    with pytest.raises(ValueError, match="train_fraction"):
        PrecomputedDataset(**{**kw, "train_fraction": 1.0}).splits()


def test_dataset_reads_its_files_once(tmp_path, pairs, monkeypatch):
    image, text, c2i = pairs
    data = PrecomputedDataset(image_path=save_array(tmp_path / "img.npy", image),
                              text_path=save_array(tmp_path / "txt.npy", text),
                              caption_index=str(save_array(tmp_path / "c2i.npy", c2i)),
                              train_fraction=0.4, seed=3)
    read = []
    real = precomputed.load_array
    monkeypatch.setattr(precomputed, "load_array", lambda path, *a, **kw: read.append(
        Path(path).name) or real(path, *a, **kw))
    train, test = data.split("train"), data.split("test")
    assert sorted(read) == ["c2i.npy", "img.npy", "txt.npy"]
    for f in ("img.npy", "txt.npy", "c2i.npy"):
        (tmp_path / f).unlink()
    assert data.split("train") is train and data.splits()["test"] is test
    assert len(read) == 3 and "_splits" not in repr(data)
    np.testing.assert_array_equal(PrecomputedDataset(
        image_path=save_array(tmp_path / "img.npy", image),
        text_path=save_array(tmp_path / "txt.npy", text), caption_index=c2i, train_fraction=0.4,
        seed=3).split("test").image, test.image)


class BiasedDot(RetrievalMethod):
    """s(q, r) - bias[r]; bias = 0 is the uncorrected baseline."""

    def __init__(self, bias=0.0):
        super().__init__()
        self.bias = bias

    def _score_block(self, q):
        return q @ self._gallery_t.T - torch.as_tensor(self.bias, dtype=torch.float32)


@pytest.mark.skipif(not FLICKR_1K.is_dir(), reason=f"real embeddings not found at {FLICKR_1K}")
def test_real_clip_embeddings_example():
    full = load_embedding_set(FLICKR_1K / "image_embeddings.npy",
                              FLICKR_1K / "text_embeddings.npy", "identity")
    assert full.image.shape == full.text.shape == (1000, 768)
    c2i = full.caption_to_image
    t2i = metrics.t2i_ranks(BiasedDot().fit(full.image), full.text, c2i)
    i2t = metrics.i2t_ranks(BiasedDot().fit(full.text), full.image, c2i)
    assert metrics.recall_at_k(t2i, ks=(1,))["R@1"] == pytest.approx(71.7)  # data README
    assert metrics.recall_at_k(i2t, ks=(1,))["R@1"] == pytest.approx(74.7)

    s = PrecomputedDataset(image_path=FLICKR_1K / "image_embeddings.npy",
                           text_path=FLICKR_1K / "text_embeddings.npy",
                           caption_index="identity", train_fraction=0.5, seed=0).splits()
    train, test = s["train"], s["test"]
    assert len(train.image) == len(test.image) == 500
    assert not (train.image @ test.image.T > 1 - 1e-6).any()  # disjoint images

    def r1(bias, t2i_direction):
        gallery, queries = (test.image, test.text) if t2i_direction else (test.text, test.image)
        rank_fn = metrics.t2i_ranks if t2i_direction else metrics.i2t_ranks
        ranks = rank_fn(BiasedDot(bias).fit(gallery), queries, test.caption_to_image)
        return metrics.recall_at_k(ranks, ks=(1,))["R@1"]

    def nnn_bias(gallery, refs, k=16, alpha=0.75):  # Eq. 1, float64
        sims = gallery.astype(np.float64) @ refs.astype(np.float64).T
        return alpha * np.partition(sims, -k, axis=1)[:, -k:].mean(axis=1)

    assert r1(nnn_bias(test.image, train.text), True) >= r1(0.0, True) + 3
    assert r1(nnn_bias(test.text, train.image), False) > r1(0.0, False)


CORRUPT_KINDS = {"zero_bytes": "is empty \\(0 bytes\\)",
                 "random_bytes": "is not a|truncated or corrupt",
                 "truncated": "truncated or corrupt"}


@pytest.mark.parametrize("kind", list(CORRUPT_KINDS))
@pytest.mark.parametrize("suffix", [".npy", ".pt", ".pth", ".safetensors"])
def test_corrupt_files_raise_one_line_naming_the_file(tmp_path, pairs, suffix, kind):
    image, text, c2i = pairs
    txt = save_array(tmp_path / "txt.npy", text)
    path = tmp_path / f"img{suffix}"
    if suffix == ".pth":
        torch.save(torch.from_numpy(image), path)
    else:
        save_array(path, image)
    good = path.read_bytes()
    path.write_bytes({"zero_bytes": b"", "random_bytes": np.random.default_rng(0).bytes(500),
                      "truncated": good[:len(good) - 40]}[kind])
    with pytest.raises(ValueError, match=CORRUPT_KINDS[kind]) as err:
        load_embedding_set(path, txt, c2i)
    message = str(err.value)
    assert message.startswith(f"test image embeddings file {str(path)!r}") and "\n" not in message


@pytest.mark.parametrize("suffix", [".json", ".txt", ".npy"])
def test_corrupt_caption_index_names_the_file(tmp_path, pairs, suffix):
    image, text, _ = pairs
    img, txt = save_array(tmp_path / "img.npy", image), save_array(tmp_path / "txt.npy", text)
    index = tmp_path / f"index{suffix}"
    index.write_bytes(b"\xff\xfe" + np.random.default_rng(0).bytes(50))
    with pytest.raises(ValueError, match="test caption_index file .*index") as err:
        load_embedding_set(img, txt, str(index))
    assert "\n" not in str(err.value)


def test_pth_and_dict_files_are_read_by_both_loaders(tmp_path, pairs):
    from nnn.encoders import precomputed as encoder_module

    image, _, _ = pairs
    torch.save({"emb": torch.from_numpy(image)}, tmp_path / "img.pth")
    np.testing.assert_array_equal(precomputed.load_array(tmp_path / "img.pth"), image)
    assert encoder_module.load_array is precomputed.load_array  # one loader, not two
