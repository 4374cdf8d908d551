"""Tests of the synthetic CLIP-like generator: determinism, statistics, hubs, and NNN > baseline."""

import numpy as np
import pytest
import torch

from nnn import metrics
from nnn.data.splits import reference_and_tuning_sets
from nnn.data.synthetic import SyntheticDataset
from nnn.methods.base import RetrievalMethod


class BiasedDot(RetrievalMethod):
    """s(q, r) - bias[r]; bias = 0 is the uncorrected baseline."""

    def __init__(self, bias):
        super().__init__()
        self.bias = bias

    def _score_block(self, q):
        return q @ self._gallery_t.T - self._bias_t

    def _fit(self, gallery, query_bank, gallery_bank):
        self._bias_t = torch.as_tensor(np.broadcast_to(self.bias, len(gallery)).copy(),
                                       dtype=torch.float32)


def nnn_bias(gallery, references, *, k=16, alpha=0.75):
    """NNN (Eq. 1), from the formula: alpha * mean of the k largest s(q_ref, r), float64."""
    sims = gallery.astype(np.float64) @ references.astype(np.float64).T
    return alpha * np.partition(sims, -k, axis=1)[:, -k:].mean(axis=1)


def r1(direction, split, bias):
    """R@1 (percent) of a split with a per-candidate bias, through nnn.metrics."""
    if direction == "t2i":
        method = BiasedDot(bias).fit(split.image)
        ranks = metrics.t2i_ranks(method, split.text, split.caption_to_image)
    else:
        method = BiasedDot(bias).fit(split.text)
        ranks = metrics.i2t_ranks(method, split.image, split.caption_to_image)
    return metrics.recall_at_k(ranks, ks=(1,))["R@1"]


def nnn_gains(dataset):
    """(baseline, NNN) R@1 for t2i and i2t, references = 20% of the training images."""
    s = dataset.splits()
    test = s["test"]
    ref, _ = reference_and_tuning_sets(s["train"], fraction=0.2, tuning_size=len(test.image),
                                       seed=0)
    return {"t2i": (r1("t2i", test, 0.0), r1("t2i", test, nnn_bias(test.image, ref.text))),
            "i2t": (r1("i2t", test, 0.0), r1("i2t", test, nnn_bias(test.text, ref.image)))}


@pytest.fixture(scope="module")
def default_splits():
    return SyntheticDataset(seed=0).splits()


def test_shapes_dtypes_and_normalisation(default_splits):
    assert set(default_splits) == {"train", "val", "test"}
    for name, n in [("train", 5000), ("val", 1000), ("test", 1000)]:
        s = default_splits[name]
        assert s.name == name and s.meta == {"source": "synthetic", "seed": 0}
        assert s.image.shape == (n, 512) and s.text.shape == (5 * n, 512)
        assert s.image.dtype == s.text.dtype == np.float32
        np.testing.assert_array_equal(s.caption_to_image, np.repeat(np.arange(n), 5))
        for x in (s.image, s.text):
            np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_deterministic_and_independent_splits():
    small = dict(n_train=40, n_val=0, n_test=30, dim=32, latent_dim=8)
    a, b = SyntheticDataset(seed=5, **small).splits(), SyntheticDataset(seed=5, **small).splits()
    assert set(a) == {"train", "test"}  # n_val = 0 drops the split
    for name in a:
        np.testing.assert_array_equal(a[name].image, b[name].image)
        np.testing.assert_array_equal(a[name].text, b[name].text)
    c = SyntheticDataset(seed=6, **small).splits()
    assert not np.allclose(a["test"].image, c["test"].image)
    assert not np.allclose(a["train"].image[:30], a["test"].image)
    # a split does not depend on the sizes of the other splits
    bigger_train = SyntheticDataset(seed=5, **{**small, "n_train": 400}).split("test")
    np.testing.assert_array_equal(bigger_train.image, a["test"].image)


def test_clip_like_statistics_and_modality_gap(default_splits):
    s = default_splits["test"]
    mean_img, mean_txt = s.image.mean(0), s.text.mean(0)
    assert 0.6 < np.linalg.norm(mean_img) < 0.85 and 0.4 < np.linalg.norm(mean_txt) < 0.65
    assert np.linalg.norm(mean_img - mean_txt) > 0.5  # the modality gap
    sims = s.text.astype(np.float64) @ s.image.astype(np.float64).T
    matched = sims[np.arange(len(s.text)), s.caption_to_image]
    assert 0.25 < matched.mean() < 0.4
    assert 0.1 < sims.mean() < 0.2 and 0.03 < sims.std() < 0.1
    # images and texts are closer to their own modality than to each other
    assert (s.image[:200] @ s.image[:200].T).mean() > sims.mean()


def test_hub_images_are_top1_of_many_captions(default_splits):
    s = default_splits["test"]
    counts = metrics.k_occurrence(BiasedDot(0.0).fit(s.image), s.text, k=1)
    stats = metrics.hubness_stats(counts)
    assert stats["max"] >= 4 * stats["mean"]
    assert stats["skewness"] > 1 and stats["never_retrieved"] > 2
    no_hubs = SyntheticDataset(seed=0, n_train=10, n_val=0, image_hub_strength=0.0,
                               text_hub_strength=0.0).split("test")
    plain = metrics.k_occurrence(BiasedDot(0.0).fit(no_hubs.image), no_hubs.text, k=1)
    assert metrics.hubness_stats(plain)["max"] < stats["max"] / 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nnn_clearly_beats_baseline(seed):
    gains = nnn_gains(SyntheticDataset(seed=seed, n_val=0))
    base_t2i, nnn_t2i = gains["t2i"]
    base_i2t, nnn_i2t = gains["i2t"]
    assert 30 < base_t2i < 70 and 50 < base_i2t < 90  # CLIP-like, not trivial
    assert nnn_t2i >= base_t2i + 3, gains
    assert nnn_i2t >= base_i2t + 3, gains


def test_without_hubs_nnn_gains_little():
    gains = nnn_gains(SyntheticDataset(seed=0, n_val=0, image_hub_strength=0.0,
                                       text_hub_strength=0.0))
    for base, corrected in gains.values():
        assert abs(corrected - base) < 2, gains


@pytest.mark.parametrize("kwargs, match", [
    ({"latent_dim": 511}, "latent_dim"),
    ({"n_train": 0}, "n_train"),
    ({"captions_per_image": 0}, "captions_per_image"),
    ({"offset_cosine": 1.5}, "offset_cosine"),
    ({"image_noise": -1.0}, "image_noise"),
    ({"seed": -1}, "seed"),
])
def test_parameter_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticDataset(**kwargs)


def test_unknown_split():
    with pytest.raises(ValueError, match="available: \\['train', 'test'\\]"):
        SyntheticDataset(n_train=5, n_val=0, n_test=5, dim=8, latent_dim=4).split("val")
