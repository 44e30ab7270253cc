"""Test-time augmentation around a tiny network: the shapes of every mode, and flip against a hand-computed mean."""

import keras
import numpy as np
import pytest

from imgpipe.models import MODELS
from imgpipe.models.test_time_augmentation import MODES, views, with_test_time_augmentation

SIZE = (16, 32)


def images(count=2):
    return np.random.default_rng(0).uniform(0, 255, (count, *SIZE, 3)).astype("float32")


@pytest.fixture(scope="module")
def networks():
    """A classifier and a segmenter (3 classes) at 16x32, untrained: the wrapper needs no trained weights."""
    return {False: MODELS.get("small_cnn")((*SIZE, 3), 3, weights=None),
            True: MODELS.get("unet")((*SIZE, 3), 3, weights=None)}


@pytest.mark.parametrize("per_pixel", [False, True], ids=["per_image", "per_pixel"])
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_answers_probabilities_in_the_network_s_shape(networks, mode, per_pixel):
    network = networks[per_pixel]
    answered = np.asarray(with_test_time_augmentation(network, mode, per_pixel)(images(3)))
    assert answered.shape == ((3, *SIZE, 3) if per_pixel else (3, 3))
    np.testing.assert_allclose(answered.sum(axis=-1), 1.0, atol=1e-5)
    assert len(views(mode)) == {"none": 1, "flip": 2, "flip+scales": 6}[mode]


@pytest.mark.parametrize("per_pixel", [False, True], ids=["per_image", "per_pixel"])
def test_flip_is_the_mean_of_the_image_s_answer_and_its_mirror_s_mirrored_back(networks, per_pixel):
    network = networks[per_pixel]
    batch = images()
    plain = np.asarray(network(batch, training=False))
    mirrored = np.asarray(network(batch[:, :, ::-1], training=False))
    expected = (plain + (mirrored[:, :, ::-1] if per_pixel else mirrored)) / 2
    np.testing.assert_allclose(np.asarray(with_test_time_augmentation(network, "flip", per_pixel)(batch)), expected,
                               atol=1e-6)
    assert np.abs(expected - plain).max() > 1e-4  # 100x the tolerance: the mirror changes the answer


def test_zooms_undone_give_a_per_pixel_network_its_own_answer_back():
    """A network that answers each pixel from its colour alone: zooming in and out and back moves nothing,
    so flip+scales agrees with one pass except where bilinear resampling blurs a boundary."""
    size = (32, 64)  # wide enough for a zoom to move the edge by 5 pixels
    inputs = keras.Input((*size, 3))
    network = keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="softmax")(keras.layers.Rescaling(1 / 255)(inputs)))
    edge = 4
    batch = np.zeros((1, *size, 3), "float32")
    batch[:, :, :edge] = 255.0
    plain = np.asarray(network(batch))
    answered = np.asarray(with_test_time_augmentation(network, "flip+scales", per_pixel=True)(batch))
    inner = np.r_[0:edge - 3, edge + 3:size[1]]
    np.testing.assert_allclose(answered[:, :, inner], plain[:, :, inner], atol=1e-4)


def test_none_is_the_network_itself_and_an_unknown_mode_is_refused(networks):
    assert with_test_time_augmentation(networks[False], "none") is networks[False]
    with pytest.raises(ValueError, match=r"received mode='flip\+rotate'"):
        with_test_time_augmentation(networks[False], "flip+rotate")
