"""Per-pixel calibration: pixels sampled from scored positions only, halves that split images, a fitted
temperature that lowers the held-out errors of an over-confident segmenter."""

import numpy as np
import pytest
import tensorflow as tf

from imgpipe.tasks.segment.task import sampled_pixels
from imgpipe.understand.calibration import calibration_errors, calibration_record, image_halves, scale


class OverConfidentSegmenter:
    """Right on 70 % of pixels (fixed per image and pixel), always 0.99 sure of its answer."""

    def __init__(self, truths, seed=0):
        rng = np.random.default_rng(seed)
        right = rng.random(truths.shape) < 0.7
        answers = np.where(right, truths, 1 - np.clip(truths, 0, 1))
        self.probabilities = np.where(answers[..., None] == np.arange(2), 0.99, 0.01).astype(np.float32)

    def __call__(self, images, training=False):
        return self.probabilities[np.asarray(images)[:, 0, 0, 0].astype(int)]


def toy_split(count=12, side=16, ignored=255):
    rng = np.random.default_rng(3)
    truths = rng.integers(0, 2, (count, side, side))
    truths[:, :2] = ignored  # a border nobody labelled
    images = np.broadcast_to(np.arange(count, dtype=np.float32)[:, None, None, None], (count, side, side, 3))
    dataset = tf.data.Dataset.from_tensor_slices((images, truths)).batch(5)
    return truths, dataset


def test_sampled_pixels_skip_ignored_ones_and_keep_their_image_and_truth():
    truths, dataset = toy_split()
    model = OverConfidentSegmenter(truths)
    probabilities, labels, image_of_row = sampled_pixels(model, dataset, ignore_index=255, per_image=50)
    assert probabilities.shape == (12 * 50, 2) and set(labels.tolist()) <= {0, 1}
    assert np.bincount(image_of_row).tolist() == [50] * 12
    everything = sampled_pixels(model, dataset, ignore_index=255, per_image=10_000)
    assert len(everything[1]) == 12 * 14 * 16  # every scored pixel, none of the ignored border
    # each row is the probability the model gave some scored pixel of that image, with that pixel's truth
    for image in range(12):
        rows = everything[2] == image
        expected = sorted(zip(model.probabilities[image, 2:].reshape(-1, 2)[:, 1].tolist(),
                              truths[image, 2:].ravel().tolist()))
        assert sorted(zip(everything[0][rows, 1].tolist(), everything[1][rows].tolist())) == expected


def test_halves_split_images_never_the_pixels_of_one_image():
    image_of_row = np.repeat(np.arange(9), 7)
    fit, report = image_halves(image_of_row, seed=0)
    assert not set(image_of_row[fit]) & set(image_of_row[report])
    assert sorted([*fit, *report]) == list(range(63)) and len(set(image_of_row[fit])) == 4


def test_a_pixel_temperature_fitted_on_some_images_calibrates_the_others(tmp_path):
    truths, dataset = toy_split()
    probabilities, labels, image_of_row = sampled_pixels(OverConfidentSegmenter(truths), dataset, 255, per_image=200)
    record = calibration_record(probabilities, labels, tmp_path, image_of_row, unit="validation pixels", min_images=4)
    assert record["temperature"] > 2 and record["used"]
    fit, report = image_halves(image_of_row, seed=0)
    assert (record["fitted_on"], record["reported_on"]) == (len(fit), len(report))
    assert record["before"] == calibration_errors(probabilities[report], labels[report])
    assert record["after"]["ece"] < 0.1 < record["before"]["ece"]
    assert record["after"] == pytest.approx(calibration_errors(scale(probabilities[report], record["temperature"]),
                                                               labels[report]), rel=1e-3)
    assert (tmp_path / "reliability.png").is_file()


def test_too_few_images_are_not_halved(tmp_path):
    truths, dataset = toy_split(count=3)
    rows = sampled_pixels(OverConfidentSegmenter(truths), dataset, 255, per_image=100)
    record = calibration_record(rows[0], rows[1], tmp_path, rows[2], unit="validation pixels", min_images=4)
    assert record == {"skipped": "not fitted: 3 validation images, fewer than 4 (half fits the temperature, half "
                                 "reports it)"}
