"""Tests of the on-disk embedding cache (nnn/cache.py): keys, hits, recovery, atomicity, locking."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from nnn.cache import CACHE_FORMAT, EmbeddingCache, default_cache_dir, embedding_identity

ENCODER = {"family": "open_clip", "model": "ViT-B-32", "pretrained": "openai",
           "precision": "fp32", "adapter_version": "1",
           "preprocess": {"resize": 224, "crop": "center", "mean": [0.48, 0.46, 0.41]}}


def make_identity(encoder_changes=None, **data):
    """A realistic identity: the base encoder and COCO test split, with the given changes."""
    data = {"dataset": "coco", "split": "test", "subset": None, **data}
    return embedding_identity({**ENCODER, **(encoder_changes or {})}, **data)


def make_arrays(seed=0, n_img=7, n_cap=13, d=5):
    """Odd-sized L2-normalised embeddings and a caption index, as an extractor returns them."""
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((n_img, d)).astype(np.float32)
    text = rng.standard_normal((n_cap, d)).astype(np.float32)
    return {"image": image / np.linalg.norm(image, axis=1, keepdims=True),
            "text": text / np.linalg.norm(text, axis=1, keepdims=True),
            "caption_to_image": (np.arange(n_cap) % n_img).astype(np.int64)}


class CountingCompute:
    """A compute function that counts its calls."""

    def __init__(self, seed=0):
        self.seed, self.calls = seed, 0

    def __call__(self):
        self.calls += 1
        return make_arrays(self.seed)


def assert_arrays_equal(got, want):
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def write_script(tmp_path, source):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return script


def start_script(script, *args):
    return subprocess.Popen([sys.executable, str(script), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- keys and identities --------------------------------------------------------------------------

def test_key_is_sha256_of_canonical_json(tmp_path):
    cache = EmbeddingCache(tmp_path)
    ident = make_identity()
    canonical = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    payload = f'{{"format":{CACHE_FORMAT},"identity":{canonical}}}'
    want = hashlib.sha256(payload.encode()).hexdigest()
    assert cache.key(ident) == want
    reordered = dict(reversed(list(ident.items())))
    assert cache.key(reordered) == want
    assert cache.entry_dir(ident) == tmp_path / want


@pytest.mark.parametrize("change", [
    {"encoder_changes": {"family": "hf_clip"}},
    {"encoder_changes": {"model": "ViT-B-16"}},
    {"encoder_changes": {"pretrained": "laion2b_s34b_b79k"}},
    {"encoder_changes": {"precision": "fp16"}},
    {"encoder_changes": {"preprocess": {**ENCODER["preprocess"], "resize": 256}}},
    {"encoder_changes": {"adapter_version": "2"}},
    {"dataset": "flickr30k"},
    {"split": "val"},
    {"subset": {"n_images": 1000, "seed": 0}},
], ids=["family", "model", "pretrained", "precision", "preprocessing", "adapter_version",
        "dataset", "split", "subset"])
def test_each_identity_field_change_misses(tmp_path, change):
    cache = EmbeddingCache(tmp_path)
    compute = CountingCompute()
    cache.get_or_compute(make_identity(), compute)
    changed = make_identity(**change)
    assert cache.key(changed) != cache.key(make_identity())
    cache.get_or_compute(changed, compute)
    assert compute.calls == 2
    assert not cache.last.hit and cache.last.reason == "miss"


def test_method_is_not_part_of_the_identity(tmp_path):
    # Two runs that differ only in the retrieval method ask for the same embeddings.
    params = inspect.signature(embedding_identity).parameters
    assert "method" not in params
    assert all(p.kind is not p.VAR_KEYWORD for p in params.values())
    compute = CountingCompute()
    for _method in ("nnn", "qb_norm"):
        cache = EmbeddingCache(tmp_path)
        cache.get_or_compute(make_identity(), compute)
    assert compute.calls == 1 and cache.last.hit


def test_embedding_identity_requires_adapter_version():
    encoder = {k: v for k, v in ENCODER.items() if k != "adapter_version"}
    with pytest.raises(ValueError, match="adapter_version"):
        embedding_identity(encoder, dataset="coco", split="test")


@pytest.mark.parametrize("bad, where", [
    (np.float32(0.5), "identity['encoder']['bad']"),
    (Path("/data/coco"), "identity['encoder']['bad']"),
    ({1, 2}, "identity['encoder']['bad']"),
    (float("nan"), "identity['encoder']['bad']"),
    ({3: "x"}, "identity['encoder']['bad'] has key 3"),
    ([1, object()], "identity['encoder']['bad'][1]"),
], ids=["numpy_scalar", "path", "set", "nan", "int_key", "object"])
def test_non_json_identity_raises(tmp_path, bad, where):
    cache = EmbeddingCache(tmp_path)
    ident = make_identity({"bad": bad})
    with pytest.raises(ValueError, match="^" + re.escape(where)):
        cache.key(ident)
    with pytest.raises(ValueError):
        cache.get_or_compute(ident, CountingCompute())
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("ident", [{}, ["coco"], None])
def test_identity_must_be_a_non_empty_dict(tmp_path, ident):
    with pytest.raises(ValueError, match="non-empty dict"):
        EmbeddingCache(tmp_path).key(ident)


def test_default_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NNN_CACHE_DIR", str(tmp_path / "mine"))
    assert EmbeddingCache().root == tmp_path / "mine"
    monkeypatch.delenv("NNN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "nnn"


# -- hits, values, metadata -----------------------------------------------------------------------

def test_second_call_hits_without_computing(tmp_path):
    compute = CountingCompute()
    cache = EmbeddingCache(tmp_path)
    first = cache.get_or_compute(make_identity(), compute)
    assert (cache.last.hit, cache.last.reason) == (False, "miss")
    second = EmbeddingCache(tmp_path).get_or_compute(make_identity(), compute)  # a later run
    again = cache.get_or_compute(make_identity(), compute)
    assert compute.calls == 1
    assert (cache.last.hit, cache.last.reason) == (True, "hit")
    assert cache.stats == {"hits": 1, "misses": 1}
    assert cache.last.seconds >= cache.last.wait_seconds >= 0
    for arrays in (first, second, again):
        assert_arrays_equal(arrays, make_arrays())


def test_returns_read_only_memmaps(tmp_path):
    cache = EmbeddingCache(tmp_path)
    for arrays in (cache.get_or_compute(make_identity(), CountingCompute()),
                   cache.get_or_compute(make_identity(), CountingCompute()),
                   cache.load(make_identity())):
        for arr in arrays.values():
            assert isinstance(arr, np.memmap) and not arr.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            arrays["image"][0, 0] = 1.0


def test_round_trips_assorted_dtypes_and_shapes(tmp_path):
    want = {"ids": np.array(["391895", "522418", "x"]), "flags": np.array([True, False]),
            "count": np.array(7, dtype=np.int32), "empty": np.zeros((0, 5), np.float32),
            "fortran": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
            "half": np.linspace(-1, 1, 9, dtype=np.float16)}
    got = EmbeddingCache(tmp_path).store(make_identity(), want)
    assert_arrays_equal(got, want)
    assert got["count"].shape == ()


def test_metadata_describes_the_entry(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.get_or_compute(make_identity(), CountingCompute())
    meta = json.loads((cache.entry_dir(make_identity()) / "meta.json").read_text())
    assert meta["identity"] == make_identity()
    assert meta["key"] == cache.key(make_identity())
    for name, arr in make_arrays().items():
        spec = meta["arrays"][name]
        assert spec["shape"] == list(arr.shape) and spec["dtype"] == arr.dtype.str
        assert spec["nbytes"] == arr.nbytes
        assert spec["sha256"] == hashlib.sha256(arr.tobytes()).hexdigest()
    assert meta["created"].endswith("+00:00") and meta["compute_seconds"] >= 0
    assert meta["versions"]["numpy"] == np.__version__


def test_store_replaces_and_load_misses_cleanly(tmp_path):
    cache = EmbeddingCache(tmp_path)
    assert cache.load(make_identity()) is None
    cache.store(make_identity(), make_arrays(0))
    cache.store(make_identity(), make_arrays(1))
    assert_arrays_equal(cache.load(make_identity()), make_arrays(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".locks", ".tmp", cache.key(make_identity())])
    assert not any((tmp_path / ".tmp").iterdir())


@pytest.mark.parametrize("arrays, match", [
    ({}, "non-empty dict"),
    ([np.zeros(3)], "non-empty dict"),
    ({"../escape": np.zeros(3)}, "file name"),
    ({"obj": np.array([{}, None], dtype=object)}, "dtype object"),
])
def test_bad_arrays_are_refused(tmp_path, arrays, match):
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(ValueError, match=match):
        cache.get_or_compute(make_identity(), lambda: arrays)
    assert not cache.entry_dir(make_identity()).exists()


# -- recovery -------------------------------------------------------------------------------------

def _truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def _edit_meta(entry, edit):
    meta = json.loads((entry / "meta.json").read_text())
    edit(meta)
    (entry / "meta.json").write_text(json.dumps(meta))


RANDOM_BYTES = np.random.default_rng(0).bytes(300)
CORRUPTIONS = {
    "truncated_data": lambda e: _truncate(e / "image.npy", (e / "image.npy").stat().st_size - 4),
    "truncated_header": lambda e: _truncate(e / "text.npy", 40),
    "extra_bytes": lambda e: (e / "text.npy").open("ab").write(b"\0" * 8),
    "missing_array": lambda e: (e / "caption_to_image.npy").unlink(),
    "arrays_without_metadata": lambda e: (e / "meta.json").unlink(),
    "unreadable_metadata": lambda e: (e / "meta.json").write_text('{"format": 1, "arr'),
    "shape_mismatch": lambda e: _edit_meta(e, lambda m: m["arrays"]["image"].update(shape=[5, 7])),
    "dtype_mismatch": lambda e: _edit_meta(e, lambda m: m["arrays"]["image"].update(dtype="<f8")),
    "other_identity": lambda e: _edit_meta(e, lambda m: m["identity"].update(split="train")),
    "zero_byte_array": lambda e: _truncate(e / "image.npy", 0),
    "random_bytes_array": lambda e: (e / "image.npy").write_bytes(RANDOM_BYTES),
    "garbled_header": lambda e: (e / "text.npy").write_bytes(
        (e / "text.npy").read_bytes()[:10] + RANDOM_BYTES),
    "zero_byte_metadata": lambda e: _truncate(e / "meta.json", 0),
    "random_bytes_metadata": lambda e: (e / "meta.json").write_bytes(b"\xff" + RANDOM_BYTES),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_corrupt_entry_is_detected_and_recomputed(tmp_path, caplog, corrupt):
    cache = EmbeddingCache(tmp_path)
    ident = make_identity()
    cache.get_or_compute(ident, CountingCompute())
    corrupt(cache.entry_dir(ident))
    key = cache.key(ident)
    with caplog.at_level(logging.WARNING, logger="nnn.cache"):
        assert cache.load(ident) is None
    assert any(key in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    compute = CountingCompute()
    assert_arrays_equal(cache.get_or_compute(ident, compute), make_arrays())
    assert compute.calls == 1 and cache.last.reason == "invalid"
    assert_arrays_equal(cache.load(ident), make_arrays())


def test_checksum_is_verified_on_request(tmp_path, caplog):
    ident = make_identity()
    EmbeddingCache(tmp_path).get_or_compute(ident, CountingCompute())
    file = EmbeddingCache(tmp_path).entry_dir(ident) / "image.npy"
    raw = bytearray(file.read_bytes())
    raw[-1] ^= 0xFF  # a bit flip that keeps the size
    file.write_bytes(bytes(raw))
    assert EmbeddingCache(tmp_path).load(ident) is not None  # the cheap check cannot see it
    with caplog.at_level(logging.WARNING, logger="nnn.cache"):
        assert EmbeddingCache(tmp_path).load(ident, verify=True) is None
    assert "sha256" in caplog.text
    verifying = EmbeddingCache(tmp_path, verify=True)
    compute = CountingCompute()
    assert_arrays_equal(verifying.get_or_compute(ident, compute), make_arrays())
    assert compute.calls == 1 and verifying.last.reason == "invalid"


def test_refresh_recomputes_and_discards_work_dir(tmp_path):
    ident = make_identity()
    EmbeddingCache(tmp_path).get_or_compute(ident, CountingCompute(seed=0))
    refreshing = EmbeddingCache(tmp_path, refresh=True)
    shard = refreshing.work_dir(ident) / "shard-000.npy"
    shard.write_bytes(b"stale")
    compute = CountingCompute(seed=1)
    assert_arrays_equal(refreshing.get_or_compute(ident, compute), make_arrays(1))
    assert compute.calls == 1 and refreshing.last.reason == "refresh"
    assert not shard.exists()
    assert_arrays_equal(EmbeddingCache(tmp_path).load(ident), make_arrays(1))


# -- atomicity ------------------------------------------------------------------------------------

def test_failed_compute_leaves_no_entry_and_keeps_work_dir(tmp_path):
    cache = EmbeddingCache(tmp_path, lock_timeout=0)
    ident = make_identity()
    shard = cache.work_dir(ident) / "shard-000.npy"

    def failing():
        shard.write_bytes(b"half done")
        raise RuntimeError("GPU fell off")

    with pytest.raises(RuntimeError, match="GPU fell off"):
        cache.get_or_compute(ident, failing)
    assert not cache.entry_dir(ident).exists() and cache.load(ident) is None
    assert shard.exists()  # kept for a resumed extraction
    compute = CountingCompute()
    cache.get_or_compute(ident, compute)  # the lock was released (lock_timeout=0)
    assert compute.calls == 1 and not shard.parent.exists()


CRASH_SCRIPT = """
    import os, sys
    import numpy as np
    import nnn.cache
    # die like a killed process right after the arrays are written, before the metadata
    nnn.cache.atomic_write_json = lambda *args, **kwargs: os._exit(3)
    cache = nnn.cache.EmbeddingCache(sys.argv[1])
    cache.get_or_compute({"kind": "crash-test"}, lambda: {"x": np.arange(5.0)})
"""


def test_crash_before_metadata_leaves_no_entry(tmp_path):
    root = tmp_path / "cache"
    proc = start_script(write_script(tmp_path, CRASH_SCRIPT), root)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    cache = EmbeddingCache(root)
    ident = {"kind": "crash-test"}
    leftovers = list((root / ".tmp").iterdir())
    assert [p.name for p in leftovers[0].iterdir()] == ["x.npy"]  # arrays, no metadata
    assert not cache.entry_dir(ident).exists() and cache.load(ident) is None
    got = cache.get_or_compute(ident, lambda: {"x": np.arange(5.0)})
    np.testing.assert_array_equal(got["x"], np.arange(5.0))
    assert cache.last.reason == "miss" and not any((root / ".tmp").iterdir())


# -- concurrency ----------------------------------------------------------------------------------

def test_lock_timeout_raises(tmp_path):
    cache = EmbeddingCache(tmp_path, lock_timeout=0.2)
    ident = make_identity()
    (tmp_path / ".locks").mkdir()
    compute = CountingCompute()
    with FileLock(tmp_path / ".locks" / f"{cache.key(ident)}.lock"):
        with pytest.raises(TimeoutError, match="lock_timeout"):
            cache.get_or_compute(ident, compute)
    assert compute.calls == 0


RACE_SCRIPT = """
    import json, os, sys, time
    from pathlib import Path
    import numpy as np
    from nnn.cache import EmbeddingCache

    root, counter, me, other, refresh = sys.argv[1:6]
    Path(me).touch()  # a barrier, so that both processes ask for the key at the same time
    deadline = time.monotonic() + 30
    while not Path(other).exists():
        if time.monotonic() > deadline:
            sys.exit("the other process never started")
        time.sleep(0.01)

    def compute():
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(0.5)
        rng = np.random.default_rng(0)
        return {"image": rng.standard_normal((7, 5)).astype(np.float32),
                "caption_to_image": np.arange(13) % 7}

    cache = EmbeddingCache(root, refresh=refresh == "refresh")
    arrays = cache.get_or_compute({"kind": "race", "dataset": "coco"}, compute)
    print(json.dumps({"hit": cache.last.hit, "wait": cache.last.wait_seconds,
                      **{k: v.tolist() for k, v in arrays.items()}}))
"""


@pytest.mark.parametrize("refresh", [False, True], ids=["plain", "refresh"])
def test_two_processes_compute_a_key_once(tmp_path, refresh):
    # With refresh, both processes find a stale entry; the one that waits must reuse the
    # entry the other just wrote instead of refreshing it a second time.
    root, counter = tmp_path / "cache", tmp_path / "counter.txt"
    ident = {"kind": "race", "dataset": "coco"}
    if refresh:
        EmbeddingCache(root).store(ident, {"image": np.zeros((7, 5), np.float32)})
    ready = [tmp_path / "ready-0", tmp_path / "ready-1"]
    script = write_script(tmp_path, RACE_SCRIPT)
    flag = "refresh" if refresh else "plain"
    procs = [start_script(script, root, counter, ready[i], ready[1 - i], flag) for i in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert len(counter.read_text().split()) == 1  # exactly one computation
    assert sorted(r["hit"] for r in results) == [False, True]
    assert max(r["wait"] for r in results if r["hit"]) > 0.2  # the hit waited for the lock
    want_image = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    for r in results:
        np.testing.assert_array_equal(np.array(r["image"], np.float32), want_image)
        np.testing.assert_array_equal(r["caption_to_image"], np.arange(13) % 7)
    assert EmbeddingCache(root, verify=True).load(ident) is not None  # checksums hold


# -- nnn._atomic, the write helpers the cache (and other modules) use ------------------------------

def test_atomic_writes_replace_whole_files_or_nothing(tmp_path):
    from nnn._atomic import atomic_open, atomic_save_npy, atomic_write_bytes, atomic_write_json

    target = tmp_path / "out.json"
    atomic_write_json(target, {"b": 1, "a": [1.5]})
    assert json.loads(target.read_text()) == {"a": [1.5], "b": 1}
    with pytest.raises(ValueError):
        atomic_write_json(target, {"a": float("nan")})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write('{"partial": ')
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"a": [1.5], "b": 1}  # the old file, intact
    assert atomic_write_bytes(tmp_path / "raw.bin", b"\x00\x01") == tmp_path / "raw.bin"
    arr = np.arange(6, dtype=np.int16).reshape(2, 3)
    np.testing.assert_array_equal(np.load(atomic_save_npy(tmp_path / "a.arr", arr)), arr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.arr", "out.json", "raw.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask


# -- leftovers of killed writers ------------------------------------------------------------------

def test_stale_tmp_folders_are_removed_unless_their_writer_lives(tmp_path):
    cache = EmbeddingCache(tmp_path)
    tmp_root = tmp_path / ".tmp"
    dead, live = cache.key(make_identity(split="train")), cache.key(make_identity(split="val"))
    for name in (f"{dead}.0123456789ab", f"{dead}.old-0123456789ab", f"{live}.0123456789ab"):
        (tmp_root / name).mkdir(parents=True)
        (tmp_root / name / "image.npy").write_bytes(b"half written")
    (tmp_path / ".locks").mkdir()
    with FileLock(tmp_path / ".locks" / f"{live}.lock"):  # a live writer of that key
        cache.get_or_compute(make_identity(), CountingCompute())  # any store cleans up
    assert [p.name for p in tmp_root.iterdir()] == [f"{live}.0123456789ab"]
    cache.get_or_compute(make_identity(split="other"), CountingCompute())  # its writer is gone
    assert list(tmp_root.iterdir()) == []


def test_replace_dir_keeps_the_old_folder_when_the_rename_fails(tmp_path, monkeypatch):
    from nnn import _atomic

    target, tmp = tmp_path / "entry", tmp_path / ".entry.tmp"
    for folder, text in ((target, "old"), (tmp, "new")):
        folder.mkdir()
        (folder / "f").write_text(text)
    real = os.replace

    def fail_second(src, dst):
        if Path(src) == tmp:
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(_atomic.os, "replace", fail_second)
    with pytest.raises(OSError, match="disk full"):
        _atomic.replace_dir(tmp, target, aside=tmp_path / ".entry.old")
    assert (target / "f").read_text() == "old" and not (tmp_path / ".entry.old").exists()
    monkeypatch.setattr(_atomic.os, "replace", real)
    _atomic.replace_dir(tmp, target, aside=tmp_path / ".entry.old")
    assert (target / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]


def test_a_read_only_cache_serves_its_hits_and_says_why_a_miss_fails(tmp_path, monkeypatch):
    # a read-only file system, as root cannot be refused by permissions: mkdir fails
    root = tmp_path / "cache"
    EmbeddingCache(root).store({"kind": "ro"}, {"image": np.ones((3, 2), np.float32)})
    shutil.rmtree(root / ".locks", ignore_errors=True)

    def read_only(self, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    cache = EmbeddingCache(root)
    hit = cache.get_or_compute({"kind": "ro"}, lambda: pytest.fail("recomputed a hit"))
    assert cache.last.hit and hit["image"].shape == (3, 2)
    with pytest.raises(OSError, match="cannot be written .Read-only file system. .* point "
                                      "cache.dir at a writable"):
        cache.get_or_compute({"kind": "other"}, lambda: {"image": np.ones((1, 1))})


def test_a_hit_takes_no_lock(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path / "cache")
    cache.store({"kind": "h"}, {"image": np.ones((3, 2), np.float32)})
    monkeypatch.setattr(EmbeddingCache, "_locked", lambda *a: pytest.fail("locked for a hit"))
    assert cache.get_or_compute({"kind": "h"}, lambda: {})["image"].shape == (3, 2)
    assert cache.last.hit and cache.last.wait_seconds == 0.0


def test_a_read_only_cache_with_lock_files_says_why_a_miss_fails(tmp_path, monkeypatch):
    """A cache used before has .locks/: the lock file's own creation then fails, and says so."""
    root = tmp_path / "cache"
    EmbeddingCache(root).store({"kind": "ro"}, {"image": np.ones((3, 2), np.float32)})
    (root / ".locks").mkdir(exist_ok=True)

    def read_only(self, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(self.lock_file))

    monkeypatch.setattr(FileLock, "acquire", read_only)
    cache = EmbeddingCache(root)
    assert cache.get_or_compute({"kind": "ro"}, lambda: {})["image"].shape == (3, 2)
    with pytest.raises(OSError, match="cannot be written .Read-only file system. and has no "
                                      "valid entry"):
        cache.get_or_compute({"kind": "other"}, lambda: {"image": np.ones((1, 1))})


def test_an_entry_replaced_during_a_lockless_read_is_read_again_under_the_lock(tmp_path,
                                                                                monkeypatch):
    cache = EmbeddingCache(tmp_path / "cache")
    cache.store({"kind": "r"}, {"image": np.ones((3, 2), np.float32)})
    real, calls = EmbeddingCache._read_entry, []

    def moved_once(path, ident, verify):
        calls.append(path)
        if len(calls) == 1:  # another process's replace_dir moved the entry aside just now
            raise FileNotFoundError(2, "No such file or directory", str(path / "image.npy"))
        return real(path, ident, verify)

    monkeypatch.setattr(EmbeddingCache, "_read_entry", staticmethod(moved_once))
    got = cache.get_or_compute({"kind": "r"}, lambda: pytest.fail("recomputed a valid entry"))
    assert got["image"].shape == (3, 2) and cache.last.hit and len(calls) == 2
