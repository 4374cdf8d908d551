"""User mistakes and damaged files at the data layer (nnn.data): each is one clear line of a user
error (ValueError / OSError / MissingResourceError), nothing half-written is left, and the seeded
splits never share an image. Offline: downloads go through fake openers."""

from __future__ import annotations

import http.client
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_karpathy import make_karpathy_fixture  # noqa: E402
from fixtures_visogender import write_visogender  # noqa: E402

from nnn.data.coco import COCO  # noqa: E402
from nnn.data.download import (CHECKSUMS_FILE, RemoteFile, extract_dir,  # noqa: E402
                               extract_member, fetch)
from nnn.data.images import BadImageError  # noqa: E402
from nnn.data.precomputed import PrecomputedDataset, load_embedding_set  # noqa: E402
from nnn.data.rows import open_rows  # noqa: E402
from nnn.data.splits import reference_and_tuning_sets, train_test_split  # noqa: E402
from nnn.data.synthetic import SyntheticDataset  # noqa: E402
from nnn.data.visogender import load_visogender  # noqa: E402


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- bad images --------------------------------------------------------------------------------
def test_bad_image_error_is_a_one_line_user_error():
    failures = [(str(i), f"/data/img{i}.jpg", "OSError: image file is\ntruncated")
                for i in range(13)]
    err = BadImageError(failures, "test")
    message = str(err)
    assert isinstance(err, OSError)  # run.py prints user errors (OSError among them) as one line
    assert "\n" not in message and message.startswith("13 image(s) in split 'test'")
    assert "image 9 (/data/img9.jpg): OSError: image file is truncated" in message
    assert "image 10 " not in message and "... and 3 more" in message
    assert "on_bad_image=skip" in message and err.failures == failures


# -- downloads ---------------------------------------------------------------------------------
class _Response:
    def __init__(self, data: bytes, length: int | None, fail: Exception | None = None):
        self.body, self.fail, self.status = io.BytesIO(data), fail, 200
        self.headers = {} if length is None else {"Content-Length": str(length)}

    def read(self, n):
        chunk = self.body.read(n)
        if not chunk and self.fail is not None:
            raise self.fail
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_incomplete_chunked_download_is_one_line_and_kept(tmp_path):
    data = bytes(range(256)) * 40
    dead = http.client.IncompleteRead(b"", 999)  # a chunked response cut off: not an OSError
    remote = RemoteFile("https://example.invalid/a.zip", "a.zip")
    with pytest.raises(OSError, match=r"could not download .*999 more expected.*; the 4000 "
                                      "bytes received are kept"):
        fetch(remote, tmp_path, opener=lambda r: _Response(data[:4000], None, dead),
              progress=False)
    assert (tmp_path / ".a.zip.part").stat().st_size == 4000
    assert not (tmp_path / "a.zip").exists() and not (tmp_path / CHECKSUMS_FILE).exists()


def test_short_download_with_a_published_size_is_kept_not_deleted(tmp_path):
    # no Content-Length (HTTP/1.0 close-delimited): the published size tells the file is short
    data = b"z" * 5000
    remote = RemoteFile("https://example.invalid/b.zip", "b.zip", size=len(data))
    with pytest.raises(OSError, match="closed after 1234 of 5000 bytes; the 1234 bytes"):
        fetch(remote, tmp_path, opener=lambda r: _Response(data[:1234], None), progress=False)
    assert (tmp_path / ".b.zip.part").read_bytes() == data[:1234]


def _zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _damage_first_member(path: Path) -> None:
    """Flip a byte in the middle of the first member's stored or deflated data."""
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[0]
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncated", "bad_crc", "bad_deflate"])
def test_damaged_archive_is_one_line_and_leaves_nothing(tmp_path, damage):
    payload = np.random.default_rng(0).bytes(20_000)
    compression = zipfile.ZIP_DEFLATED if damage == "bad_deflate" else zipfile.ZIP_STORED
    archive = _zip(tmp_path / "a.zip", {"top/dataset_coco.json": payload, "top/x.jpg": payload},
                   compression)
    if damage == "truncated":
        archive.write_bytes(archive.read_bytes()[:15_000])
    else:
        _damage_first_member(archive)
    out = tmp_path / "out"
    out.mkdir()
    for unpack in (lambda: extract_member(archive, "dataset_coco.json", out / "dataset_coco.json"),
                   lambda: extract_dir(archive, "top", out / "top", progress=False)):
        with pytest.raises(ValueError) as err:
            unpack()
        message = str(err.value)
        assert "\n" not in message and str(archive) in message and "truncated or corrupt" in message
        assert "delete it" in message
        assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".lock")) == []


# -- Karpathy annotation files -----------------------------------------------------------------
def _edit_records(root: Path, edit) -> None:
    path = root / "coco" / "dataset_coco.json"
    data = json.loads(path.read_text())
    edit(data["images"][0])
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, match", [
    (lambda r: r.pop("filepath"), "lacks 'filepath' \\(a str\\)"),  # e.g. Flickr30k's file
    (lambda r: r.update(sentences="A dog."), "lacks 'sentences' \\(a list\\)"),
    (lambda r: r.update(sentences=None), "lacks 'sentences' \\(a list\\)"),
    (lambda r: r.update(split=["test"]), "lacks 'split' \\(a str\\)"),
])
def test_malformed_karpathy_record_is_named(tmp_path, edit, match):
    make_karpathy_fixture(tmp_path, "coco", n_train=2, n_restval=1, n_val=1, n_test=2)
    _edit_records(tmp_path, edit)
    with pytest.raises(ValueError, match=f"dataset_coco.json: image record 0 {match}"):
        COCO(tmp_path).split("train")


def test_karpathy_file_in_another_encoding_is_named(tmp_path):
    make_karpathy_fixture(tmp_path, "coco", n_train=2, n_restval=1, n_val=1, n_test=2)
    path = tmp_path / "coco" / "dataset_coco.json"
    path.write_bytes(path.read_text().encode("utf-16"))
    with pytest.raises(ValueError, match=f"{path} is not valid JSON .*codec"):
        COCO(tmp_path).split("test")


# -- row ranges of big files -------------------------------------------------------------------
@pytest.mark.parametrize("suffix, dtype", [(".npy", torch.float32), (".npy", torch.float16),
                                           (".safetensors", torch.float32),
                                           (".safetensors", torch.bfloat16)])
def test_row_ranges_at_odd_boundaries_match_the_array(tmp_path, suffix, dtype):
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1037, 13))).to(dtype)
    path = tmp_path / f"g{suffix}"
    if suffix == ".npy":
        np.save(path, x.numpy())
    else:
        save_file({"g": x}, str(path))
    want = x.float().numpy()
    rows = open_rows(path)
    assert rows.shape == (1037, 13)
    for start, stop in [(0, 1037), (0, 1), (1, 2), (511, 1024), (1036, 1037), (7, 7)]:
        got = rows.rows(start, stop)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want[start:stop])
    blocks = list(rows.chunks(3, 1037, 100))
    assert [s for s, _ in blocks] == list(range(3, 1037, 100))
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), want[3:])


def test_non_float_safetensors_rows_are_refused(tmp_path):
    save_file({"g": torch.ones(5, 3, dtype=torch.bool)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match="holds shape \\(5, 3\\) of 'bool' values; expected a "
                                         "non-empty \\(n, d\\) float array"):
        open_rows(tmp_path / "b.safetensors")


# -- precomputed files -------------------------------------------------------------------------
def test_training_files_that_are_the_test_files_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "img.npy", _unit(rng, 6, 4))
    np.save(tmp_path / "txt.npy", _unit(rng, 6, 4))
    np.save(tmp_path / "txt_train.npy", _unit(rng, 6, 4))
    paths = {"image_path": tmp_path / "img.npy", "text_path": tmp_path / "txt.npy"}
    with pytest.raises(ValueError, match="train_image_path=.* is the evaluation file image_path"):
        PrecomputedDataset(**paths, train_image_path=str(tmp_path / "." / "img.npy"),
                           train_text_path=tmp_path / "txt_train.npy")
    with pytest.raises(ValueError, match="train_text_path=.* is the evaluation file text_path"):
        PrecomputedDataset(**paths, train_image_path=tmp_path / "img.npy.bak",
                           train_text_path=tmp_path / "txt.npy")


def test_unsigned_caption_index_out_of_range_is_not_wrapped(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "img.npy", _unit(rng, 3, 4))
    np.save(tmp_path / "txt.npy", _unit(rng, 3, 4))
    np.save(tmp_path / "idx.npy", np.array([0, 1, 2**63 + 5], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"caption_index: caption_to_image holds indices in "
                                         rf"\[0, {2**63 + 5}\] but there are 3 images"):
        load_embedding_set(tmp_path / "img.npy", tmp_path / "txt.npy", tmp_path / "idx.npy")


def test_a_mistyped_caption_index_says_what_it_can_be(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "img.npy", _unit(rng, 3, 4))
    np.save(tmp_path / "txt.npy", _unit(rng, 3, 4))
    with pytest.raises(Exception, match="'identiy' does not exist.*or use 'identity'.*an int N"):
        load_embedding_set(tmp_path / "img.npy", tmp_path / "txt.npy", "identiy")


@pytest.mark.parametrize("seed", [-1, "0", 1.5, True])
def test_bad_seeds_are_one_clear_value_error(tmp_path, seed):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "img.npy", _unit(rng, 6, 4))
    np.save(tmp_path / "txt.npy", _unit(rng, 6, 4))
    data = PrecomputedDataset(image_path=tmp_path / "img.npy", text_path=tmp_path / "txt.npy",
                              seed=seed)
    for call in (data.splits, lambda: train_test_split(10, train_fraction=0.5, seed=seed),
                 lambda: SyntheticDataset(n_train=4, n_val=0, n_test=4, dim=8, latent_dim=4,
                                          seed=seed)):
        with pytest.raises(ValueError, match=f"seed must be an integer >= 0, got {seed!r}"):
            call()


# -- seeded disjoint splits --------------------------------------------------------------------
@pytest.mark.parametrize("n_images, seed", [(7, 0), (50, 3), (101, 11)])
def test_references_tuning_and_test_never_share_an_image(tmp_path, n_images, seed):
    # each image embedding is unique, so rows can be traced back to the file's images
    rng = np.random.default_rng(seed)
    image = _unit(rng, n_images, 6)
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "txt.npy", _unit(rng, 3 * n_images, 6))
    splits = PrecomputedDataset(image_path=tmp_path / "img.npy", text_path=tmp_path / "txt.npy",
                                caption_index=3, train_fraction=0.6, seed=seed).splits()
    train, test = splits["train"], splits["test"]
    n_tuning = len(test.image) // 2
    reference, tuning = reference_and_tuning_sets(train, fraction=0.3, tuning_size=n_tuning,
                                                  seed=seed)

    def rows_of(part):
        return {int(np.flatnonzero((image == row).all(axis=1))[0]) for row in part.image}

    parts = [rows_of(p) for p in (test, reference, tuning)]
    assert [len(p) for p in parts] == [n_images - round(0.6 * n_images),
                                       round(0.3 * len(train.image)), n_tuning]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    for part in (test, reference, tuning):  # every image keeps its own three captions
        assert np.bincount(part.caption_to_image).tolist() == [3] * len(part.image)


# -- VisoGender --------------------------------------------------------------------------------
def test_visogender_cut_row_is_named(tmp_path):
    write_visogender(tmp_path, images=False)
    (meta,) = tmp_path.glob("*.tsv")
    lines = meta.read_text(encoding="utf-8").splitlines()
    lines[3] = "\t".join(lines[3].split("\t")[:3])  # IDX, sector, specialisation only
    meta.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"row OO_3: the 'Occupation' or 'Object' column is "
                                         "empty; the file is cut or edited"):
        load_visogender(tmp_path, missing_images="ignore")


def test_row_chunks_refuse_a_non_positive_size(tmp_path):
    path = tmp_path / "g.npy"
    np.save(path, np.ones((5, 3), np.float32))
    with pytest.raises(ValueError, match="chunk_rows"):
        list(open_rows(path).chunks(0, 5, 0))


def test_empty_text_caption_index_is_one_error_without_numpys_warning(tmp_path, recwarn):
    from nnn.data.precomputed import load_caption_index

    (tmp_path / "index.txt").write_text("")
    with pytest.raises(ValueError, match="must be 3 integers"):
        load_caption_index(str(tmp_path / "index.txt"), n_captions=3, n_images=3)
    assert not [w for w in recwarn if "no data" in str(w.message)]


def test_another_reference_dataset_with_the_evaluation_images_is_refused(tmp_path):
    """reference.dataset under another name but at the same files: references drawn from the
    evaluation split (reference.source=test) would be test items, and those drawn from the
    same training split could be tuning items; both are refused before anything is embedded.
    Other files (a real second dataset) pass."""
    from nnn.data.assemble import draw_sets, load_splits
    from nnn.data.flickr30k import Flickr30k

    make_karpathy_fixture(tmp_path / "a", "flickr30k", n_train=12, n_val=2, n_test=3)
    make_karpathy_fixture(tmp_path / "b", "flickr30k", n_train=12, n_val=2, n_test=3)
    data, same, other = (Flickr30k(tmp_path / "a"), Flickr30k(tmp_path / "a"),
                         Flickr30k(tmp_path / "b"))
    with pytest.raises(ValueError, match=r"reference.dataset's 'test' split and the evaluation "
                                         r"split 'test' share 3 image files .* test items"):
        load_splits(data, eval_split="test", source="test", ref_dataset=same)
    splits = load_splits(data, eval_split="test", source="train", ref_dataset=same)
    never = lambda parts: pytest.fail("embedded before the check")  # noqa: E731
    with pytest.raises(ValueError, match="share .* image files .* tuning items"):
        draw_sets(splits, fraction=0.5, seed=0, n_tuning=3, encode=never)
    def names(parts):  # what would be embedded: {key: "split:images"}
        return {key: f"{name}:{len(rows) if rows is not None else 'all'}"
                for key, (_, name, rows, _) in parts.items()}

    ok = load_splits(data, eval_split="test", source="train", ref_dataset=other)
    assert draw_sets(ok, fraction=0.5, seed=0, n_tuning=3, encode=names) == \
        ("test:all", "train:6", "train:3")
    # another dataset's test split as the references: fine, but a tuning part would then come
    # from the evaluation dataset's split of that name, the evaluation split itself
    ok = load_splits(data, eval_split="test", source="test", ref_dataset=other)
    assert draw_sets(ok, fraction=1.0, seed=0, n_tuning=0, encode=names) == \
        ("test:all", "test:3", None)
    with pytest.raises(ValueError, match="tuning part .* is the evaluation split .* test items"):
        draw_sets(ok, fraction=0.5, seed=0, n_tuning=1, encode=never)
