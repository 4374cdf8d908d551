"""Synthetic paired image/text embeddings with CLIP-like statistics and hub items.

The model (all vectors in R^dim, L = ``latent_dim``):

- Drawn once per ``seed`` (shared by all splits, i.e. "the embedding model"): two unit
  *modality offset* directions e_img, e_txt with cosine ``offset_cosine``, and an orthonormal
  content basis B (dim x L) orthogonal to both.
- Image i: content z_i ~ N(0, I_L / L) (norm ~1) and
  ``x_i = normalize(B (z_i + image_noise * eps_i) + image_offset * e_img
  + image_hub_strength * w_i * e_txt)``.
- Caption j of image i (``captions_per_image`` each, consecutive rows):
  ``y_j = normalize(B (z_i + text_noise * eps_j) + text_offset * e_txt
  + text_hub_strength * w_j * e_img)``.
- eps ~ N(0, I_L / L) independently per image and per caption; the hub weights w = u ** hub_power
  with u ~ U(0, 1) are power-law distributed on [0, 1]: most are near 0, a few near 1.

What each part does:

- Offsets (``image_offset``, ``text_offset``, ``offset_cosine``) make the *modality gap*: each
  modality lives in a cone around its own direction, so cosines are not ~1 for matches and ~0
  otherwise but, as for CLIP, ~0.3 and ~0.15.
- Noise (``image_noise``, ``text_noise``) and ``latent_dim`` set how hard retrieval is (the spread
  of unmatched cosines).
- Hub weights push an item towards the centre of the *other* modality: an image with a large w
  scores higher against every caption, so it becomes the top-1 of many captions (a hub), and
  likewise for captions in image->text retrieval. This per-item additive bias is what NNN's b(r)
  estimates from reference queries and removes; with both strengths 0, NNN gains nothing here.

Measured at the defaults on the test split (1,000 images x 5 captions, seeds 0-5), next to
CLIP ViT-L/14 on 1,000 Flickr30k pairs (``/work/shared/data``) in brackets: matched cosine
0.33 +- 0.05 (0.28 +- 0.04), unmatched 0.16 +- 0.06 (0.10 +- 0.05), norm of the mean image 0.75
(0.73) and of the mean caption 0.56 (0.52); text->image R@1 ~51% and image->text R@1 ~75%
uncorrected (CLIP on Flickr30k: 59 / 79); NNN (alpha = 0.75, k = 16, references = 20% of the
training split) adds ~9-10 R@1 points in both directions; the most popular image is the top-1
of 31-39 captions (mean 5; CLIP Flickr30k in the paper's Table 3: 39), 13-16 after NNN.
Generating the default splits takes well under a second.

Splits: ``"train"`` (source of references, banks and the tuning split), ``"val"`` and ``"test"``
(evaluation); each uses its own generator derived from (seed, split), so a split does not depend
on the sizes of the others and the same seed gives identical arrays.
"""

from __future__ import annotations

import numpy as np

from nnn._arrays import check_non_negative, check_positive_int
from nnn.data.base import EmbeddingSet
from nnn.data.splits import check_seed

#: stream ids for np.random.default_rng([seed, stream])
_MODEL_STREAM = 0
_SPLIT_STREAMS = {"train": 1, "val": 2, "test": 3}


class SyntheticDataset:
    """CLIP-like synthetic embeddings; ``splits()`` -> {"train", "val", "test": EmbeddingSet}.

    Keyword-only parameters (see the module docstring for the model): sizes ``n_train``,
    ``n_val`` (0 drops the split), ``n_test`` in images, ``captions_per_image``, ``dim``,
    ``latent_dim``; gap ``image_offset``, ``text_offset``, ``offset_cosine``; difficulty
    ``image_noise``, ``text_noise``; hubs ``image_hub_strength``, ``text_hub_strength``,
    ``hub_power``; ``seed``.
    """

    def __init__(self, *, n_train: int = 5000, n_val: int = 1000, n_test: int = 1000,
                 captions_per_image: int = 5, dim: int = 512, latent_dim: int = 128,
                 image_offset: float = 2.0, text_offset: float = 1.2, offset_cosine: float = 0.3,
                 image_noise: float = 1.5, text_noise: float = 1.5,
                 image_hub_strength: float = 0.35, text_hub_strength: float = 0.2,
                 hub_power: float = 3.0, seed: int = 0):
        self.sizes = {"train": check_positive_int(n_train, "n_train"),
                      "val": 0 if n_val == 0 else check_positive_int(n_val, "n_val"),
                      "test": check_positive_int(n_test, "n_test")}
        self.captions_per_image = check_positive_int(captions_per_image, "captions_per_image")
        self.dim = check_positive_int(dim, "dim")
        self.latent_dim = check_positive_int(latent_dim, "latent_dim", upper=self.dim - 2,
                                             upper_name="dim - 2 (two directions are reserved "
                                                        "for the modality offsets)")
        if not -1 <= offset_cosine <= 1:
            raise ValueError(f"offset_cosine must be in [-1, 1], got {offset_cosine!r}")
        self.offset_cosine = float(offset_cosine)
        for name, value in [("image_offset", image_offset), ("text_offset", text_offset),
                            ("image_noise", image_noise), ("text_noise", text_noise),
                            ("image_hub_strength", image_hub_strength),
                            ("text_hub_strength", text_hub_strength), ("hub_power", hub_power)]:
            setattr(self, name, check_non_negative(value, name))
        self.seed = check_seed(seed)
        self._e_img, self._e_txt, self._basis_t = self._model_directions()

    def _model_directions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """e_img (dim,), e_txt (dim,) and the content basis B^T (L, dim), float32, B orthogonal
        to both directions."""
        rng = np.random.default_rng([self.seed, _MODEL_STREAM])
        q, _ = np.linalg.qr(rng.standard_normal((self.dim, self.latent_dim + 2)))
        c = self.offset_cosine
        e_txt = c * q[:, 0] + np.sqrt(1 - c * c) * q[:, 1]
        return (q[:, 0].astype(np.float32), e_txt.astype(np.float32),
                np.ascontiguousarray(q[:, 2:].T, dtype=np.float32))

    def _embed(self, latent: np.ndarray, offset: float, direction: np.ndarray,
               hub_weight: np.ndarray, hub_direction: np.ndarray) -> np.ndarray:
        """latent (n, L) -> normalised (n, dim) float32 embeddings of one modality."""
        x = latent @ self._basis_t
        x += offset * direction
        x += hub_weight[:, None] * hub_direction
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def split(self, name: str) -> EmbeddingSet:
        """One split ("train", "val" or "test") as an ``EmbeddingSet``."""
        if name not in _SPLIT_STREAMS or self.sizes[name] == 0:
            available = [s for s in _SPLIT_STREAMS if self.sizes[s] > 0]
            raise ValueError(f"unknown or empty split {name!r}; available: {available}")
        n, cpi, L = self.sizes[name], self.captions_per_image, self.latent_dim
        rng = np.random.default_rng([self.seed, _SPLIT_STREAMS[name]])

        def gaussian(rows: int) -> np.ndarray:  # N(0, I_L / L): norm ~1
            return rng.standard_normal((rows, L), dtype=np.float32) / np.float32(np.sqrt(L))

        content = gaussian(n)
        image_latent = content + np.float32(self.image_noise) * gaussian(n)
        image_hub = self.image_hub_strength * rng.random(n, dtype=np.float32) ** self.hub_power
        caption_to_image = np.repeat(np.arange(n, dtype=np.int64), cpi)
        text_latent = content[caption_to_image] + np.float32(self.text_noise) * gaussian(n * cpi)
        text_hub = self.text_hub_strength * rng.random(n * cpi, dtype=np.float32) ** self.hub_power
        image = self._embed(image_latent, self.image_offset, self._e_img, image_hub, self._e_txt)
        text = self._embed(text_latent, self.text_offset, self._e_txt, text_hub, self._e_img)
        return EmbeddingSet(name, image, text, caption_to_image,
                            {"source": "synthetic", "seed": self.seed})

    def splits(self) -> dict[str, EmbeddingSet]:
        """{"train", "val" (unless n_val = 0), "test"} -> ``EmbeddingSet``."""
        return {name: self.split(name) for name, n in self.sizes.items() if n > 0}

    def __repr__(self) -> str:
        params = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"SyntheticDataset({', '.join(f'{k}={v!r}' for k, v in params.items())})"
