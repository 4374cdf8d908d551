"""COCO / Flickr30k Karpathy loaders, split subsets, cache identity, and checksummed downloads."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fixtures_karpathy import make_karpathy_fixture

import nnn.data.coco as coco_mod
import nnn.data.flickr30k as flickr_mod
from nnn.data.coco import COCO
from nnn.data.download import (CHECKSUMS_FILE, ChecksumError, RemoteFile, extract_dir,
                               extract_member, fetch)
from nnn.data.flickr30k import Flickr30k
from nnn.errors import MissingResourceError

PICTURE = re.compile(r"in picture (\d+),")


def _check_index(split, records, image_id_of):
    """Every caption names (in its text) the record of the image it points at."""
    by_imgid = {r["imgid"]: r for r in records}
    for caption, row in zip(split.captions, split.caption_to_image):
        rec = by_imgid[int(PICTURE.search(caption).group(1))]
        assert split.image_ids[row] == image_id_of(rec)


@pytest.fixture
def coco_root(tmp_path):
    records = make_karpathy_fixture(tmp_path, "coco", n_train=9, n_restval=4, n_val=5, n_test=6,
                                    extra_captions={0: 2, 3: 1})
    return tmp_path, records


def test_coco_split_sizes_and_index(coco_root):
    root, records = coco_root
    ds = COCO(root)
    sizes = {s: ds.split(s) for s in ("train", "val", "test")}
    assert [sizes[s].n_images for s in ("train", "val", "test")] == [13, 5, 6]  # train+restval
    for name, split in sizes.items():
        assert split.n_captions == 5 * split.n_images
        assert np.array_equal(np.bincount(split.caption_to_image), np.full(split.n_images, 5))
        _check_index(split, records, lambda r: str(r["cocoid"]))
        parts = {"train": {"train", "restval"}}.get(name, {name})
        expect = [r for r in records if r["split"] in parts]  # file order kept
        assert split.image_ids == [str(r["cocoid"]) for r in expect]
        for rec, path in zip(expect, split.image_paths):
            assert path == root / "coco" / "images" / rec["filepath"] / rec["filename"]
            assert path.is_file()
    # restval images live in val2014, as in the real data
    train_paths = {p.parent.name for p in sizes["train"].image_paths}
    assert train_paths == {"train2014", "val2014"}


def test_captions_per_image(coco_root):
    root, records = coco_root
    extra = [r for r in records if len(r["sentences"]) > 5]
    assert {len(r["sentences"]) for r in extra} == {6, 7}
    by_split = {}
    for cpi in (5, None, 2):
        ds = COCO(root, captions_per_image=cpi)
        splits = [ds.split(s) for s in ("train", "val", "test")]
        by_split[cpi] = splits
        total = sum(s.n_captions for s in splits)
        expected = sum(len(r["sentences"][:cpi]) for r in records)
        assert total == expected
        for split in splits:
            _check_index(split, records, lambda r: str(r["cocoid"]))
    # the first sentences are kept, in order
    rec = extra[0]
    split = next(s for s in by_split[None] if str(rec["cocoid"]) in s.image_ids)
    row = split.image_ids.index(str(rec["cocoid"]))
    assert [c for c, r in zip(split.captions, split.caption_to_image) if r == row] == \
        [s["raw"] for s in rec["sentences"]]
    with pytest.raises(ValueError, match="captions_per_image"):
        COCO(root, captions_per_image=0)


def test_flickr_split_sizes_and_ids(tmp_path):
    records = make_karpathy_fixture(tmp_path, "flickr30k", n_train=7, n_val=3, n_test=4)
    ds = Flickr30k(tmp_path)
    for name, n in (("train", 7), ("val", 3), ("test", 4)):
        split = ds.split(name)
        assert split.n_images == n and split.n_captions == 5 * n
        _check_index(split, records, lambda r: Path(r["filename"]).stem)
        assert all(p.parent == tmp_path / "flickr30k" / "images" for p in split.image_paths)
    with pytest.raises(ValueError, match="restval"):
        ds.split("restval")


@pytest.mark.parametrize("bad", ["", "   \t"])
def test_empty_caption_lists_ids(coco_root, bad):
    root, records = coco_root
    path = root / "coco" / "dataset_coco.json"
    data = json.loads(path.read_text())
    victims = [r for r in data["images"] if r["split"] == "test"][:2]
    for rec in victims:
        rec["sentences"][1]["raw"] = bad
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="empty or whitespace-only") as err:
        COCO(root).split("test")
    for rec in victims:
        assert f"image {rec['cocoid']} sentence {rec['sentences'][1]['sentid']}" in str(err.value)
    COCO(root).split("val")  # other splits are unaffected


def test_missing_files_raise_missing_resource(tmp_path, coco_root):
    with pytest.raises(MissingResourceError, match=re.escape(str(tmp_path / "nowhere"))) as err:
        COCO(tmp_path / "nowhere").split("test")
    assert "dataset.download=true" in str(err.value) and "docs/data.md" in str(err.value)
    assert "dataset.root=" in str(err.value)
    root, _ = coco_root
    shutil.rmtree(root / "coco" / "images" / "train2014")
    ds = COCO(root)
    ds.split("test")  # needs val2014 only
    with pytest.raises(MissingResourceError, match="train2014"):
        ds.split("train")
    with pytest.raises(MissingResourceError, match="dataset_flickr30k.json"):
        Flickr30k(root).split("test")


def test_bad_annotation_file(tmp_path):
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "dataset_coco.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        COCO(tmp_path).split("test")
    (tmp_path / "coco" / "dataset_coco.json").write_text(json.dumps({"images": [{"x": 1}]}))
    with pytest.raises(ValueError, match="lacks"):
        COCO(tmp_path).split("test")


def test_subset_images_and_identity(coco_root, tmp_path):
    root, records = coco_root
    ds = COCO(root)
    train = ds.split("train")
    rows = np.array([7, 2, 11])
    sub = train.subset_images(rows, name="train/ref")
    assert sub.image_ids == [train.image_ids[r] for r in rows]
    assert sub.n_captions == 15
    _check_index(sub, records, lambda r: str(r["cocoid"]))
    for j, c in enumerate(sub.captions):
        assert train.caption_to_image[train.captions.index(c)] == rows[sub.caption_to_image[j]]
    with pytest.raises(ValueError, match="repeated"):
        train.subset_images([1, 1])
    with pytest.raises(ValueError, match="13 images"):
        train.subset_images([13])

    ident = ds.identity(train)
    assert ident == COCO(root).identity(COCO(root).split("train"))  # deterministic
    assert ident["dataset"] == "coco" and ident["captions_per_image"] == 5
    assert ds.identity(sub) != ident
    assert COCO(root, captions_per_image=None).identity(
        COCO(root, captions_per_image=None).split("train")) != ident
    assert COCO(root, on_bad_image="skip").identity(train) != ident
    json.dumps(ident)  # JSON-able
    moved = tmp_path / "moved"
    shutil.copytree(root / "coco", moved / "coco")
    assert COCO(moved).identity(COCO(moved).split("train")) == ident  # the root is not in the key


def test_on_bad_image_checked(tmp_path):
    with pytest.raises(ValueError, match="on_bad_image"):
        COCO(tmp_path, on_bad_image="ignore")


# -- downloads ---------------------------------------------------------------------------------
def _digests(path: Path) -> dict:
    data = path.read_bytes()
    return {"size": len(data), "md5": hashlib.md5(data).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest()}


def _files(folder: Path) -> list[str]:
    """The names in ``folder`` except the per-file locks of fetch / extract_dir."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


@pytest.fixture
def payload(tmp_path):
    src = tmp_path / "src" / "payload.bin"
    src.parent.mkdir()
    src.write_bytes(np.random.default_rng(0).bytes(3_000_000))
    return src


def test_fetch_verifies_and_is_atomic(tmp_path, payload):
    d = _digests(payload)
    dest = tmp_path / "dl"
    remote = RemoteFile(payload.as_uri(), "payload.bin", size=d["size"], md5=d["md5"])
    path = fetch(remote, dest, progress=False)
    assert path.read_bytes() == payload.read_bytes()
    assert fetch(remote, dest, progress=False) == path  # present: verified, not fetched again
    sha_remote = RemoteFile(payload.as_uri(), "by_sha.bin", sha256=d["sha256"])
    assert fetch(sha_remote, dest, progress=False).read_bytes() == payload.read_bytes()


@pytest.mark.parametrize("field", ["md5", "sha256", "size"])
def test_fetch_mismatch_leaves_nothing(tmp_path, payload, field):
    d = _digests(payload)
    wrong = {"md5": "0" * 32, "sha256": "f" * 64, "size": d["size"] + 1}[field]
    remote = RemoteFile(payload.as_uri(), "payload.bin", **{field: wrong})
    dest = tmp_path / "dl"
    with pytest.raises(ChecksumError, match=f"{field}: expected"):
        fetch(remote, dest, progress=False)
    assert _files(dest) == []  # no partial file, no temporary file (only the lock)
    # a corrupt file already in place is reported, not silently used
    (dest / "payload.bin").write_bytes(b"corrupt")
    with pytest.raises(ChecksumError, match="delete it"):
        fetch(remote, dest, progress=False)


def test_fetch_with_monkeypatched_opener_truncated(tmp_path, payload):
    # urllib's read() returns b"" when the server closes early: an interrupted download, kept
    # for the next try (it used to be deleted, or, without a checksum, trusted and recorded)
    data = payload.read_bytes()
    d = _digests(payload)

    class Response:
        headers = {"Content-Length": str(len(data))}

        def __init__(self):
            self.pos = 0

        def read(self, n):  # the connection drops after half of the file
            chunk = data[self.pos:min(self.pos + n, len(data) // 2)]
            self.pos += len(chunk)
            return chunk

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    half = len(data) // 2
    for checksum in ({"md5": d["md5"]}, {}):  # published, or trusted on first use
        remote = RemoteFile("https://example.invalid/payload.bin", "payload.bin", **checksum)
        dest = tmp_path / "dl" / str(len(checksum))
        with pytest.raises(OSError, match=rf"closed after {half} of {len(data)} bytes; the "
                                          rf"{half} bytes received are kept"):
            fetch(remote, dest, opener=lambda url: Response(), progress=False)
        assert _files(dest) == [".payload.bin.part"]  # nothing under the name, no record
        assert fetch(remote, dest, opener=FakeServer(data), progress=False).read_bytes() == data


def test_fetch_records_checksum_on_first_use(tmp_path, payload):
    dest = tmp_path / "dl"
    remote = RemoteFile(payload.as_uri(), "payload.bin")
    fetch(remote, dest, progress=False)
    rec = json.loads((dest / CHECKSUMS_FILE).read_text())["payload.bin"]
    assert rec["sha256"] == _digests(payload)["sha256"]
    (dest / "payload.bin").write_bytes(b"tampered")  # later checks use the recorded sum
    with pytest.raises(ChecksumError, match="sha256"):
        fetch(remote, dest, progress=False)


def test_fetch_missing_url(tmp_path):
    with pytest.raises(OSError, match="could not download"):
        fetch(RemoteFile((tmp_path / "absent.zip").as_uri(), "absent.zip"), tmp_path / "dl",
              progress=False)
    assert _files(tmp_path / "dl") == []


def test_extract_helpers(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("top/x.txt", "x")
        z.writestr("top/sub/y.txt", "y")
        z.writestr("other/z.txt", "z")
    out = extract_dir(archive, "top", tmp_path / "out" / "top")
    assert (out / "sub" / "y.txt").read_text() == "y" and not (out / "z.txt").exists()
    assert _files(tmp_path / "out") == ["top"]  # no temporary leftovers
    assert extract_member(archive, "z.txt", tmp_path / "z.txt").read_text() == "z"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("top/../../escape.txt", "no")
    with pytest.raises(ValueError, match="unsafe"):
        extract_dir(evil, "top", tmp_path / "out2" / "top")
    assert not (tmp_path / "out2" / "top").exists()


def _zip_dir(archive: Path, folder: Path, arcroot: str) -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f"{arcroot}/{f.relative_to(folder).as_posix()}")
    return archive


def test_coco_download(tmp_path, monkeypatch):
    src = tmp_path / "src"
    records = make_karpathy_fixture(src, "coco")
    serve = tmp_path / "serve"
    serve.mkdir()
    with zipfile.ZipFile(serve / "caption_datasets.zip", "w") as z:
        z.write(src / "coco" / "dataset_coco.json", "dataset_coco.json")
    zips = {f: _zip_dir(serve / f"{f}.zip", src / "coco" / "images" / f, f)
            for f in ("train2014", "val2014")}
    monkeypatch.setattr(coco_mod, "KARPATHY_ZIP",
                        RemoteFile((serve / "caption_datasets.zip").as_uri(),
                                   "caption_datasets.zip"))
    monkeypatch.setattr(coco_mod, "COCO_IMAGE_ZIPS", {
        f: RemoteFile(p.as_uri(), p.name, **{k: v for k, v in _digests(p).items() if k != "sha256"})
        for f, p in zips.items()})
    root = tmp_path / "data"
    ds = COCO(root, download=True)
    test = ds.split("test")  # fetches the annotations and val2014 only
    assert (root / "coco" / "images" / "val2014").is_dir()
    assert not (root / "coco" / "images" / "train2014").exists()
    assert test.image_ids == COCO(src).split("test").image_ids
    recorded = json.loads((root / "coco" / "downloads" / CHECKSUMS_FILE).read_text())
    assert "caption_datasets.zip" in recorded  # no published checksum: trust on first use
    train = ds.split("train")
    assert train.n_images == sum(r["split"] in ("train", "restval") for r in records)
    assert all(p.is_file() for p in train.image_paths)
    # a corrupted archive on the server is refused and nothing is extracted
    monkeypatch.setattr(coco_mod, "COCO_IMAGE_ZIPS", {
        "train2014": RemoteFile(zips["train2014"].as_uri(), "train2014.zip", md5="0" * 32)})
    with pytest.raises(ChecksumError):
        COCO(tmp_path / "data2", download=True).split("train")
    assert not (tmp_path / "data2" / "coco" / "images" / "train2014").exists()


def test_flickr_download_from_hub_files(tmp_path, monkeypatch):
    src = tmp_path / "src"
    records = make_karpathy_fixture(src, "flickr30k", n_train=6, n_val=2, n_test=3)
    serve = tmp_path / "serve"
    serve.mkdir()
    with open(serve / flickr_mod.HF_CSV, "w", newline="", encoding="utf-8") as f:  # nlphuji's
        w = csv.writer(f)
        w.writerow(["raw", "sentids", "split", "filename", "img_id"])
        for r in records:
            w.writerow([json.dumps([s["raw"] for s in r["sentences"]]),
                        json.dumps([str(s) for s in r["sentids"]]), r["split"], r["filename"],
                        str(r["imgid"])])
    _zip_dir(serve / flickr_mod.HF_IMAGES, src / "flickr30k" / "images", "flickr30k-images")

    def hub_file(name):
        p = serve / name
        return RemoteFile(p.as_uri(), name, size=p.stat().st_size, sha256=_digests(p)["sha256"])

    monkeypatch.setattr(flickr_mod, "hub_file", hub_file)
    ds = Flickr30k(tmp_path / "data", download=True)
    ref = Flickr30k(src)
    for name in ("train", "val", "test"):
        got, want = ds.split(name), ref.split(name)
        assert got.image_ids == want.image_ids and got.captions == want.captions
        assert np.array_equal(got.caption_to_image, want.caption_to_image)
        assert all(p.is_file() for p in got.image_paths)
    written = json.loads((tmp_path / "data" / "flickr30k" / "dataset_flickr30k.json").read_text())
    assert written["dataset"] == "flickr30k"
    assert written["images"][0]["sentences"][0]["sentid"] == records[0]["sentids"][0]


# -- unsafe names, interrupted downloads and extractions ------------------------------------------

@pytest.mark.parametrize("name", ["../escape.bin", "sub/../../x", "/etc/passwd", "..", "",
                                  "a\\..\\b"])
def test_unsafe_download_filename_is_refused(tmp_path, payload, name):
    with pytest.raises(ValueError, match=r"^download filename .* must be a plain file name"):
        fetch(RemoteFile(payload.as_uri(), name), tmp_path / "dl", progress=False)
    assert not (tmp_path / "escape.bin").exists()


class FakeServer:
    """Serves ``data`` to ``fetch``'s opener without a network: honours ``Range`` (status 206)
    unless ``ranges`` is False, and drops the connection after ``cut`` bytes of a response."""

    def __init__(self, data: bytes, *, ranges: bool = True, cut: int | None = None):
        self.data, self.ranges, self.cut, self.requests = data, ranges, cut, []

    def __call__(self, request):
        self.requests.append(request.get_header("Range"))
        start = 0
        if self.ranges and request.get_header("Range"):
            start = int(re.fullmatch(r"bytes=(\d+)-", request.get_header("Range")).group(1))
        server, body = self, self.data[start:]

        class Response:
            status = 206 if start else 200
            headers = {"Content-Length": str(len(body))}
            pos = 0

            def read(self, n):
                stop = min(self.pos + n, len(body))
                if server.cut is not None and stop > server.cut:
                    if self.pos >= server.cut:
                        raise ConnectionResetError("connection reset by peer")
                    stop = server.cut
                chunk = body[self.pos:stop]
                self.pos = stop
                return chunk

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        return Response()


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "server_ignores_range"])
def test_cut_download_is_kept_and_resumed(tmp_path, payload, ranges):
    data, d = payload.read_bytes(), _digests(payload)
    remote = RemoteFile("https://example.invalid/payload.bin", "payload.bin", sha256=d["sha256"])
    dest = tmp_path / "dl"
    server = FakeServer(data, ranges=ranges, cut=1_200_000)
    with pytest.raises(OSError, match=r"the 1200000 bytes received are kept in .*\.payload\.bin"
                                      r"\.part and the next try resumes there"):
        fetch(remote, dest, opener=server, progress=False)
    assert (dest / ".payload.bin.part").stat().st_size == 1_200_000
    server.cut = None
    assert fetch(remote, dest, opener=server, progress=False).read_bytes() == data
    assert server.requests == [None, "bytes=1200000-"]
    assert _files(dest) == ["payload.bin"]


def test_leftovers_of_killed_downloads_and_extractions_are_removed(tmp_path, payload):
    data, d = payload.read_bytes(), _digests(payload)
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / ".payload.bin.0123456789ab.tmp").write_bytes(data[:1000])  # an older version's
    (dest / ".payload.bin.part").write_bytes(b"x" * 1000)  # wrong bytes: the check fails
    remote = RemoteFile("https://example.invalid/payload.bin", "payload.bin", md5=d["md5"])
    with pytest.raises(ChecksumError, match="md5"):
        fetch(remote, dest, opener=FakeServer(data), progress=False)
    assert _files(dest) == []  # the bad partial file is gone too, so the next try starts over
    assert fetch(remote, dest, opener=FakeServer(data), progress=False).read_bytes() == data
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("top/x.txt", "x")
    stale = tmp_path / "out" / ".top.0123456789ab.tmp"
    (stale / "top").mkdir(parents=True)
    (stale / "top" / "half.txt").write_text("killed")
    assert (extract_dir(archive, "top", tmp_path / "out" / "top") / "x.txt").read_text() == "x"
    (tmp_path / "out" / ".x.txt.0123456789ab.tmp").write_text("killed")
    assert extract_member(archive, "x.txt", tmp_path / "out" / "x.txt").read_text() == "x"
    assert _files(tmp_path / "out") == ["top", "x.txt"]


def test_a_complete_partial_file_is_checked_not_fetched_again(tmp_path, payload):
    # killed after the last byte but before the rename; without a known size the server answers
    # the Range request with 416 "range not satisfiable"
    import urllib.error

    data = payload.read_bytes()
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / ".payload.bin.part").write_bytes(data)

    def opener(request):
        raise urllib.error.HTTPError(request.full_url, 416, "Range Not Satisfiable", {}, None)

    remote = RemoteFile("https://example.invalid/payload.bin", "payload.bin",
                        sha256=_digests(payload)["sha256"])
    assert fetch(remote, dest, opener=opener, progress=False).read_bytes() == data


def test_first_use_record_precedes_the_rename(tmp_path, payload, monkeypatch):
    """A kill between the record and the rename leaves a .part checked against the record,
    never an unrecorded file under the final name."""
    import nnn.data.download as download

    dest, remote = tmp_path / "dl", RemoteFile(payload.as_uri(), "payload.bin")
    real_replace = download.os.replace

    def killed(src, dst):
        if Path(dst).name == "payload.bin":
            raise KeyboardInterrupt  # the process dies right before the rename
        real_replace(src, dst)

    monkeypatch.setattr(download.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        fetch(remote, dest, progress=False)
    monkeypatch.setattr(download.os, "replace", real_replace)
    assert _files(dest) == [".payload.bin.part", CHECKSUMS_FILE]
    recorded = json.loads((dest / CHECKSUMS_FILE).read_text())["payload.bin"]["sha256"]
    assert recorded == _digests(payload)["sha256"]
    (dest / ".payload.bin.part").write_bytes(b"x" * payload.stat().st_size)  # damaged since
    with pytest.raises(ChecksumError, match="sha256"):
        fetch(remote, dest, progress=False)


def _fetch_many(args) -> None:
    dest, files = args
    for f in files:
        fetch(RemoteFile(Path(f).as_uri(), Path(f).name), dest, progress=False)


def test_first_use_records_of_parallel_fetches_are_all_kept(tmp_path):
    """Processes fetching different unchecksummed files into one folder keep every record
    (checksums.json is updated under its own lock)."""
    import multiprocessing

    src = tmp_path / "src"
    src.mkdir()
    names = [src / f"f{i}.bin" for i in range(16)]
    for i, p in enumerate(names):
        p.write_bytes(bytes([i]) * 1000)
    dest = tmp_path / "dl"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_fetch_many, [(dest, [str(p) for p in names[0::2]]),
                               (dest, [str(p) for p in names[1::2]])])
    assert sorted(json.loads((dest / CHECKSUMS_FILE).read_text())) == sorted(p.name
                                                                              for p in names)
