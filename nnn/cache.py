"""On-disk cache of embeddings, keyed by everything that determines them.

Callers describe the embeddings by an *identity*: a JSON-able dict of the encoder (family, model,
pretrained tag, precision, preprocessing, adapter version) and the data (dataset, split,
subset); ``embedding_identity`` builds it. The retrieval method is never part of it, so every
method reuses the same embeddings. The key is the sha256 of the identity's canonical JSON
(sorted keys, compact separators) together with the cache format version.

Layout under ``root``, a directory shared by all runs (``$NNN_CACHE_DIR``, else
``$XDG_CACHE_HOME/nnn``, else ``~/.cache/nnn``)::

    <key>/meta.json      identity, per-array shape/dtype/nbytes/sha256, created time, versions
    <key>/<name>.npy     one plain .npy file per array, loaded memory-mapped and read-only
    .locks/<key>.lock    a file lock per key: one process computes, the others wait, then load
    .tmp/<key>.<id>/     an entry being written; renamed to <key>/ once complete
    .work/<key>/         scratch space for resumable extraction shards, removed after a store

Writes are atomic: arrays and then ``meta.json`` are written and fsynced inside ``.tmp``, and the
finished directory is renamed into place, so a crash leaves the old entry or none. An entry
without a valid ``meta.json`` counts as incomplete. A killed writer's ``.tmp`` folder is deleted
by the next store (of any key) once that key's lock is free, i.e. no live process is writing it.

Integrity checks. The sha256 of each array's bytes is computed when it is stored (about 1 s
for a 591k x 768 float32 array, 1.8 GB, at ~1.6 GB/s on a 2-core VM). Every load does the cheap
checks: ``meta.json`` parses and holds the requested identity, and each ``.npy`` file exists,
its header's shape and dtype match the metadata and its size matches the header. A truncated,
empty, garbled, missing or mismatched entry is logged as a warning and recomputed.
``verify=True`` also re-hashes every byte (a full read of the entry), which catches silent bit
flips.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
from filelock import FileLock, Timeout

from nnn._atomic import atomic_save_npy, atomic_write_json, fsync_dir, replace_dir

log = logging.getLogger(__name__)

#: Bump when the on-disk layout changes; it is hashed into every key.
CACHE_FORMAT = 1
META_FILE = "meta.json"
#: dtype kinds an entry may hold: bool, integers, floats, complex, fixed-width strings.
_ARRAY_KINDS = "biufcUS"
_ARRAY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
#: Distributions whose versions are recorded in each entry's metadata (not in its key).
_RECORDED_VERSIONS = ("nnn-hubness", "numpy", "torch", "torchvision", "pillow",
                      "open_clip_torch", "transformers", "timm")
_HASH_CHUNK_BYTES = 1 << 24


def default_cache_dir() -> Path:
    """``$NNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/nnn``, else ``~/.cache/nnn``."""
    if os.environ.get("NNN_CACHE_DIR"):
        return Path(os.environ["NNN_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "nnn"


def embedding_identity(encoder: Mapping, *, dataset, split: str, subset=None) -> dict:
    """The identity of one split's embeddings.

    ``encoder`` is the encoder's ``cache_identity()`` (it must name its ``adapter_version``);
    ``dataset`` and ``subset`` are any JSON-able description (e.g. ``"coco"``,
    ``{"n_images": 1000, "seed": 0}``). The retrieval method has no place here on purpose.
    """
    if not isinstance(encoder, Mapping) or not encoder:
        raise ValueError(f"encoder must be a non-empty dict from Encoder.cache_identity(), "
                         f"got {encoder!r}")
    if "adapter_version" not in encoder:
        raise ValueError(f"encoder identity {dict(encoder)!r} has no 'adapter_version'; "
                         "Encoder.cache_identity() must include it (see nnn/encoders/base.py)")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    return {"kind": "embeddings", "encoder": dict(encoder), "dataset": dataset, "split": split,
            "subset": subset}


def _check_jsonable(value, where: str) -> None:
    """Raise ValueError naming ``where`` unless ``value`` maps one-to-one onto JSON."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} = {value!r} is not finite; JSON has no NaN/Inf")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where} has key {k!r} of type {type(k).__name__}; identity "
                                 "keys must be strings")
            _check_jsonable(v, f"{where}[{k!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_jsonable(v, f"{where}[{i}]")
        return
    raise ValueError(f"{where} = {value!r} of type {type(value).__name__} is not JSON-able; use "
                     "str, int, float, bool, None, list or dict (e.g. str(path), x.item() for "
                     "NumPy scalars, OmegaConf.to_container(cfg) for configs)")


def _canonical_identity(identity) -> tuple[str, dict]:
    """``identity`` checked -> (canonical JSON, the identity as it reads back from JSON)."""
    if not isinstance(identity, dict) or not identity:
        raise ValueError(f"identity must be a non-empty dict, got {type(identity).__name__} "
                         f"{identity!r}")
    _check_jsonable(identity, "identity")
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text, json.loads(text)


def _key_and_identity(identity) -> tuple[str, dict]:
    """identity -> (cache key, the identity as stored in metadata); ValueError when unusable."""
    text, ident = _canonical_identity(identity)
    key = hashlib.sha256(f'{{"format":{CACHE_FORMAT},"identity":{text}}}'.encode()).hexdigest()
    return key, ident


def _sha256(arr: np.ndarray) -> str:
    """sha256 of the array's C-order bytes, read in chunks (works on memmaps of any size)."""
    h = hashlib.sha256()
    flat = arr.reshape(-1)
    step = max(1, _HASH_CHUNK_BYTES // max(arr.itemsize, 1))
    for start in range(0, flat.size, step):
        h.update(np.ascontiguousarray(flat[start:start + step]).view(np.uint8))
    return h.hexdigest()


def _checked_arrays(arrays) -> dict[str, np.ndarray]:
    """What ``compute`` returned -> {name: C-contiguous ndarray}; ValueError on bad input."""
    if not isinstance(arrays, Mapping) or not arrays:
        raise ValueError(f"arrays must be a non-empty dict name -> array, got "
                         f"{type(arrays).__name__}")
    out = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not _ARRAY_NAME.match(name):
            raise ValueError(f"array name {name!r} is not usable as a file name; use letters, "
                             "digits, '_', '-', '.' and start with a letter or digit")
        arr = np.asarray(value)
        if arr.dtype.kind not in _ARRAY_KINDS:
            raise ValueError(f"array {name!r} has dtype {arr.dtype}; the cache stores only "
                             "bool, integer, float, complex and fixed-width string arrays")
        out[name] = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
    return out


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in _RECORDED_VERSIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


class InvalidEntry(Exception):
    """An entry on disk that is incomplete, truncated or does not match its metadata."""


@dataclass(frozen=True)
class CacheLookup:
    """What one ``get_or_compute`` call did.

    reason: ``"hit"`` (loaded from disk, possibly after another process computed it),
    ``"miss"`` (no entry), ``"invalid"`` (entry failed its checks) or ``"refresh"``.
    seconds: the whole call; wait_seconds: the part spent waiting for the key's lock.
    """

    key: str
    hit: bool
    reason: str
    seconds: float
    wait_seconds: float
    path: Path


class EmbeddingCache:
    """Load-or-compute store of named arrays under a deterministic key (see the module doc).

    root: cache directory (default ``default_cache_dir()``); refresh: recompute entries that
    exist when a ``get_or_compute`` call starts (and discard that key's ``work_dir``); verify:
    re-hash every array on load; lock_timeout: seconds to wait for another process working on
    the same key (None waits forever), then ``TimeoutError``.

    ``last`` holds the ``CacheLookup`` of the latest ``get_or_compute``; ``stats`` counts hits
    and misses over this object's life.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, refresh: bool = False,
                 verify: bool = False, lock_timeout: float | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"cache root {self.root} exists and is not a directory")
        if lock_timeout is not None and lock_timeout < 0:
            raise ValueError(f"lock_timeout must be None (wait forever) or >= 0, "
                             f"got {lock_timeout}")
        self.refresh = bool(refresh)
        self.verify = bool(verify)
        self.lock_timeout = lock_timeout
        self.last: CacheLookup | None = None
        self.stats = {"hits": 0, "misses": 0}

    def __repr__(self) -> str:
        return (f"EmbeddingCache(root={str(self.root)!r}, refresh={self.refresh}, "
                f"verify={self.verify})")

    # -- naming ---------------------------------------------------------------------------------

    def key(self, identity: dict) -> str:
        """sha256 hex digest of the identity's canonical JSON and the cache format."""
        return _key_and_identity(identity)[0]

    def entry_dir(self, identity: dict) -> Path:
        """Where the entry for ``identity`` lives (it may not exist)."""
        return self.root / self.key(identity)

    def work_dir(self, identity: dict) -> Path:
        """A per-key scratch directory (created) for resumable shards; removed after a store."""
        path = self.root / ".work" / self.key(identity)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- public operations ----------------------------------------------------------------------

    def load(self, identity: dict, *, verify: bool | None = None) -> dict[str, np.ndarray] | None:
        """The cached arrays (read-only memmaps), or None when absent or unusable (warned).

        Takes no lock: while another process replaces this very entry it may return None.
        """
        key, ident = _key_and_identity(identity)
        found = self._load_valid(self.root / key, ident, self.verify if verify is None else verify)
        return None if found is None else found[0]

    def store(self, identity: dict, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Write ``arrays`` as the entry for ``identity``, replacing any; returns them mmapped."""
        key, ident = _key_and_identity(identity)
        with self._locked(key):
            return self._store_locked(key, ident, arrays, compute_seconds=None)

    def get_or_compute(self, identity: dict,
                       compute: Callable[[], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The cached arrays for ``identity``, computing and storing them on a miss.

        compute: () -> {name: array}. Runs under the key's file lock, so parallel processes
        asking for the same key compute it once; the others wait and load it. Returns read-only
        memmaps either way; ``self.last`` tells whether it was a hit.
        """
        t0 = time.perf_counter()
        key, ident = _key_and_identity(identity)
        path = self.root / key
        # With refresh, only the entry present now is stale; one written by another process
        # while this call waits for the lock is fresh and reused.
        stale_id = self._entry_id(path) if self.refresh else None
        # entries are published whole (renamed into place), so a valid one can be read without
        # the lock: a hit needs no write access (a shared, read-only cache works)
        found = None
        if not self.refresh and path.exists():
            try:
                found = self._read_entry(path, ident, self.verify)
            except (InvalidEntry, OSError):
                pass  # damaged (warned about below, under the lock) or being replaced now
        if found:
            self._record(key, path, t0, 0.0, found, "hit")
            return found[0]
        with self._locked(key) as wait_seconds:
            found = self._load_valid(path, ident, self.verify)
            reason = "hit" if found else ("invalid" if path.exists() else "miss")
            if found and self.refresh and found[1].get("entry_id") == stale_id:
                found, reason = None, "refresh"
                shutil.rmtree(self.root / ".work" / key, ignore_errors=True)
            if found:
                arrays = found[0]
            else:
                log.info("embedding cache %s: computing (%s)", key[:12], reason)
                tc = time.perf_counter()
                result = compute()
                arrays = self._store_locked(key, ident, result,
                                            compute_seconds=time.perf_counter() - tc)
        self._record(key, path, t0, wait_seconds, found, reason)
        return arrays

    def _record(self, key: str, path: Path, t0: float, wait_seconds: float, found,
                reason: str) -> None:
        """Set ``self.last`` and count the lookup."""
        self.last = CacheLookup(key=key, hit=bool(found), reason=reason,
                                seconds=time.perf_counter() - t0, wait_seconds=wait_seconds,
                                path=path)
        self.stats["hits" if found else "misses"] += 1
        if found:
            log.info("embedding cache hit %s (%s) in %.2f s", key[:12], path, self.last.seconds)

    # -- internals ------------------------------------------------------------------------------

    @contextmanager
    def _locked(self, key: str) -> Iterator[float]:
        """Hold the key's file lock; yields the seconds spent waiting for it."""
        lock_dir = self.root / ".locks"
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(lock_dir / f"{key}.lock")
            t0 = time.perf_counter()
            lock.acquire(timeout=0)
        except Timeout:
            log.info("embedding cache %s: another process is working on it; waiting", key[:12])
            try:
                lock.acquire(timeout=-1 if self.lock_timeout is None else self.lock_timeout)
            except Timeout as e:
                raise TimeoutError(
                    f"waited {self.lock_timeout} s for the lock {lock.lock_file} of cache key "
                    f"{key}; another process is computing it (raise lock_timeout to wait "
                    "longer)") from e
        except OSError as err:
            raise OSError(f"the embedding cache {str(self.root)!r} cannot be written "
                          f"({err.strerror or err}) and has no valid entry for key {key[:12]}; "
                          "make it writable or point cache.dir at a writable folder") from None
        try:
            yield time.perf_counter() - t0
        finally:
            lock.release()

    @staticmethod
    def _entry_id(path: Path) -> str | None:
        """The ``entry_id`` in ``path``'s metadata, or None when it has none readable."""
        try:
            return json.loads((path / META_FILE).read_text(encoding="utf-8")).get("entry_id")
        except (OSError, ValueError, AttributeError):
            return None

    def _load_valid(self, path: Path, ident: dict, verify: bool):
        """(arrays, meta) when the entry at ``path`` passes its checks; None (warned) otherwise."""
        if not path.exists():
            return None
        try:
            return self._read_entry(path, ident, verify)
        except InvalidEntry as e:
            log.warning("embedding cache entry %s (%s) is unusable, treated as missing: %s",
                        path.name, path, e)
            return None

    @staticmethod
    def _read_entry(path: Path, ident: dict, verify: bool) -> tuple[dict[str, np.ndarray], dict]:
        """Memory-map an entry after the checks in the module doc; raises InvalidEntry."""
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise InvalidEntry(f"no {META_FILE} (an incomplete write)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InvalidEntry(f"unreadable {META_FILE}: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            raise InvalidEntry(f"{META_FILE} is not a format-{CACHE_FORMAT} cache entry")
        if meta.get("identity") != ident:
            raise InvalidEntry(f"{META_FILE} holds identity {meta.get('identity')!r}, not the "
                               f"requested {ident!r}")
        specs = meta.get("arrays")
        if not isinstance(specs, dict) or not specs:
            raise InvalidEntry(f"{META_FILE} lists no arrays")
        arrays = {}
        for name, spec in specs.items():
            if not _ARRAY_NAME.match(str(name)):
                raise InvalidEntry(f"{META_FILE} lists an array named {name!r}")
            try:
                shape, dtype, digest = tuple(spec["shape"]), spec["dtype"], spec["sha256"]
            except (KeyError, TypeError) as e:
                raise InvalidEntry(f"{META_FILE} has a malformed record for {name!r}") from e
            file = path / f"{name}.npy"
            try:
                arr = np.load(file, mmap_mode="r", allow_pickle=False)
            # Any failure means a damaged file: NumPy raises EOFError (zero bytes), ValueError,
            # or its header parser's SyntaxError / tokenize.TokenError (garbled header).
            except Exception as e:
                raise InvalidEntry(f"cannot memory-map {file.name}: {type(e).__name__}: {e}") from e
            if arr.shape != shape or arr.dtype.str != dtype:
                raise InvalidEntry(f"{file.name} holds {arr.shape} {arr.dtype.str}, metadata "
                                   f"says {shape} {dtype}")
            size = file.stat().st_size
            if size != arr.offset + arr.nbytes:
                raise InvalidEntry(f"{file.name} is {size} bytes, expected "
                                   f"{arr.offset + arr.nbytes}")
            if verify and _sha256(arr) != digest:
                raise InvalidEntry(f"{file.name} fails its sha256 checksum")
            arrays[name] = arr
        return arrays, meta

    def _remove_stale_writes(self, tmp_root: Path, own_key: str) -> None:
        """Delete ``.tmp/<key>.*`` left by killed writers, of every key whose lock is free.

        A writer holds its key's lock while its ``.tmp`` folder exists, so a folder whose key
        can be locked now (without waiting) belongs to no live writer. ``own_key``'s lock is held
        by the caller.
        """
        for key in sorted({p.name.split(".", 1)[0] for p in tmp_root.iterdir()}):
            lock = None
            if key != own_key:
                lock = FileLock(self.root / ".locks" / f"{key}.lock")
                try:
                    lock.acquire(timeout=0)
                except Timeout:  # a live writer (this or another process) is using it
                    continue
            try:
                for leftover in tmp_root.glob(f"{key}.*"):
                    log.info("embedding cache %s: removing %s left by an interrupted write",
                             key[:12], leftover)
                    shutil.rmtree(leftover, ignore_errors=True)
            finally:
                if lock is not None:
                    lock.release()

    def _store_locked(self, key: str, ident: dict, arrays, compute_seconds: float | None):
        """Write an entry atomically (caller holds the key's lock); returns it memmapped."""
        arrays = _checked_arrays(arrays)
        t0 = time.perf_counter()
        tmp_root = self.root / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_writes(tmp_root, key)
        tmp = tmp_root / f"{key}.{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        path = self.root / key
        try:
            specs = {}
            for name, arr in arrays.items():
                atomic_save_npy(tmp / f"{name}.npy", arr)
                specs[name] = {"shape": list(arr.shape), "dtype": arr.dtype.str,
                               "nbytes": int(arr.nbytes), "sha256": _sha256(arr)}
            meta = {"format": CACHE_FORMAT, "key": key, "entry_id": uuid.uuid4().hex,
                    "identity": ident, "arrays": specs,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "compute_seconds": compute_seconds, "versions": _library_versions()}
            atomic_write_json(tmp / META_FILE, meta)  # last: without it an entry is incomplete
            fsync_dir(tmp)
            replace_dir(tmp, path, aside=tmp_root / f"{key}.old-{uuid.uuid4().hex[:12]}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(self.root / ".work" / key, ignore_errors=True)
        mb = sum(s["nbytes"] for s in specs.values()) / 1e6
        log.info("embedding cache %s: stored %.1f MB in %.2f s (%s)", key[:12], mb,
                 time.perf_counter() - t0, path)
        return self._read_entry(path, ident, verify=False)[0]
