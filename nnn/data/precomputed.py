"""Embeddings the user computed elsewhere, read from ``.npy``, ``.pt`` or ``.safetensors`` files.

An evaluation split is an image file (n_img, d), a text file (n_cap, d) and a caption->image
index, given as ``caption_index``:

- ``"identity"``: caption j describes image j (n_cap == n_img);
- an int N: consecutive blocks, caption j describes image j // N (n_cap == N * n_img);
- a file: ``.npy`` / ``.pt`` / ``.safetensors`` (a 1-D integer array), ``.json`` (a list of
  integers) or ``.txt`` (one integer per line): the image row of each caption;
- an integer array (when called from Python).

The training split (source of references, banks and the tuning split) comes from
``train_image_path`` / ``train_text_path`` / ``train_caption_index`` when given; otherwise a
seeded ``train_fraction`` of the images (with their captions) is split off as "train" and the
rest is "test" (disjoint, see ``nnn.data.splits.train_test_split``).

A missing file raises ``nnn.errors.MissingResourceError`` naming the path and what to put there.
Nothing is unpickled: ``np.load(allow_pickle=False)``, ``torch.load(weights_only=True)`` and
``safetensors`` only. A ``.pt`` / ``.safetensors`` file must hold one tensor (or a dict with a
single tensor); an empty, truncated or garbled file raises a one-line ``ValueError`` naming it
(``load_array``, also used by ``nnn.encoders.precomputed``). Embeddings are checked (2-D,
floating, finite, same dimension); rows that are not L2-normalised give a warning, or are
normalised with ``normalize=True``. Relative paths are relative to the current working directory.

Example, on real CLIP ViT-L/14 embeddings of 1,000 Flickr30k image-caption pairs (one caption
per image, row i of the text file describes row i of the image file)::

    from nnn.data.precomputed import PrecomputedDataset
    root = "../shared/data/flickr30k_clip_vitl14_1k"  # relative to the repository root
    data = PrecomputedDataset(image_path=f"{root}/image_embeddings.npy",
                              text_path=f"{root}/text_embeddings.npy",
                              caption_index="identity", train_fraction=0.5, seed=0)
    splits = data.splits()  # {"train": 500 images x 500 captions, "test": the other 500}
"""

from __future__ import annotations

import json
import logging
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors

from nnn._arrays import as_matrix, check_positive_int
from nnn.data.base import EmbeddingSet, check_image_rows
from nnn.data.splits import train_test_split
from nnn.errors import MissingResourceError

log = logging.getLogger(__name__)

ARRAY_SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")
INDEX_SUFFIXES = ARRAY_SUFFIXES + (".json", ".txt")


def _existing_file(path, what: str, expected: str, suffixes: tuple[str, ...]) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingResourceError(f"{what} file {str(path)!r} does not exist (resolved to "
                                   f"{str(path.resolve())!r}); provide {expected}")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{what} file {str(path)!r} has unsupported type {path.suffix!r}; "
                         f"save it as one of {', '.join(suffixes)}")
    return path


#: How each format's files begin: the .npy header, torch.save's zip (or legacy pickle) file.
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
_MAGIC = {".npy": (b"\x93NUMPY",), ".pt": _TORCH_MAGIC, ".pth": _TORCH_MAGIC}


def _read(path: Path, suffix: str, mmap: bool):
    """The object in ``path`` as its format's library returns it (its errors pass through)."""
    if suffix == ".npy":
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    if suffix == ".safetensors":
        return load_safetensors(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_array(path, what: str = "array", *, expected: str = "an (n, d) array",
               ndim: int | None = None, kinds: str | None = None,
               mmap: bool = False) -> np.ndarray:
    """One NumPy array from .npy / .pt / .pth / .safetensors, never unpickling anything.

    ``.pt``/``.safetensors`` files hold one tensor (or a dict with one); floating tensors become
    float32 (bfloat16 has no NumPy type). ``ndim`` / ``kinds`` (dtype kinds, e.g. ``"f"``) are
    checked when given; ``mmap`` memory-maps a ``.npy`` file. A missing file raises
    ``MissingResourceError``; an empty, truncated, garbled or unsafe one a one-line
    ``ValueError`` naming the file and the problem.
    """
    path = _existing_file(path, what, f"{expected} saved as .npy, .pt or .safetensors",
                          ARRAY_SUFFIXES)
    suffix = path.suffix.lower()
    name = f"{what} file {str(path)!r}"
    redo = f"write it again as {expected} (np.save, torch.save(tensor) or safetensors)"
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise ValueError(f"{name} is empty (0 bytes), e.g. an interrupted write; {redo}")
    if suffix in _MAGIC and not head.startswith(_MAGIC[suffix]):
        raise ValueError(f"{name} is not a {suffix} file (it starts with {head!r}); {redo}")
    try:
        obj = _read(path, suffix, mmap)
    except pickle.UnpicklingError:  # a torch.save file holding more than tensors
        raise ValueError(f"{name} holds objects that torch.load(weights_only=True) refuses to "
                         "unpickle (e.g. NumPy arrays or custom classes); save a plain tensor "
                         "with torch.save(tensor, path)") from None
    except ValueError as err:
        # NumPy's words for an object array: "pickled" (load) or "Python objects" (mmap)
        if suffix != ".npy" or not any(w in str(err) for w in ("pickle", "Python objects")):
            raise _unreadable(name, err, redo) from err
        raise ValueError(f"{name} holds Python objects (an object array); it is not loaded "
                         "because that would unpickle it. Save a numeric array, e.g. "
                         "np.save(path, x.astype(np.float32))") from None
    except Exception as err:  # the formats' own: EOFError, SafetensorError, zip RuntimeError...
        raise _unreadable(name, err, redo) from err
    if isinstance(obj, dict):
        if len(obj) != 1:
            raise ValueError(f"{name} holds {len(obj)} tensors {sorted(obj)[:10]}; save exactly "
                             "one tensor per file")
        obj = next(iter(obj.values()))
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu()
        obj = (obj.float() if obj.is_floating_point() else obj).numpy()
    if not isinstance(obj, np.ndarray):
        raise ValueError(f"{name} holds a {type(obj).__name__}, not a tensor; save a plain "
                         "tensor with torch.save(tensor, path)")
    if (ndim is not None and obj.ndim != ndim) or (kinds is not None
                                                   and obj.dtype.kind not in kinds):
        raise ValueError(f"{name} holds shape {obj.shape} dtype {obj.dtype}; expected {expected}")
    return obj


def _unreadable(name: str, err: Exception, redo: str) -> ValueError:
    """The one-line error for a file its format's library cannot read."""
    detail = " ".join(str(err).split())[:200] or "no detail"
    return ValueError(f"{name} is truncated or corrupt ({type(err).__name__}: {detail}); {redo}")


def _read_txt_index(path: Path) -> np.ndarray:
    """The integers of a text index file; an empty file is an empty array, without NumPy's
    "input contained no data" warning beside the length error that follows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input contained no data", category=UserWarning)
        return np.loadtxt(path, dtype=np.int64, ndmin=1)


def load_caption_index(spec, *, n_captions: int, n_images: int,
                       where: str = "caption_index") -> np.ndarray:
    """The caption->image index (n_captions,) int64 described by ``spec`` (see module doc).

    The range is checked here (before the cast, which would wrap large unsigned values), that
    every image has a caption by ``EmbeddingSet``.
    """
    if isinstance(spec, str) and spec == "identity":
        if n_captions != n_images:
            raise ValueError(f"{where}='identity' needs as many captions as images, got "
                             f"{n_captions} captions and {n_images} images; pass "
                             "captions_per_image as an int or an index file")
        return np.arange(n_captions, dtype=np.int64)
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        per_image = check_positive_int(spec, where)
        if n_captions != per_image * n_images:
            raise ValueError(f"{where}={per_image} (captions per image) needs {per_image} x "
                             f"{n_images} = {per_image * n_images} captions, got {n_captions}")
        return np.arange(n_captions, dtype=np.int64) // per_image
    if isinstance(spec, (str, Path)):
        path = _existing_file(spec, where, "the image row of each caption (n_captions integers) "
                              "in it, or use 'identity' (caption j describes image j) or an int "
                              "N (N consecutive captions per image)", INDEX_SUFFIXES)
        suffix = path.suffix.lower()
        if suffix in (".json", ".txt"):
            try:
                idx = (np.asarray(json.loads(path.read_text(encoding="utf-8")))
                       if suffix == ".json" else _read_txt_index(path))
            except ValueError as err:  # also UnicodeDecodeError, JSONDecodeError
                raise _unreadable(f"{where} file {str(path)!r}", err,
                                  "write one image row per caption") from err
        else:
            idx = load_array(path, where, expected="a 1-D integer array")
    else:
        idx = spec
    if isinstance(idx, torch.Tensor):
        idx = idx.numpy()
    idx = np.asarray(idx)
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or len(idx) != n_captions:
        raise ValueError(f"{where} must be {n_captions} integers (one image row per caption), "
                         f"got shape {idx.shape} dtype {idx.dtype}")
    return check_image_rows(idx, n_images, f"{where}: caption_to_image")


def load_embedding_set(image_path, text_path, caption_index="identity", *, name: str = "test",
                       normalize: bool = False, dim: int | None = None) -> EmbeddingSet:
    """Read image (n_img, d) and text (n_cap, d) embeddings and their caption->image index."""
    image = as_matrix(load_array(image_path, f"{name} image embeddings",
                                 expected="(n_images, d) float embeddings"),
                      f"{name} image embeddings ({image_path})", dim=dim, normalize=normalize)
    text = as_matrix(load_array(text_path, f"{name} text embeddings",
                                expected="(n_captions, d) float embeddings"),
                     f"{name} text embeddings ({text_path})", dim=image.shape[1],
                     normalize=normalize)
    c2i = load_caption_index(caption_index, n_captions=len(text), n_images=len(image),
                             where=f"{name} caption_index")
    meta = {"source": "precomputed", "image_path": str(image_path), "text_path": str(text_path)}
    return EmbeddingSet(name, image, text, c2i, meta)


class PrecomputedDataset:
    """User-supplied embeddings; ``splits()`` -> {"train", "test": EmbeddingSet}, ``split(name)``.

    Keyword-only: ``image_path``, ``text_path``, ``caption_index`` (evaluation split);
    ``train_image_path``, ``train_text_path``, ``train_caption_index`` (optional training split;
    its index defaults to ``caption_index`` when that is "identity" or an int);
    ``train_fraction`` and ``seed`` (used only without training files); ``normalize``. The
    files are read once, on first use; later calls return the same ``EmbeddingSet`` objects.
    """

    def __init__(self, *, image_path, text_path, caption_index="identity",
                 train_image_path=None, train_text_path=None, train_caption_index=None,
                 train_fraction: float = 0.5, seed: int = 0, normalize: bool = False):
        if (train_image_path is None) != (train_text_path is None):
            raise ValueError("give both train_image_path and train_text_path, or neither (then "
                             f"train_fraction={train_fraction} of the images become the training "
                             "split)")
        if train_image_path is not None and train_caption_index is None:
            if isinstance(caption_index, (str, Path)) and caption_index != "identity":
                raise ValueError("caption_index is a file, so train_caption_index must be given "
                                 "too (the index of the training captions)")
            train_caption_index = caption_index
        for key, test_file, train_file in (("image_path", image_path, train_image_path),
                                           ("text_path", text_path, train_text_path)):
            same = train_file is not None and (Path(train_file).expanduser().resolve()
                                               == Path(test_file).expanduser().resolve())
            if same:
                raise ValueError(f"train_{key}={str(train_file)!r} is the evaluation file {key}; "
                                 "references and the tuning part would then be the test items. "
                                 "Give the training split's files, or leave both train paths "
                                 f"null to split off train_fraction={train_fraction} of the "
                                 "images (disjoint)")
        self.image_path, self.text_path, self.caption_index = image_path, text_path, caption_index
        self.train_image_path, self.train_text_path = train_image_path, train_text_path
        self.train_caption_index = train_caption_index
        self.train_fraction, self.seed, self.normalize = train_fraction, seed, normalize
        self._splits: dict[str, EmbeddingSet] | None = None

    def splits(self) -> dict[str, EmbeddingSet]:
        """{"train": training split, "test": evaluation split} (files read on the first call)."""
        if self._splits is None:
            self._splits = self._read_splits()
        return dict(self._splits)

    def _read_splits(self) -> dict[str, EmbeddingSet]:
        test = load_embedding_set(self.image_path, self.text_path, self.caption_index,
                                  name="test", normalize=self.normalize)
        if self.train_image_path is not None:
            train = load_embedding_set(self.train_image_path, self.train_text_path,
                                       self.train_caption_index, name="train",
                                       normalize=self.normalize, dim=test.dim)
            return {"train": train, "test": test}
        train_rows, test_rows = train_test_split(len(test.image),
                                                 train_fraction=self.train_fraction, seed=self.seed)
        log.info("no training files: %d of %d images (seed %d) form the training split",
                 len(train_rows), len(test.image), self.seed)
        return {"train": test.subset_images(train_rows, name="train"),
                "test": test.subset_images(test_rows, name="test")}

    def split(self, name: str) -> EmbeddingSet:
        """One split, "train" or "test" (reads the files on first use)."""
        if name not in ("train", "test"):
            raise ValueError(f"unknown split {name!r}; available: ['train', 'test']")
        return self.splits()[name]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"PrecomputedDataset({args})"
