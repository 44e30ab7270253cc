import numpy as np
import pytest
import tensorflow as tf

from imgpipe.models.lab import (ab_bins, annealed_mean, colorfulness, lab_to_rgb, nearest_bin, rebalancing_weights,
                           rgb_to_lab, soft_encode)


def delta_e(lab1, lab2):
    return np.sqrt(np.sum((np.asarray(lab1) - np.asarray(lab2)) ** 2, axis=-1))


def test_lab_matches_scikit_image_within_half_a_delta_e():
    skimage_color = pytest.importorskip("skimage.color", reason="scikit-image is the reference (pip install .[test])")
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (5000, 3)).astype(np.uint8)
    colours[:8] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 1, 1], [5, 3, 2],
                   [128, 128, 128]]
    ours = rgb_to_lab(colours.astype(np.float32)).numpy()
    reference = skimage_color.rgb2lab(colours[None].astype(np.float64) / 255.0)[0]
    assert delta_e(ours, reference).max() < 0.5


def test_lab_round_trip_returns_the_colours():
    rng = np.random.default_rng(1)
    colours = rng.uniform(0, 255, (2000, 3)).astype(np.float32)
    back = lab_to_rgb(rgb_to_lab(colours)).numpy()
    np.testing.assert_allclose(back, colours, atol=0.05)


def test_known_colours():
    lab = rgb_to_lab(np.array([[255.0, 255.0, 255.0], [0.0, 0.0, 0.0], [255.0, 0.0, 0.0]])).numpy()
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=0.01)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=0.01)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.05)


def test_bins_cover_the_srgb_gamut_on_a_10_unit_grid():
    bins = ab_bins()
    assert 250 <= len(bins) <= 330
    assert np.all(np.mod(bins, 10.0) == 0)
    # Every sRGB colour's ab lies within half a bin diagonal of its nearest bin centre.
    rng = np.random.default_rng(2)
    ab = rgb_to_lab(rng.uniform(0, 255, (3000, 3)).astype(np.float32)).numpy()[:, 1:]
    index = nearest_bin(ab, bins).numpy()
    assert np.max(np.abs(ab - bins[index])) <= 5.0 + 1e-4


def test_soft_encoding_puts_most_weight_on_the_nearest_bin_and_decoding_recovers_the_colour():
    bins = ab_bins()
    ab = np.array([[30.0, -20.0], [3.0, 4.0]], np.float32)
    targets = soft_encode(ab, bins).numpy()
    np.testing.assert_allclose(targets.sum(axis=-1), 1.0, atol=1e-6)
    assert np.count_nonzero(targets[0]) == 5
    assert bins[np.argmax(targets[0])].tolist() == [30.0, -20.0]
    # Hand computed: at ab (3, 4) the five nearest centres are (0,0) d²=25, (0,10) 45, (10,0) 65, (10,10) 85
    # and (-10,0) 185; weights are softmax(-d² / 50).
    distances = np.array([25, 45, 65, 85, 185], np.float64)
    expected = np.exp(-distances / 50) / np.exp(-distances / 50).sum()
    np.testing.assert_allclose(np.sort(targets[1][targets[1] > 0])[::-1], expected, rtol=1e-5)
    # The mean (T=1) of the soft encoding lands near the colour; T -> 0 gives the nearest bin.
    logits = np.log(np.maximum(targets, 1e-12))
    np.testing.assert_allclose(annealed_mean(logits, bins, temperature=1.0).numpy()[0], [30.0, -20.0], atol=1e-3)
    np.testing.assert_allclose(annealed_mean(logits, bins, temperature=0.01).numpy()[1], [0.0, 0.0], atol=1e-3)


def test_rebalancing_favours_rare_colours_with_mean_one():
    bins = ab_bins()
    counts = np.ones(len(bins))
    grey = int(np.argmin(np.sum(bins**2, axis=1)))
    counts[grey] = 10_000
    weights = rebalancing_weights(counts, bins=bins)
    assert weights[grey] < 0.5 * np.median(weights)
    distance = np.sum((bins[:, None] - bins[None]) ** 2, axis=-1)
    smoothed = np.exp(-distance / 50) @ (counts / counts.sum())
    smoothed /= smoothed.sum()
    assert np.sum(smoothed * weights) == pytest.approx(1.0, rel=1e-5)


def test_colorfulness_against_hand_computed_values():
    grey = np.full((1, 4, 4, 3), 100.0, np.float32)
    assert float(colorfulness(grey)[0]) == pytest.approx(0.0, abs=1e-4)
    half = np.zeros((1, 2, 2, 3), np.float32)
    half[0, 0] = [200, 0, 0]  # two red pixels, two black
    # rg: [200, 200, 0, 0] -> mean 100, std 100; yb: [100, 100, 0, 0] -> mean 50, std 50.
    expected = np.sqrt(100**2 + 50**2) + 0.3 * np.sqrt(100**2 + 50**2)
    assert float(colorfulness(half)[0]) == pytest.approx(expected, rel=1e-5)


def test_psnr_and_ssim_are_tensorflows_reference_formulas():
    from imgpipe.tasks.colorize.task import colour_metrics

    original = np.full((1, 16, 16, 3), 100.0, np.float32)
    result = original + 10.0
    metrics = colour_metrics(tf.constant(result), tf.constant(original))
    assert metrics["psnr"][0] == pytest.approx(10 * np.log10(255**2 / 100.0), rel=1e-5)
    assert colour_metrics(tf.constant(original), tf.constant(original))["ssim"][0] == pytest.approx(1.0)
