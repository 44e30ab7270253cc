"""Calibration errors on hand-built cases, the temperature fit on held-out data, the stratified halves."""

import numpy as np
import pytest

from imgpipe.understand.calibration import (calibrate, calibration_errors, describe, fit_temperature, reliability_bins,
                                            scale, serving_decision, split_halves, wrong_apart)


def test_ece_and_mce_match_a_hand_computed_case():
    # Bin (0.8667, 0.9333]: two images at 0.9, one right -> gap 0.4. Bin (0.5333, 0.6]: two at 0.6,
    # both right -> gap 0.4. Bin (0.9333, 1]: one at 1.0, right -> gap 0. ECE = (2*0.4 + 2*0.4 + 0) / 5.
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6], [1.0, 0.0]])
    labels = [0, 1, 0, 1, 0]
    errors = calibration_errors(probabilities, labels)
    assert errors["ece"] == pytest.approx(1.6 / 5)
    assert errors["mce"] == pytest.approx(0.4)
    assert errors["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.1, 0.6, 0.6, 1.0])))


def test_a_score_on_a_bin_edge_falls_in_the_lower_bin():
    table = reliability_bins(np.array([[0.6, 0.4], [1.0, 0.0]]), [0, 0], bins=5)
    assert table["counts"].tolist() == [0, 0, 1, 0, 1]  # 0.6 in (0.4, 0.6], 1.0 in (0.8, 1.0]


def test_a_perfectly_calibrated_set_has_no_error():
    # Ten images scored 0.7: seven right. Ten scored 1.0: all right.
    probabilities = np.array([[0.7, 0.3]] * 10 + [[1.0, 0.0]] * 10)
    labels = [0] * 7 + [1] * 3 + [0] * 10
    assert calibration_errors(probabilities, labels)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_scaling_keeps_the_ranking_and_a_temperature_of_one_changes_nothing():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.05, 0.15, 0.8]])
    np.testing.assert_allclose(scale(probabilities, 1.0), probabilities, atol=1e-12)
    flattened = scale(probabilities, 3.0)
    assert (flattened.argmax(axis=1) == probabilities.argmax(axis=1)).all()
    assert (flattened.max(axis=1) < probabilities.max(axis=1)).all()


def over_confident(count, seed):
    """A toy model right 70 % of the time that scores its answer far above 0.7 (logits x 4)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count)
    logits = rng.normal(0, 1, (count, 3))
    right = rng.random(count) < 0.7
    answer = np.where(right, labels, (labels + rng.integers(1, 3, count)) % 3)
    logits[np.arange(count), answer] += 2.0
    exponentials = np.exp(4 * logits)
    return exponentials / exponentials.sum(axis=1, keepdims=True), labels


def test_a_temperature_fitted_on_one_set_lowers_nll_and_ece_on_another():
    fit_probabilities, fit_labels = over_confident(400, seed=1)
    held_probabilities, held_labels = over_confident(400, seed=2)
    temperature = fit_temperature(fit_probabilities, fit_labels)
    assert temperature > 2  # over-confident scores are flattened
    before = calibration_errors(held_probabilities, held_labels)
    after = calibration_errors(scale(held_probabilities, temperature), held_labels)
    assert after["nll"] < 0.7 * before["nll"]
    assert after["ece"] < 0.5 * before["ece"]


def test_the_halves_are_disjoint_cover_every_image_and_split_each_class():
    labels = np.array([0] * 10 + [1] * 6 + [2] * 4)
    fit, report = split_halves(labels, seed=3)
    assert not set(fit) & set(report) and sorted([*fit, *report]) == list(range(20))
    for label, count in ((0, 10), (1, 6), (2, 4)):
        assert (labels[fit] == label).sum() == count // 2 == (labels[report] == label).sum()
    assert split_halves(labels, seed=3)[0].tolist() == fit.tolist()


def test_calibrate_reports_on_the_half_it_did_not_fit():
    probabilities, labels = over_confident(200, seed=4)
    result = calibrate(probabilities, labels, seed=0)
    wrong = probabilities.argmax(axis=1) != labels
    fit, report = split_halves(wrong_apart(labels, wrong), seed=0)
    assert result["fitted_on"] == len(fit) and result["reported_on"] == len(report)
    # The wrong answers are shared between the halves too.
    assert abs(int(wrong[fit].sum()) - int(wrong[report].sum())) <= 1
    assert (result["wrong_in_fit"], result["wrong_in_report"]) == (wrong[fit].sum(), wrong[report].sum())
    assert result["temperature"] == pytest.approx(fit_temperature(probabilities[fit], labels[fit]), abs=1e-4)
    assert result["before"] == calibration_errors(probabilities[report], labels[report])


def test_a_split_without_wrong_answers_is_not_served_its_temperature():
    # Always right, scored 0.8: the NLL keeps falling as T -> 0, so the fit runs to its bound.
    probabilities = np.array([[0.8, 0.2], [0.2, 0.8]] * 20)
    labels = np.array([0, 1] * 20)
    result = calibrate(probabilities, labels, seed=0)
    assert result["temperature"] < 0.06 and result["after"]["nll"] < result["before"]["nll"]
    served, why = serving_decision(result)
    assert not served and why.startswith("not served: 0 and 0 wrong answers")


def test_a_temperature_that_lowers_the_held_out_nll_is_served():
    probabilities, labels = over_confident(200, seed=4)
    served, why = serving_decision(calibrate(probabilities, labels, seed=0))
    assert served and why.startswith("it lowered the held-out NLL")


def test_a_temperature_that_raises_the_held_out_nll_is_not_served():
    probabilities, labels = over_confident(200, seed=4)
    result = calibrate(probabilities, labels, seed=0)
    result["after"] = {**result["after"], "nll": result["before"]["nll"] + 0.01}
    assert serving_decision(result)[0] is False


def test_the_run_s_line_names_the_temperature_the_errors_and_the_decision():
    probabilities, labels = over_confident(200, seed=4)
    result = calibrate(probabilities, labels, seed=0)
    served, why = serving_decision(result)
    line = describe({**result, "used": served, "why": why})
    assert line.startswith(f"T = {result['temperature']:.2f} fitted on {result['fitted_on']} validation images; "
                           f"on the other {result['reported_on']}, ECE {result['before']['ece']:.3f} -> ")
    assert line.endswith(why)
