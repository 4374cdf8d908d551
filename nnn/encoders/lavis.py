"""LAVIS (salesforce-lavis) retrieval models: ALBEF and BLIP fine-tuned on COCO or Flickr30k.

LAVIS 1.0.2 pins timm==0.4.12 and transformers<4.27, so it cannot share an environment with
open_clip 3.x: it lives in its own environment, set up as in ``docs/lavis.md``. ``import
nnn.encoders.lavis`` does not import LAVIS: ``load()`` does, and explains this when it is absent.

Model: ``lavis.models.load_model_and_preprocess(name, model_type, is_eval=True, device=...)``,
e.g. ``albef_retrieval`` / ``blip_retrieval`` with ``coco`` or ``flickr``. The retrieval models
have no ``extract_features``; the embeddings are their contrastive (ITC) features, computed as
LAVIS's own retrieval evaluation does before its ITM re-ranking:

- image: ``vision_proj(visual_encoder.forward_features(image)[:, 0, :])``;
- text: the ``eval`` text processor on each caption, then ``model.tokenizer`` (padded to
  ``max_text_length``, 35 as in LAVIS's evaluation) and
  ``text_proj(text_encoder.forward_text(tokens).last_hidden_state[:, 0, :])``;

both L2-normalised. Images go through the ``eval`` visual processor (a picklable transform;
for ``BlipImageEvalProcessor`` its torchvision ``Compose``, which on a GPU splits at uint8).

Cache identity (no weights, no LAVIS import): name, model type, ``max_text_length``, the
installed salesforce-lavis version (its processors follow from name and model type),
precision and adapter version. Outside the LAVIS environment the version reads None, so
entries computed there are found only from there.
"""

from __future__ import annotations

import importlib

import torch

from nnn.encoders.sources import hub_access
from nnn.encoders.torch_model import TorchModelEncoder, installed_version
from nnn.errors import MissingDependencyError

LAVIS_ENV_HINT = ("LAVIS (salesforce-lavis 1.0.2) pins timm==0.4.12 and transformers<4.27, so it "
                  "cannot be installed beside open_clip 3.x. Create a separate environment for it "
                  "as described step by step in docs/lavis.md, and run the ALBEF/BLIP (LAVIS) "
                  "extraction from there.")


def import_lavis_models():
    """``lavis.models``, or ``MissingDependencyError`` (an ImportError) saying to install
    salesforce-lavis in an environment of its own."""
    try:
        return importlib.import_module("lavis.models")
    except ImportError as e:
        raise MissingDependencyError(f"this model needs LAVIS (pip install salesforce-lavis), "
                                     f"which could not be imported ({e}). {LAVIS_ENV_HINT}") from e


def _bare_transform(processor):
    """The torchvision ``Compose`` inside LAVIS's ``BlipImageEvalProcessor`` (the ``eval`` image
    processor of ALBEF and BLIP retrieval), else ``processor`` itself. That processor's
    ``__call__(item)`` is ``self.transform(item)`` over ``Compose([Resize, ToTensor,
    Normalize])`` (lavis/processors/blip_processors.py), so the ``Compose`` is the very same
    preprocessing, and unlike the processor object it splits at uint8 (``nnn.encoders.pixels``)
    for GPU extraction."""
    from torchvision.transforms import Compose

    transform = getattr(processor, "transform", None)
    if type(processor).__name__ == "BlipImageEvalProcessor" and isinstance(transform, Compose):
        return transform
    return processor


class LavisCaptionTokens:
    """Picklable: b captions -> the ``eval`` text processor on each, then the model's BERT
    tokenizer, padded to ``max_length`` (the tokenizer's output, with ``.to(device)``)."""

    def __init__(self, text_processor, tokenizer, max_length: int):
        self.text_processor, self.tokenizer, self.max_length = text_processor, tokenizer, max_length

    def __call__(self, captions: list[str]):
        return self.tokenizer([self.text_processor(c) for c in captions], padding="max_length",
                              truncation=True, max_length=self.max_length, return_tensors="pt")


class LavisEncoder(TorchModelEncoder):
    """A LAVIS ALBEF/BLIP retrieval model -> L2-normalised float32 ITC embeddings (b, 256)."""

    family = "lavis"
    adapter_version = "1"

    def __init__(self, *, name: str = "albef_retrieval", model_type: str = "coco",
                 max_text_length: int = 35, device: str = "auto", precision: str = "fp32",
                 batch_size: int = 256):
        super().__init__(device=device, precision=precision, batch_size=batch_size)
        for key, value in (("name", name), ("model_type", model_type)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key} must be a non-empty string (e.g. name='albef_retrieval', "
                                 f"model_type='coco'), got {value!r}")
        if isinstance(max_text_length, bool) or not isinstance(max_text_length, int) \
                or max_text_length < 2:
            raise ValueError(f"max_text_length must be an integer >= 2, got {max_text_length!r}")
        self.name = name
        self.model_type = model_type
        self.max_text_length = max_text_length
        self._text_processor = None

    def _load(self, device: torch.device) -> None:
        models = import_lavis_models()
        what = f"LAVIS model {self.name} ({self.model_type}) or its bert-base-uncased tokenizer"
        how = ("run once with network access in the LAVIS environment (LAVIS caches the "
               "checkpoint under its cache folder and the tokenizer in the Hugging Face cache)")
        # LAVIS's transformers (<4.27) raises a bare OSError when the tokenizer is not cached
        with hub_access(what, how, remote=True, also=(OSError,)):
            model, vis_processors, txt_processors = models.load_model_and_preprocess(
                name=self.name, model_type=self.model_type, is_eval=True, device=device)
        self._model = model.float().to(device)
        self._preprocess = _bare_transform(vis_processors["eval"])
        self._text_processor = txt_processors["eval"]

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        states = self._model.visual_encoder.forward_features(pixels)
        return self._model.vision_proj(states[:, 0, :])

    def _caption_tokens(self) -> "LavisCaptionTokens":
        return LavisCaptionTokens(self._text_processor, self._model.tokenizer,
                                  self.max_text_length)

    def _token_features(self, tokens) -> torch.Tensor:
        states = self._model.text_encoder.forward_text(tokens.to(self._device)).last_hidden_state
        return self._model.text_proj(states[:, 0, :])

    def _describe(self) -> dict:
        return {"name": self.name, "model_type": self.model_type,
                "max_text_length": self.max_text_length,
                "library": f"salesforce-lavis {installed_version('salesforce-lavis')}"}
