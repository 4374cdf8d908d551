"""open_clip models: any ``(model_name, pretrained)`` pair that open_clip knows.

``model_name`` may also be ``hf-hub:ORG/REPO`` (an open_clip model published on the Hugging
Face hub, with ``pretrained=None``). ``pretrained`` is an open_clip tag (``openai``,
``laion2b_s34b_b88k``, ``webli``, ...; ``open_clip.list_pretrained_tags_by_model(name)``), a
local checkpoint file, or ``None`` (random weights: tests). ``model_config_dir`` registers
extra architecture JSON files (``open_clip.add_model_config``), so custom models work by name.
Weights are downloaded on first use into the Hugging Face cache; offline, a missing file
raises ``MissingResourceError``.

The model is built in float32 (``precision="fp32"`` to open_clip); fp16/bf16 run under
autocast (see ``nnn.encoders.torch_model``). A tag whose weights were trained with QuickGELU
(``openai``, ``metaclip_*``, ...) on an architecture whose config says GELU (``ViT-B-32``,
``ViT-L-14``) is built with QuickGELU, as trained (open_clip 3.x would only warn).
``import nnn.encoders.open_clip`` does not import open_clip: ``load()`` and
``cache_identity()`` do.

Cache identity (no weights, no download): model name, pretrained tag (or the local
checkpoint's fingerprint), the architecture's config from open_clip's registry as built
(``quick_gelu`` included; custom ones from ``model_config_dir``; none for ``hf-hub:`` models,
which the repository names), the open_clip version, precision and adapter version. The image
preprocessing and tokenizer follow from the model name and tag in a given open_clip version,
so they are not listed.
"""

from __future__ import annotations

import difflib
import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from nnn.encoders.sources import fingerprint, hub_access
from nnn.encoders.torch_model import TorchModelEncoder, import_or_explain
from nnn.errors import MissingResourceError

_INSTALL = "pip install open_clip_torch (or this project's [encoders] extra)"


@contextmanager
def _download_error_unlogged():
    """open_clip logs "Failed to download weights ..." on the root logger and then raises the
    same error, which ``hub_access`` turns into this adapter's one line: while the block runs
    that log record is dropped, so the user reads the failure once."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to download weights")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


class OpenClipEncoder(TorchModelEncoder):
    """open_clip image and text towers -> L2-normalised float32 embeddings (b, embed_dim)."""

    family = "open_clip"
    adapter_version = "1"

    def __init__(self, *, model_name: str, pretrained: str | None = None,
                 model_config_dir: str | None = None, cache_dir: str | None = None,
                 device: str = "auto", precision: str = "fp32", batch_size: int = 256):
        super().__init__(device=device, precision=precision, batch_size=batch_size)
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be an open_clip model name such as 'ViT-B-32', "
                             f"got {model_name!r}")
        self.model_name = model_name
        self.pretrained = None if pretrained in (None, "", "none", "None") else str(pretrained)
        self.model_config_dir = model_config_dir
        self.cache_dir = cache_dir
        self._tokenizer = None
        self._configs_registered = False

    def _checkpoint_path(self) -> Path | None:
        """The local checkpoint ``pretrained`` names, or None for a tag / no weights."""
        if self.pretrained is None:
            return None
        path = Path(self.pretrained).expanduser()
        looks_like_file = path.suffix in (".pt", ".pth", ".bin", ".safetensors") \
            or "/" in self.pretrained
        if path.is_file():
            return path
        if looks_like_file:
            raise MissingResourceError(f"open_clip checkpoint {path} (model.pretrained) does not "
                                       "exist; give the path of a downloaded checkpoint file, or "
                                       "an open_clip pretrained tag such as 'openai'")
        return None

    @property
    def _hub_repo(self) -> str | None:
        """ORG/REPO for an ``hf-hub:`` model name, else None."""
        return self.model_name[len("hf-hub:"):] if self.model_name.startswith("hf-hub:") else None

    def _check_names(self, open_clip) -> None:
        if self._hub_repo is not None:
            return
        known = open_clip.list_models()
        if self.model_name not in known:
            close = difflib.get_close_matches(self.model_name, known, n=5)
            raise ValueError(f"open_clip has no model {self.model_name!r} (close: {close}); see "
                             "open_clip.list_models(), or register its JSON config with "
                             "model.model_config_dir=DIR")
        if self.pretrained is not None and self._checkpoint_path() is None:
            tags = open_clip.list_pretrained_tags_by_model(self.model_name)
            if self.pretrained not in tags:
                raise ValueError(f"open_clip has no pretrained tag {self.pretrained!r} for "
                                 f"{self.model_name}; known tags: {tags}, or give a local "
                                 "checkpoint path, or null for random weights")

    def _how_to_fetch(self, open_clip) -> str:
        repo = self._hub_repo or (open_clip.get_pretrained_cfg(self.model_name, self.pretrained)
                                  .get("hf_hub", "") if self.pretrained else "").strip("/")
        fetch = f"`hf download {repo}`" if repo else "any run with network access"
        return (f"run once with network access (files are cached), or pre-download with {fetch} "
                "on a machine that has it and copy the Hugging Face cache (HF_HOME), or set "
                "model.pretrained to a local checkpoint file")

    def _open_clip(self):
        """open_clip, with ``model_config_dir`` registered and the names checked (no download)."""
        open_clip = import_or_explain("open_clip", _INSTALL)
        if self.model_config_dir is not None and not self._configs_registered:
            cfg_dir = Path(self.model_config_dir).expanduser()
            if not cfg_dir.is_dir():
                raise FileNotFoundError(f"model_config_dir {cfg_dir} is not a folder of open_clip "
                                        "model JSON files")
            open_clip.add_model_config(cfg_dir)
            self._configs_registered = True
        self._check_names(open_clip)
        return open_clip

    def _force_quick_gelu(self, open_clip) -> bool:
        """Whether the tag's weights were trained with QuickGELU (``openai``, ``metaclip_*``,
        ...) while the architecture's config builds GELU. open_clip 3.x then only warns and
        runs the weights with the wrong activation; this adapter builds QuickGELU instead, as
        the ``-quickgelu`` configs and open_clip 2.x's OpenAI loader do."""
        if self._hub_repo is not None or self.pretrained is None \
                or self._checkpoint_path() is not None:
            return False
        tag = open_clip.get_pretrained_cfg(self.model_name, self.pretrained)
        return bool(tag.get("quick_gelu")) \
            and not open_clip.get_model_config(self.model_name).get("quick_gelu", False)

    def _model_config(self, open_clip) -> dict | None:
        """The architecture's config as built (from open_clip's registry, ``quick_gelu`` set
        where ``_force_quick_gelu``); None for ``hf-hub:`` models (their config lives in the
        repository: reading it would download)."""
        if self._hub_repo is not None:
            return None
        config = open_clip.get_model_config(self.model_name)
        return {**config, "quick_gelu": True} if self._force_quick_gelu(open_clip) else config

    def _load(self, device: torch.device) -> None:
        open_clip = self._open_clip()
        checkpoint = self._checkpoint_path()
        text_cfg = (self._model_config(open_clip) or {}).get("text_cfg", {})
        remote = (self.pretrained is not None and checkpoint is None) \
            or self._hub_repo is not None or bool(text_cfg.get("hf_tokenizer_name"))
        what = f"open_clip model {self.model_name} (pretrained={self.pretrained})"
        with hub_access(what, self._how_to_fetch(open_clip), remote=remote), \
                _download_error_unlogged():
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name, pretrained=str(checkpoint) if checkpoint else self.pretrained,
                precision="fp32", device=device, cache_dir=self.cache_dir,
                force_quick_gelu=self._force_quick_gelu(open_clip))
            self._tokenizer = open_clip.get_tokenizer(self.model_name, cache_dir=self.cache_dir)
        self._model, self._preprocess = model, preprocess

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._model.encode_image(pixels)

    def _caption_tokens(self):
        return self._tokenizer  # open_clip's tokenizer: captions -> (b, context) int64

    def _token_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._model.encode_text(tokens.to(self._device))

    def caption_tokenizer(self):
        """open_clip's own BPE tokenizer (Python) for DataLoader workers; None for the models
        whose tokenizer wraps a Hugging Face (Rust) one, which is fast here and would warn
        about being forked."""
        from open_clip.tokenizer import SimpleTokenizer

        tokenize = super().caption_tokenizer()
        return tokenize if isinstance(tokenize, SimpleTokenizer) else None

    def _describe(self) -> dict:
        open_clip = self._open_clip()
        checkpoint = self._checkpoint_path()
        return {"model_name": self.model_name,
                "pretrained": fingerprint(checkpoint) if checkpoint else self.pretrained,
                "model_config": self._model_config(open_clip),
                "library": f"open_clip {open_clip.__version__}"}
