"""Tests of nnn.data.splits: seeded, disjoint image splits; captions follow their images."""

import re

import numpy as np
import pytest

from nnn.data.base import EmbeddingSet
from nnn.data.splits import (reference_and_tuning_sets, reference_and_tuning_split,
                             train_test_split)


def test_reference_and_tuning_sizes_disjoint_seeded():
    ref, tune = reference_and_tuning_split(103, fraction=0.2, tuning_size=30, seed=1)
    assert len(ref) == round(0.2 * 103) == 21 and len(tune) == 30
    assert ref.dtype == tune.dtype == np.int64
    assert not np.intersect1d(ref, tune).size
    assert np.all(np.diff(ref) > 0) and np.all(np.diff(tune) > 0)  # sorted, unique
    assert ref.min() >= 0 and max(ref.max(), tune.max()) < 103
    again = reference_and_tuning_split(103, fraction=0.2, tuning_size=30, seed=1)
    np.testing.assert_array_equal(ref, again[0])
    np.testing.assert_array_equal(tune, again[1])
    other = reference_and_tuning_split(103, fraction=0.2, tuning_size=30, seed=2)
    assert not np.array_equal(ref, other[0])


def test_tuning_is_stable_when_fraction_changes():
    """The tuning part does not depend on the reference fraction (same seed)."""
    _, tune_a = reference_and_tuning_split(200, fraction=0.1, tuning_size=50, seed=0)
    _, tune_b = reference_and_tuning_split(200, fraction=0.5, tuning_size=50, seed=0)
    np.testing.assert_array_equal(tune_a, tune_b)


def test_no_tuning_part():
    ref, tune = reference_and_tuning_split(10, fraction=1.0, tuning_size=0, seed=0)
    np.testing.assert_array_equal(ref, np.arange(10))
    assert tune.size == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"fraction": 0.5, "tuning_size": 60}, "do not fit into 100"),
    ({"fraction": 0.0, "tuning_size": 10}, "fraction must be a number in"),
    ({"fraction": 1.5, "tuning_size": 10}, "fraction must be a number in"),
    ({"fraction": 0.001, "tuning_size": 10}, "less than one image"),
    ({"fraction": 0.2, "tuning_size": -1}, "tuning_size"),
    ({"fraction": 0.2, "tuning_size": 2.5}, "tuning_size"),
])
def test_reference_and_tuning_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        reference_and_tuning_split(100, seed=0, **kwargs)


@pytest.mark.parametrize("n_images, fraction, tuning_size", [
    (100, 0.5, 60), (2000, 0.2, 1999), (2000, 1.0, 1), (100000, 0.5, 99990)])
def test_advice_when_the_parts_do_not_fit_is_a_fraction_that_fits(n_images, fraction,
                                                                   tuning_size):
    with pytest.raises(ValueError, match="do not fit") as err:
        reference_and_tuning_split(n_images, fraction=fraction, tuning_size=tuning_size)
    advised = float(re.search(r"lower fraction to at most ([\d.e-]+) ", str(err.value))[1])
    assert 0 < advised < fraction
    ref, tune = reference_and_tuning_split(n_images, fraction=advised, tuning_size=tuning_size)
    assert len(ref) >= 1 and len(tune) == tuning_size


@pytest.mark.parametrize("tuning_size", [2, 25])
def test_advice_when_the_tuning_part_takes_every_image(tuning_size):
    with pytest.raises(ValueError, match="do not fit into 2 training images") as err:
        reference_and_tuning_split(2, fraction=0.5, tuning_size=tuning_size)
    message = str(err.value)
    assert "lower tuning_size to at most 1" in message
    assert "lower fraction" not in message and not re.search(r"-\d", message)  # no -11.5


def test_train_test_split():
    train, test = train_test_split(11, train_fraction=0.5, seed=3)
    assert len(train) == 6 and len(test) == 5
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(11))
    with pytest.raises(ValueError, match="leaves no images"):
        train_test_split(11, train_fraction=1.0, seed=0)
    with pytest.raises(ValueError, match="n_images"):
        train_test_split(0, train_fraction=0.5, seed=0)


def test_sets_keep_captions_with_their_images():
    rng = np.random.default_rng(0)
    n_img, d = 20, 4
    c2i = rng.permutation(np.repeat(np.arange(n_img), 3))  # 3 captions each, shuffled
    image = rng.standard_normal((n_img, d)).astype(np.float32)
    text = image[c2i] + 0.01  # caption j is recognisable as a copy of its image
    train = EmbeddingSet("train", image, text, c2i)
    ref, tune = reference_and_tuning_sets(train, fraction=0.25, tuning_size=6, seed=0)
    assert (len(ref.image), len(ref.text)) == (5, 15)
    assert (len(tune.image), len(tune.text)) == (6, 18)
    for part in (ref, tune):
        np.testing.assert_allclose(part.text, part.image[part.caption_to_image] + 0.01)
    assert ref.name == "train/reference" and tune.name == "train/tuning"
    _, none = reference_and_tuning_sets(train, fraction=0.25, tuning_size=0, seed=0)
    assert none is None
