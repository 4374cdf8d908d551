"""Where model weights come from: local files (fingerprinted) or a hub that may be out of reach.

- ``fingerprint(path)``: a JSON-able description of a local file or folder (absolute path, and
  per file its size and mtime) for cache identities; hashing multi-GB checkpoints would be slow.
- ``hub_access(what, how, remote=...)``: a context manager around a model load. When offline
  mode is requested (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) or the hub's host does not
  answer within ``PROBE_TIMEOUT_S``, the load reads only the local cache; any "file not there /
  no network" failure inside becomes ``MissingResourceError`` naming ``what`` and ``how`` to get
  it. It yields whether the load runs offline (transformers also gets ``local_files_only``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.error
from pathlib import Path
from typing import Iterator
from unittest import mock
from urllib.parse import urlparse

from nnn.errors import MissingResourceError

#: seconds to wait for a TCP connection to the hub before treating the machine as offline
PROBE_TIMEOUT_S = 3.0
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def fingerprint(path: str | os.PathLike) -> dict:
    """{"path": absolute path, "files": {relative name: [bytes, mtime_ns]}} of a file or folder."""
    p = Path(path).expanduser().resolve()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return {"path": str(p),
            "files": {(f.name if f == p else str(f.relative_to(p))): [f.stat().st_size,
                                                                      f.stat().st_mtime_ns]
                      for f in files}}


def offline_requested() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value now."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "on", "yes", "true")
               for v in _OFFLINE_VARS)


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the hub's host (``HF_ENDPOINT``, default huggingface.co) accepts a TCP connection.

    True when a proxy is configured (the probe could not tell). Takes milliseconds when name
    resolution fails, at most ``timeout`` seconds when packets are dropped.
    """
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def _download_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the file is neither on disk nor downloadable right now"."""
    types: list[type[BaseException]] = [FileNotFoundError, ConnectionError, TimeoutError,
                                        socket.gaierror, urllib.error.URLError]
    with contextlib.suppress(ImportError):
        from huggingface_hub import errors

        types += [errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled,
                  errors.HfHubHTTPError]
    with contextlib.suppress(ImportError):
        import httpx

        types.append(httpx.TransportError)
    with contextlib.suppress(ImportError):
        import requests

        types.append(requests.ConnectionError)
    return tuple(types)


def is_missing_resource(exc: BaseException, also: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether ``exc`` or an exception it was raised from is a download/cache-miss failure
    (or one of the types in ``also``)."""
    types, seen = _download_error_types() + tuple(also), set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, types):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def hub_access(what: str, how: str, *, remote: bool = True,
               also: tuple[type[BaseException], ...] = ()) -> Iterator[bool]:
    """Run a load of ``what``; yields True when it must work from the local cache only.

    ``remote=False`` (everything is local) skips the network probe. Download and cache-miss
    failures (and exceptions of the types in ``also``, for libraries that raise a bare
    ``OSError`` when a file is missing) are re-raised as ``MissingResourceError``, whose
    message names ``what``, says why (offline / unreachable / the original error) and ends
    with ``how`` to get the files.
    """
    offline, why = False, ""
    if remote:
        if offline_requested():
            offline, why = True, "offline mode is on (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE)"
        elif not hub_reachable():
            offline, why = True, "the Hugging Face hub cannot be reached (no network?)"
    # huggingface_hub retries ~20 s per file when the network is down, and open_clip exposes no
    # per-call switch: flip the hub's offline flag (read at call time) for the load.
    patch = contextlib.nullcontext()
    if offline:
        with contextlib.suppress(ImportError):
            import huggingface_hub.constants

            patch = mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    try:
        with patch:
            yield offline
    except MissingResourceError:
        raise
    except Exception as e:
        if is_missing_resource(e, also):
            reason = why or _first_line(e)  # the full error stays chained below
            raise MissingResourceError(f"{what} is not available ({reason}). To get it: {how}"
                                       ) from e
        raise
