"""PrecomputedEncoder: files in the documented layout, rows matched to a RetrievalSplit by id."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nnn.data.base import RetrievalSplit
from nnn.encoders.precomputed import PrecomputedEncoder
from nnn.errors import MissingResourceError

D = 6


def make_split(name="test") -> RetrievalSplit:
    """3 images; image "b" has 3 captions, "c" 1, "a" 2 (captions not grouped by image)."""
    ids = ["b", "c", "a"]
    captions = ["b one", "c one", "a one", "b two", "a two", "b one"]  # "b one" twice on purpose
    return RetrievalSplit(name, ids, [Path(f"/nowhere/{i}.jpg") for i in ids], captions,
                          np.array([0, 1, 2, 0, 2, 0]))


@pytest.fixture
def files(tmp_path):
    """The split's embeddings written in another order, with extra rows, as .npy files.

    Returns (root, image rows by id, text rows by (id, caption, occurrence)); stored rows are
    not unit-norm, so the expected values are normalised here.
    """
    rng = np.random.default_rng(0)
    file_ids = ["z", "a", "b", "c"]  # "z" is not in the split
    image = rng.standard_normal((4, D)) * 3
    cap_ids = ["c", "b", "z", "a", "b", "a", "b"]
    cap_texts = ["c one", "b one", "z one", "a two", "b two", "a one", "b one"]
    text = rng.standard_normal((7, D)) * 2
    np.save(tmp_path / "test_image.npy", image.astype(np.float32))
    np.save(tmp_path / "test_text.npy", text.astype(np.float16))
    (tmp_path / "test_image_ids.txt").write_text("\n".join(file_ids) + "\n")
    (tmp_path / "test_caption_image_ids.txt").write_text("\n".join(cap_ids) + "\n")
    (tmp_path / "test_captions.txt").write_text("\n".join(cap_texts) + "\n")
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    by_id = {i: unit(image[r]) for r, i in enumerate(file_ids)}
    text16 = text.astype(np.float16).astype(np.float64)
    occurrence: dict = {}
    by_key = {}
    for r, key in enumerate(zip(cap_ids, cap_texts)):
        occurrence[key] = occurrence.get(key, -1) + 1
        by_key[(*key, occurrence[key])] = unit(text16[r])
    return tmp_path, by_id, by_key, text16


def test_rows_follow_the_split_matched_by_id_and_caption_text(files):
    root, by_id, by_key, _ = files
    split = make_split()
    emb = PrecomputedEncoder(root=str(root)).load().embed_split(split)
    assert emb.image.dtype == emb.text.dtype == np.float32
    np.testing.assert_allclose(emb.image, np.stack([by_id[i] for i in split.image_ids]), atol=1e-6)
    wanted = [("b", "b one", 0), ("c", "c one", 0), ("a", "a one", 0), ("b", "b two", 0),
              ("a", "a two", 0), ("b", "b one", 1)]
    np.testing.assert_allclose(emb.text, np.stack([by_key[k] for k in wanted]), atol=1e-6)
    np.testing.assert_array_equal(emb.caption_to_image, split.caption_to_image)


def test_without_caption_texts_the_kth_row_of_an_image_is_its_kth_caption(files):
    root, _, _, text16 = files
    (root / "test_captions.txt").unlink()
    emb = PrecomputedEncoder(root=str(root)).embed_split(make_split())
    # file rows per image, in file order: b -> 1, 4, 6; c -> 0; a -> 3, 5
    rows = [1, 0, 3, 4, 5, 6]  # b#0, c#0, a#0, b#1, a#1, b#2
    ref = text16[rows] / np.linalg.norm(text16[rows], axis=1, keepdims=True)
    np.testing.assert_allclose(emb.text, ref, atol=1e-6)


def test_subset_split_names_read_the_parent_files(files):
    root, by_id, _, _ = files
    sub = make_split().subset_images([2, 0], name="test/reference")
    emb = PrecomputedEncoder(root=str(root)).embed_split(sub)
    np.testing.assert_allclose(emb.image, np.stack([by_id["a"], by_id["b"]]), atol=1e-6)
    assert emb.text.shape == (5, D) and emb.name == "test/reference"


def test_missing_ids_are_listed(files):
    root, _, _, _ = files
    (root / "test_image_ids.txt").write_text("z\na\nq\nc\n")  # "b" is gone
    with pytest.raises(ValueError, match=r"1 image ids of the split are not in .*\['b'\]"):
        PrecomputedEncoder(root=str(root)).embed_split(make_split())


def test_missing_caption_rows_are_listed(files):
    root, _, _, _ = files
    texts = (root / "test_captions.txt").read_text().replace("a two", "a 2")
    (root / "test_captions.txt").write_text(texts)
    with pytest.raises(ValueError, match=r"1 captions .*\('a', 'a two', 0\)"):
        PrecomputedEncoder(root=str(root)).embed_split(make_split())


def test_safetensors_and_pt_files(files):
    from safetensors.numpy import save_file

    root, by_id, _, _ = files
    ref = PrecomputedEncoder(root=str(root)).embed_split(make_split())
    image = np.load(root / "test_image.npy")
    (root / "test_image.npy").unlink()
    save_file({"embeddings": image}, str(root / "test_image.safetensors"))
    torch.save(torch.from_numpy(np.load(root / "test_text.npy")), root / "test_text.pt")
    (root / "test_text.npy").unlink()
    emb = PrecomputedEncoder(root=str(root)).embed_split(make_split())
    np.testing.assert_allclose(emb.image, ref.image, atol=1e-6)
    np.testing.assert_allclose(emb.text, ref.text, atol=1e-6)


def test_pickled_objects_are_refused(files):
    root, _, _, _ = files
    np.save(root / "test_image.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="test_image.npy' holds Python objects"):
        PrecomputedEncoder(root=str(root)).embed_split(make_split())
    (root / "test_image.npy").unlink()
    torch.save({"weights": [Path("/x")]}, root / "test_image.pt")  # a pickled custom object
    with pytest.raises(ValueError, match="test_image.pt' holds objects .* refuses to unpickle"):
        PrecomputedEncoder(root=str(root)).embed_split(make_split())


def test_layout_errors(files, tmp_path_factory):
    root, _, _, _ = files
    with pytest.raises(MissingResourceError, match=r"no train_image.*\(splits present: "
                                                   r"\['test'\]\)"):  # not 'test_caption'
        PrecomputedEncoder(root=str(root)).embed_split(make_split("train"))
    (root / "test_image_ids.txt").write_text("z\na\nb\n")
    with pytest.raises(ValueError, match="has 3 lines but its embedding file has 4 rows"):
        PrecomputedEncoder(root=str(root)).embed_split(make_split())
    with pytest.raises(MissingResourceError, match="does not exist"):
        PrecomputedEncoder(root=str(root / "nope")).load()


def test_identity_and_no_encoding(files):
    root, _, _, _ = files
    enc = PrecomputedEncoder(root=str(root), name="beit3").load()
    ident = enc.cache_identity()
    assert json.loads(json.dumps(ident)) == ident
    assert ident["family"] == "precomputed" and ident["name"] == "beit3"
    assert "test_image.npy" in ident["files"]["files"]
    with pytest.raises(NotImplementedError, match="embed_split"):
        enc.encode_text_batch(["a"])


@pytest.mark.parametrize("kind", ["zero_bytes", "random_bytes", "truncated"])
@pytest.mark.parametrize("suffix", [".npy", ".pt", ".pth", ".safetensors"])
def test_corrupt_files_are_named_on_one_line(files, suffix, kind):
    """The loader is nnn.data.precomputed.load_array (tested there too), with every format."""
    from safetensors.numpy import save_file

    root, _, _, _ = files
    image = np.load(root / "test_image.npy")
    (root / "test_image.npy").unlink()
    path = root / f"test_image{suffix}"
    if suffix == ".npy":
        np.save(path, image)
    elif suffix == ".safetensors":
        save_file({"embeddings": image}, str(path))
    else:
        torch.save(torch.from_numpy(image), path)
    good = path.read_bytes()
    path.write_bytes({"zero_bytes": b"", "random_bytes": np.random.default_rng(0).bytes(500),
                      "truncated": good[:len(good) - 40]}[kind])
    with pytest.raises(ValueError) as err:
        PrecomputedEncoder(root=str(root)).embed_split(make_split())
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert re.search("is empty|is not a|truncated or corrupt", message), message


def test_wrong_shape_or_dtype_names_the_file(files):
    root, _, _, _ = files
    np.save(root / "test_image.npy", np.zeros((4, D), np.int64))
    with pytest.raises(ValueError, match=r"test_image.npy' holds shape \(4, 6\) dtype int64; "
                                         r"expected a 2-D float array"):
        PrecomputedEncoder(root=str(root)).embed_split(make_split())
    (root / "test_caption_image_ids.txt").write_bytes(b"\xff\xfe\x00")
    np.save(root / "test_image.npy", np.ones((4, D), np.float32))
    with pytest.raises(ValueError, match="test_caption_image_ids.txt is not UTF-8 text"):
        PrecomputedEncoder(root=str(root)).embed_split(make_split())
