"""Hugging Face transformers image-text models: CLIP, SigLIP, ALIGN and BLIP retrieval.

``model_id`` is a hub id (``openai/clip-vit-base-patch32``, ``google/siglip-base-patch16-224``,
``kakaobrain/align-base``, ``Salesforce/blip-itm-base-coco``) or a local folder saved with
``save_pretrained`` (model, tokenizer and image processor). The transformers class and the way
embeddings are read from it come from ``ARCHITECTURES``, keyed by the checkpoint's
``config.architectures[0]`` (override with ``architecture``):

- dual encoders (``CLIPModel``, ``SiglipModel``, ``AlignModel``): ``get_image_features`` /
  ``get_text_features`` (a tensor in transformers 4.x, an output object whose
  ``pooler_output`` holds the projected features in 5.x).
- ``BlipForImageTextRetrieval``: the contrastive (ITC) embeddings, i.e. what its
  ``forward(use_itm_head=False)`` compares: ``vision_proj`` of the vision [CLS] state and
  ``text_proj`` of the text [CLS] state, the text encoded without cross-attention to the image.
  The image-text matching head is not used.

Text: ``text_padding="max_length"`` pads every caption to ``max_text_length`` (SigLIP needs
this: it was trained so and pools the last position); ``max_text_length`` defaults to the
smaller of the tokenizer's and the text model's limits. ``caption_style="blip"`` cleans
captions as BLIP's own evaluation does (lower case, ``.!"()*#:;~`` -> spaces) before
tokenising. Weights stay float32; fp16/bf16 run under autocast. ``import nnn.encoders.hf``
does not import transformers: ``load()`` does.

The constructor's arguments stay as given; ``load()`` records what it resolved in
``model_class`` (the transformers class used) and ``text_length`` (tokens per caption).

Cache identity (no weights, no download): model id and revision (or, for a local folder, its
files' fingerprint), the configured architecture / text options / caption style, the
transformers version, precision and adapter version. The image processor and tokenizer come
with the checkpoint, so model id + revision determine them. With ``revision: null`` the
identity names the hub's main branch, whatever commit it holds: pin a commit for embeddings
that must never be silently mixed across model updates.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from nnn.encoders.sources import fingerprint, hub_access
from nnn.encoders.torch_model import TorchModelEncoder, import_or_explain, installed_version
from nnn.errors import MissingResourceError

_INSTALL = "pip install transformers (or this project's [encoders] extra)"


def _pooled(output) -> torch.Tensor:
    """A features tensor, or (transformers 5.x) the ``pooler_output`` of an output object."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class DualEncoderHead:
    """Models with ``get_image_features`` / ``get_text_features`` (projected embeddings)."""

    @staticmethod
    def image(model, pixel_values: torch.Tensor) -> torch.Tensor:
        return _pooled(model.get_image_features(pixel_values=pixel_values))

    @staticmethod
    def text(model, tokens: dict) -> torch.Tensor:
        return _pooled(model.get_text_features(**tokens))


class BlipContrastiveHead:
    """``BlipForImageTextRetrieval``: projections of the unimodal [CLS] states (ITC, not ITM)."""

    @staticmethod
    def image(model, pixel_values: torch.Tensor) -> torch.Tensor:
        states = model.vision_model(pixel_values=pixel_values).last_hidden_state
        return model.vision_proj(states[:, 0, :])

    @staticmethod
    def text(model, tokens: dict) -> torch.Tensor:
        states = model.text_encoder(input_ids=tokens["input_ids"],
                                    attention_mask=tokens.get("attention_mask")).last_hidden_state
        return model.text_proj(states[:, 0, :])


#: transformers class name -> how embeddings are read from it
ARCHITECTURES = {
    "CLIPModel": DualEncoderHead,
    "SiglipModel": DualEncoderHead,
    "AlignModel": DualEncoderHead,
    "BlipForImageTextRetrieval": BlipContrastiveHead,
}


_BLIP_PUNCTUATION = re.compile(r'[.!"()*#:;~]')
#: what a hub id can look like (``name`` or ``org/name``); any other model_id is a local folder
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?\Z")


def blip_caption(text: str) -> str:
    """BLIP's evaluation-time caption cleaning: lower case, ``.!"()*#:;~`` become spaces,
    whitespace runs collapse to one space."""
    return " ".join(_BLIP_PUNCTUATION.sub(" ", text.lower()).split())


#: caption_style -> function applied to each caption before tokenising (None: as given)
CAPTION_STYLES = {"raw": None, "blip": blip_caption}


class HFImageTransform:
    """Picklable PIL image -> (3, H, W) float tensor through a transformers image processor."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"HFImageTransform({type(self.processor).__name__})"


class HFCaptionTokens:
    """Picklable: b captions -> {input_ids, attention_mask, ...} CPU tensors of a transformers
    tokenizer, after the caption style's cleaning (``clean``, None: as given)."""

    def __init__(self, tokenizer, clean, padding: str, max_length: int):
        self.tokenizer, self.clean, self.padding, self.max_length = (tokenizer, clean, padding,
                                                                     max_length)

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        if self.clean is not None:
            captions = [self.clean(c) for c in captions]
        return dict(self.tokenizer(captions, padding=self.padding, truncation=True,
                                   max_length=self.max_length, return_tensors="pt"))


class HFEncoder(TorchModelEncoder):
    """A transformers image-text model -> L2-normalised float32 embeddings (b, d)."""

    family = "hf"
    adapter_version = "1"

    def __init__(self, *, model_id: str, revision: str | None = None,
                 architecture: str | None = None, text_padding: str = "longest",
                 max_text_length: int | None = None, caption_style: str = "raw",
                 cache_dir: str | None = None,
                 device: str = "auto", precision: str = "fp32", batch_size: int = 256):
        super().__init__(device=device, precision=precision, batch_size=batch_size)
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"model_id must be a Hugging Face model id or a local folder, got "
                             f"{model_id!r}")
        if architecture is not None and architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={architecture!r} is not supported; choose one of "
                             f"{sorted(ARCHITECTURES)} (or null to read it from the checkpoint)")
        if text_padding not in ("longest", "max_length"):
            raise ValueError(f"text_padding must be 'longest' or 'max_length', got "
                             f"{text_padding!r}")
        if caption_style not in CAPTION_STYLES:
            raise ValueError(f"caption_style must be one of {sorted(CAPTION_STYLES)}, got "
                             f"{caption_style!r}")
        if max_text_length is not None and (isinstance(max_text_length, bool)
                                            or not isinstance(max_text_length, int)
                                            or max_text_length < 2):
            raise ValueError(f"max_text_length must be an integer >= 2 or null, got "
                             f"{max_text_length!r}")
        self.model_id = model_id
        self.revision = revision
        self.architecture = architecture
        self.text_padding = text_padding
        self.max_text_length = max_text_length
        self.caption_style = caption_style
        self.cache_dir = cache_dir
        self.model_class: str | None = None  # resolved by load()
        self.text_length: int | None = None  # resolved by load()
        self._head = None
        self._tokenizer = None

    @property
    def _local_dir(self) -> Path | None:
        """The local folder ``model_id`` names, None for a hub id; MissingResourceError for a
        path (``/``, ``./``, ``~``, a file) that is not a folder."""
        path = Path(self.model_id).expanduser()
        if path.is_dir():
            return path
        if path.exists() or not _HUB_ID.match(self.model_id):
            what = "is not a folder" if path.exists() else "does not exist"
            raise MissingResourceError(f"model folder {path.absolute()} (model.model_id) {what}; "
                                       "give a folder saved with save_pretrained (model, "
                                       "tokenizer, image processor) or a hub id such as "
                                       "openai/clip-vit-base-patch32")
        return None

    def _how_to_fetch(self) -> str:
        return (f"run once with network access (files are cached), or pre-download with "
                f"`hf download {self.model_id}"
                f"{f' --revision {self.revision}' if self.revision else ''}` on a machine that "
                "has it and copy the Hugging Face "
                "cache (HF_HOME), or set model.model_id to a local folder saved with "
                "save_pretrained")

    def _architecture(self, config) -> str:
        if self.architecture is not None:
            return self.architecture
        found = (getattr(config, "architectures", None) or [None])[0]
        if found not in ARCHITECTURES:
            raise ValueError(f"{self.model_id}: checkpoint architecture {found!r} is not one this "
                             f"adapter knows ({sorted(ARCHITECTURES)}); set model.architecture "
                             "to the one whose outputs it matches")
        return found

    def _text_limit(self, config) -> int:
        """max_text_length (ValueError when the text model has fewer positions), else
        min(tokenizer limit, text model's position embeddings)."""
        positions = getattr(getattr(config, "text_config", None), "max_position_embeddings", None)
        if self.max_text_length is not None:
            if isinstance(positions, int) and self.max_text_length > positions:
                raise ValueError(f"model.max_text_length={self.max_text_length} is more than the "
                                 f"{positions} token positions of {self.model_id}'s text model; "
                                 f"set it to at most {positions}, or null")
            return self.max_text_length
        limits = [self._tokenizer.model_max_length, positions]
        limits = [n for n in limits if isinstance(n, int) and 1 < n < 100_000]
        if not limits:
            raise ValueError(f"{self.model_id}: cannot tell the longest caption the text model "
                             "takes; set model.max_text_length")
        return min(limits)

    def _load(self, device: torch.device) -> None:
        transformers = import_or_explain("transformers", _INSTALL)
        local = self._local_dir
        what = f"Hugging Face model {self.model_id}" \
            + (f"@{self.revision}" if self.revision else "")
        with hub_access(what, self._how_to_fetch(), remote=local is None) as offline:
            kw = {"revision": self.revision, "cache_dir": self.cache_dir,
                  "local_files_only": offline}
            config = transformers.AutoConfig.from_pretrained(self.model_id, **kw)
            architecture = self._architecture(config)
            model = getattr(transformers, architecture).from_pretrained(self.model_id, **kw)
            processor = transformers.AutoImageProcessor.from_pretrained(self.model_id, **kw)
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_id, **kw)
        self.model_class = architecture
        self._head = ARCHITECTURES[architecture]
        self._model = model.float().to(device)
        self._preprocess = HFImageTransform(processor)
        self.text_length = self._text_limit(model.config)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._head.image(self._model, pixels)

    def _caption_tokens(self) -> HFCaptionTokens:
        return HFCaptionTokens(self._tokenizer, CAPTION_STYLES[self.caption_style],
                               self.text_padding, self.text_length)

    def _token_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._head.text(self._model, {k: v.to(self._device) for k, v in tokens.items()})

    def caption_tokenizer(self) -> HFCaptionTokens | None:
        """None for a fast (Rust) tokenizer, quicker in this process than a worker's round
        trip; the Python ones tokenise in DataLoader workers."""
        tokens = super().caption_tokenizer()
        return None if getattr(self._tokenizer, "is_fast", False) else tokens

    def _describe(self) -> dict:
        local = self._local_dir
        return {"model_id": self.model_id,
                "weights": fingerprint(local) if local is not None
                else {"revision": self.revision},
                "architecture": self.architecture,
                "text": {"padding": self.text_padding, "max_length": self.max_text_length,
                         "caption_style": self.caption_style},
                "library": f"transformers {installed_version('transformers')}"}
