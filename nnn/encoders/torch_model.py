"""What every adapter around a torch model shares: device, precision, autocast, unit-norm outputs.

Precision: the model's weights stay float32; ``fp16``/``bf16`` run the forward pass under
``torch.autocast``. On CPU, ``fp16`` falls back to ``fp32`` with a warning (CPU float16 kernels
are slow or missing), and ``encoder.precision`` then reads ``"fp32"``; the cache identity names
the precision that runs on the encoder's device, decided from the device alone (no load), so it
is the same before and after ``load()``. ``bf16`` works on CPU.

Cache identity: ``cache_identity()`` is built from configuration only (``_describe``), never
from the loaded model, so a run whose embeddings are cached needs neither the weights nor a
network.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import warnings
from abc import abstractmethod
from typing import Callable

import torch

from nnn._arrays import check_positive_int, resolve_device
from nnn.encoders.base import Encoder
from nnn.encoders.pixels import Uint8Finish, split_at_uint8
from nnn.errors import MissingDependencyError

_HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def import_or_explain(module: str, install: str):
    """``importlib.import_module(module)``, or ``MissingDependencyError`` (an ImportError)
    saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"this encoder needs the '{module}' package, which is not "
                                     f"installed in this environment ({e}); install it with: "
                                     f"{install}") from e


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (e.g. ``"transformers"``), None when absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def effective_precision(precision: str, device: torch.device, *, warn: bool = True) -> str:
    """``precision`` as it will run on ``device``: fp16 on CPU becomes fp32 (with a warning
    when ``warn``)."""
    if precision == "fp16" and device.type == "cpu":
        if warn:
            warnings.warn("precision='fp16' is not supported on CPU (float16 kernels are slow "
                          "or missing there); running in fp32 instead. Use precision=bf16 for "
                          "reduced precision on CPU, or a CUDA device for fp16.", UserWarning,
                          stacklevel=3)
        return "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """Autocast context for ``precision`` on ``device`` (``fp32``: no autocast)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_HALF_DTYPES[precision])


def unit_rows(features: torch.Tensor) -> torch.Tensor:
    """(b, d) features of any dtype/device -> (b, d) float32 CPU rows of unit L2 norm."""
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu()


class TorchModelEncoder(Encoder):
    """Base of the adapters that run a torch model (open_clip, transformers, LAVIS).

    Subclasses set ``family`` and implement ``_load(device)`` (build ``self._model`` and
    ``self._preprocess``, a picklable PIL image -> (3, H, W) tensor callable),
    ``_image_features`` ((b, 3, H, W) on the device -> (b, d)), ``_caption_tokens()`` (a
    picklable callable: b captions -> the text model's CPU inputs), ``_token_features`` (those
    inputs -> (b, d)) and ``_describe()`` (identity entries: model, weights, user-set
    preprocessing options, library version; from configuration alone, without loading
    anything). A caption is encoded as ``_token_features(_caption_tokens()(captions))``, in one
    process or with the tokenising in DataLoader workers (``caption_tokenizer``).
    """

    family: str = ""

    def __init__(self, *, device: str = "auto", precision: str = "fp32", batch_size: int = 256):
        super().__init__(device=device, precision=precision,
                         batch_size=check_positive_int(batch_size, "batch_size"))
        self._model = None
        self._preprocess: Callable | None = None
        self._device: torch.device | None = None
        self._split: tuple | None = None  # (the preprocessing it was made from, its split)

    # -- what subclasses provide ------------------------------------------------------------
    @abstractmethod
    def _load(self, device: torch.device) -> None:
        """Build ``self._model`` (float32, on ``device``) and ``self._preprocess``."""

    @abstractmethod
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) on the model's device -> (b, d) unnormalised features."""

    @abstractmethod
    def _caption_tokens(self) -> Callable:
        """The picklable callable (built by ``_load``): b captions -> the text model's inputs on
        the CPU (a tensor, or a mapping of tensors)."""

    @abstractmethod
    def _token_features(self, tokens) -> torch.Tensor:
        """What ``_caption_tokens()`` returned for b captions (moved to the model's device here)
        -> (b, d) unnormalised features."""

    @abstractmethod
    def _describe(self) -> dict:
        """JSON-able identity entries beyond family, precision and adapter_version, computed
        from configuration alone: no weights, no download, the same before and after load()."""

    # -- the Encoder interface --------------------------------------------------------------
    def load(self) -> "TorchModelEncoder":
        self._device = resolve_device(self.device)
        self.precision = effective_precision(self.precision, self._device)
        self._load(self._device)
        self._model.eval()
        return self

    def _loaded_model(self):
        if self._model is None:
            raise RuntimeError(f"{type(self).__name__} is not loaded; call .load() first (it "
                               "builds the model and its preprocessing)")
        return self._model

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def cache_identity(self) -> dict:
        """Family, model, weights, options, library, the precision that runs on the device and
        adapter version; from configuration alone (no load, no download)."""
        precision = effective_precision(self.precision, resolve_device(self.device), warn=False)
        return {"family": self.family, **self._describe(), "precision": precision,
                "adapter_version": self.adapter_version}

    def image_preprocessor(self) -> Callable:
        self._loaded_model()
        return self._preprocess

    def image_transform(self, image) -> torch.Tensor:
        return self.image_preprocessor()(image)

    def _uint8_split(self) -> tuple[Callable, Uint8Finish] | None:
        """``split_at_uint8`` of the loaded preprocessing (computed once)."""
        self._loaded_model()
        if self._split is None or self._split[0] is not self._preprocess:
            self._split = (self._preprocess, split_at_uint8(self._preprocess))
        return self._split[1]

    def uint8_image_preprocessor(self) -> Callable | None:
        split = self._uint8_split()
        return split[0] if split is not None else None

    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        self._loaded_model()
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[1] != 3:
            shape = tuple(getattr(pixels, "shape", ()))
            raise ValueError(f"pixels must be a (b, 3, H, W) tensor from image_transform, got "
                             f"{type(pixels).__name__} of shape {shape}")
        pixels = pixels.to(self._device, non_blocking=True)
        if pixels.dtype == torch.uint8:
            split = self._uint8_split()
            if split is None:
                raise ValueError(f"{type(self).__name__}'s preprocessing does not end in "
                                 "ToTensor/Normalize, so it takes float pixels from "
                                 "image_transform, not uint8 ones")
            pixels = split[1](pixels)
        with torch.inference_mode(), autocast(self._device, self.precision):
            features = self._image_features(pixels.to(torch.float32))
        return unit_rows(features)

    def encode_text_batch(self, captions: list[str]) -> torch.Tensor:
        self._loaded_model()
        captions = list(captions)
        if not captions or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"captions must be a non-empty list of strings, got "
                             f"{[type(c).__name__ for c in captions[:5]] or 'an empty list'}")
        return self.encode_token_batch(self._caption_tokens()(captions))

    def caption_tokenizer(self) -> Callable | None:
        self._loaded_model()
        return self._caption_tokens()

    def encode_token_batch(self, tokens) -> torch.Tensor:
        self._loaded_model()
        with torch.inference_mode(), autocast(self._device, self.precision):
            features = self._token_features(tokens)
        return unit_rows(features)
