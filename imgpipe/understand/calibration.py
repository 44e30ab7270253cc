"""Can a score of 0.9 be read as 90 %? Temperature scaling, and the errors that say how far off scores are.

A network trained with cross-entropy is often over-confident: among the
images it scores 0.9, fewer than 90 % are right. Temperature scaling (Guo et
al., 2017) divides the log-probabilities by one scalar T fitted on held-out
images, which changes no ranking (accuracy stays the same) but moves the
scores toward the rate at which they are right.

The validation split is the only held-out data a run has, and it also chose
the best checkpoint. So T is fitted on one half of it (seeded; the right
answers stratified by class, the wrong ones shared) and the errors before and
after are reported on the other half; the figures are then honest about the
temperature, if not about the checkpoint.

Example:
    >>> result = calibrate(probabilities, labels, seed=1337)
    >>> result["temperature"], result["before"]["ece"], result["after"]["ece"]
"""

import logging
import pathlib

import numpy as np
from scipy.optimize import minimize_scalar

log = logging.getLogger("imgpipe")

BINS = 15  # the usual count for ECE (Guo et al.); the reliability diagram draws the same bins
LOG_TEMPERATURE_BOUNDS = (-3.0, 3.0)  # T from 0.05 to 20
SMALLEST_PROBABILITY = 1e-12  # log(0) guard: a softmax output of 0 is a rounding of a tiny number
MIN_IMAGES = 20  # below this, half the validation split says too little about a temperature
SEED = 0  # which validation images fit the temperature and which report it


def scale(probabilities, temperature):
    """Probabilities [..., C] with their log divided by `temperature`, renormalised (softmax(log p / T)).

    Example:
        >>> scale(np.array([[0.9, 0.1]]), 2.0).round(3)
        array([[0.75, 0.25]])
    """
    logits = np.log(np.maximum(np.asarray(probabilities, np.float64), SMALLEST_PROBABILITY)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(logits)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def negative_log_likelihood(probabilities, labels):
    """Mean -log p(true class); labels are class indices."""
    probabilities = np.asarray(probabilities, np.float64)
    chosen = probabilities[np.arange(len(labels)), np.asarray(labels, np.int64)]
    return float(-np.log(np.maximum(chosen, SMALLEST_PROBABILITY)).mean())


def reliability_bins(probabilities, labels, bins=BINS, positive=False):
    """Per confidence bin (equal widths on [0, 1]): image count, mean confidence, accuracy.

    Confidence is the top class's probability; a bin holds confidences in (lower, upper], the first also 0.
    `positive`: two columns, [1 - score, score], and the confidence is the score, the accuracy the share
    of label 1 (a detection's score against how often such detections are right, whatever the score).
    """
    probabilities = np.asarray(probabilities, np.float64)
    if positive:
        confidence, correct = probabilities[:, 1], np.asarray(labels, np.int64) == 1
    else:
        confidence = probabilities.max(axis=1)
        correct = probabilities.argmax(axis=1) == np.asarray(labels, np.int64)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=bins) / counts
        accuracy = np.bincount(index, correct.astype(np.float64), minlength=bins) / counts
    return {"counts": counts, "confidence": mean_confidence, "accuracy": accuracy}


def calibration_errors(probabilities, labels, bins=BINS, positive=False):
    """Expected and maximum calibration error (ECE, MCE; equal-width bins) and negative log-likelihood.

    ECE is the count-weighted mean of |accuracy - confidence| over the bins, MCE the largest gap
    of a non-empty bin.

    Example:
        >>> calibration_errors(np.array([[0.9, 0.1], [0.9, 0.1]]), [0, 1])["ece"]
        0.4
    """
    table = reliability_bins(probabilities, labels, bins, positive)
    filled = table["counts"] > 0
    gaps = np.abs(table["accuracy"][filled] - table["confidence"][filled])
    weights = table["counts"][filled] / table["counts"].sum()
    return {"ece": float((weights * gaps).sum()), "mce": float(gaps.max()),
            "nll": negative_log_likelihood(probabilities, labels)}


def fit_temperature(probabilities, labels):
    """The T that minimises the negative log-likelihood of `scale(probabilities, T)` (a bounded 1-D search).

    Example:
        >>> fit_temperature(over_confident_probabilities, labels)  # > 1 flattens them
        2.3
    """
    def loss(log_temperature):
        return negative_log_likelihood(scale(probabilities, np.exp(log_temperature)), labels)

    found = minimize_scalar(loss, bounds=LOG_TEMPERATURE_BOUNDS, method="bounded")
    return float(np.exp(found.x))


def split_halves(strata, seed):
    """Two disjoint index arrays, each holding about half of every stratum (seeded): (fit, report).

    `calibrate` stratifies the right answers by class and puts the wrong ones in a stratum of their own, so
    that the wrong answers, the only images that say how far a temperature may sharpen, are shared
    between the halves.
    """
    strata = np.asarray(strata, np.int64)
    rng = np.random.default_rng(seed)
    fit, report = [], []
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        half = (len(members) + rng.integers(0, 2)) // 2  # odd classes alternate sides at random
        fit += list(members[:half])
        report += list(members[half:])
    return np.sort(np.array(fit, np.int64)), np.sort(np.array(report, np.int64))


def wrong_apart(labels, wrong):
    """Strata for `split_halves`: the class of each right answer, -1 for every wrong one."""
    return np.where(wrong, -1, np.asarray(labels, np.int64))


def image_halves(image_of_row, seed):
    """(fit, report) row indices with every row of one image on the same side: pixels of one picture are
    not independent, so a temperature fitted on some of them and scored on the rest would look better
    than it is on a new picture.

    Example:
        >>> image_halves([0, 0, 1, 1, 2, 2, 3, 3], seed=0)
        (array([0, 1, 4, 5]), array([2, 3, 6, 7]))
    """
    image_of_row = np.asarray(image_of_row, np.int64)
    images = np.random.default_rng(seed).permutation(np.unique(image_of_row))
    fitting = np.isin(image_of_row, images[: len(images) // 2])
    return np.flatnonzero(fitting), np.flatnonzero(~fitting)


def calibrate(probabilities, labels, seed, halves=None):
    """Fits T on one half of the (validation) images and scores it on the other half (halves stratified:
    the right answers by class, the wrong ones together; or `halves`, (fit, report) row indices).

    Returns:
        dict: temperature, fitted_on and reported_on (image counts), before and after
        (`calibration_errors` on the report half), and the report half's reliability bins
        (`bins_before`, `bins_after`) for the diagram.
    """
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels, np.int64)
    wrong = probabilities.argmax(axis=1) != labels
    fit, report = split_halves(wrong_apart(labels, wrong), seed) if halves is None else halves
    temperature = fit_temperature(probabilities[fit], labels[fit])
    held_out, calibrated = probabilities[report], scale(probabilities[report], temperature)
    return {"temperature": round(temperature, 4), "fitted_on": int(len(fit)), "reported_on": int(len(report)),
            "wrong_in_fit": int(wrong[fit].sum()), "wrong_in_report": int(wrong[report].sum()),
            "before": calibration_errors(held_out, labels[report]),
            "after": calibration_errors(calibrated, labels[report]),
            "bins_before": reliability_bins(held_out, labels[report]),
            "bins_after": reliability_bins(calibrated, labels[report])}


def serving_decision(result):
    """(serve the temperature?, why) for a `calibrate` result.

    A half with no wrong answer says nothing about a temperature: on it, any sharper scores lower the
    NLL, toward T = 0 (every score 1.0). So both halves need a wrong answer, and the temperature must
    lower the held-out NLL.

    Example:
        >>> serving_decision(calibrate(probabilities, labels, seed=0))
        (True, 'it lowered the held-out NLL from 0.127 to 0.012')
    """
    if not result["wrong_in_fit"] or not result["wrong_in_report"]:
        return False, (f"not served: {result['wrong_in_fit']} and {result['wrong_in_report']} wrong answers in "
                       f"the two halves; with none, any sharper scores look better")
    before, after = result["before"]["nll"], result["after"]["nll"]
    if after >= before:
        return False, f"not served: it did not lower the held-out NLL ({before:.3f} -> {after:.3f})"
    return True, f"it lowered the held-out NLL from {before:.3f} to {after:.3f}"


def describe(record):
    """One line for the end of `imgpipe run`, from metrics.json's `calibration` record.

    Example:
        >>> describe(metrics["calibration"])
        'T = 0.35 fitted on 178 validation images; on the other 181, ECE 0.109 -> 0.009; it lowered ...'
    """
    if "skipped" in record:
        return record["skipped"]
    unit = record.get("unit", "validation images")
    if "method" in record:  # detection scores: Platt scaling, reported
        return (f"{record['method']} fitted on {record['fitted_on']} {unit}; on the other {record['reported_on']}, "
                f"ECE {record['before']['ece']:.3f} -> {record['after']['ece']:.3f}; {record['why']}")
    return (f"T = {record['temperature']:.2f} fitted on {record['fitted_on']} {unit}; on the other "
            f"{record['reported_on']}, ECE {record['before']['ece']:.3f} -> {record['after']['ece']:.3f}; "
            f"{record['why']}")


def calibration_record(probabilities, labels, run_dir, image_of_row=None, unit="validation images",
                       min_images=MIN_IMAGES):
    """metrics.json's `calibration`: a temperature fitted on half the validation images, the errors before and
    after on the other half, whether it is served, and reliability.png; a reason instead when the split is
    too small to halve.

    Args:
        probabilities: float [N, C], one row per image (classification) or per sampled pixel (segmentation).
        labels: int [N], the true classes.
        run_dir: where reliability.png goes.
        image_of_row: int [N], the image each row comes from, when rows are pixels: the halves then split
            images, not rows. None: each row is an image.
        unit: what a row is, in the log and the diagram's titles.
        min_images: fewer validation images than this are not halved; nothing is fitted.

    Example:
        >>> calibration_record(probabilities, labels, "runs/classify/classify")["after"]["ece"]
    """
    from imgpipe.engine import plots

    images = len(labels) if image_of_row is None else len(np.unique(image_of_row))
    if images < min_images:
        reason = (f"not fitted: {images} validation images, fewer than {min_images} "
                  f"(half fits the temperature, half reports it)")
        log.info("calibration: %s", reason)
        return {"skipped": reason}
    halves = None if image_of_row is None else image_halves(image_of_row, SEED)
    result = calibrate(probabilities, labels, seed=SEED, halves=halves)
    before, after = result.pop("bins_before"), result.pop("bins_after")
    used, why = serving_decision(result)
    plots.plot_reliability(
        [(f"before: ECE {result['before']['ece']:.3f} on {result['reported_on']} held-out {unit}", before),
         (f"after T = {result['temperature']:.2f}: ECE {result['after']['ece']:.3f} "
          f"({'served' if used else 'not served'})", after)],
        pathlib.Path(run_dir) / "reliability.png")
    log.info("calibration: temperature %.2f fitted on %d %s; on the other %d, ECE %.3f -> %.3f; %s",
             result["temperature"], result["fitted_on"], unit, result["reported_on"], result["before"]["ece"],
             result["after"]["ece"], why)
    return {**result, "unit": unit, "used": used, "why": why,
            "note": "the best checkpoint was chosen on the whole validation split, both halves included"}


def fit_logistic(scores, right):
    """Platt scaling: the (slope, intercept) of sigmoid(slope * logit(score) + intercept) that minimise the
    log-loss of `right` (1 or 0 per score).

    A temperature alone keeps a score below 0.5 below 0.5; detection scores sit at 0.2-0.4 after short
    training while most such boxes are right, so they need the intercept too.

    Example:
        >>> fit_logistic(np.array([0.3, 0.3, 0.3, 0.3]), np.array([1, 1, 1, 0]))  # -> sigmoid(...) = 0.75
    """
    from scipy.optimize import minimize

    log_odds = _logit(scores)
    right = np.asarray(right, np.float64)

    def loss(parameters):
        probability = 1 / (1 + np.exp(-(parameters[0] * log_odds + parameters[1])))
        probability = np.clip(probability, SMALLEST_PROBABILITY, 1 - SMALLEST_PROBABILITY)
        return -np.mean(right * np.log(probability) + (1 - right) * np.log(1 - probability))

    found = minimize(loss, np.array([1.0, 0.0]), method="L-BFGS-B", bounds=[(1e-3, 100.0), (-20.0, 20.0)])
    return float(found.x[0]), float(found.x[1])


def logistic(scores, slope, intercept):
    """Scores mapped by a fitted `fit_logistic`: sigmoid(slope * logit(score) + intercept)."""
    return 1 / (1 + np.exp(-(slope * _logit(scores) + intercept)))


def score_calibration_record(scores, right, image_of_row, run_dir, unit, min_images, not_served):
    """metrics.json's `calibration` for scores of yes/no answers (is this detection right?): Platt scaling
    fitted on the rows of half the images, the errors before and after on the other half's, reliability.png.

    Args:
        scores: float [N] in (0, 1); right: int [N], 1 where the answer was right.
        image_of_row: int [N], the image of each row (the halves split images).
        run_dir: where reliability.png goes; unit: what a row is.
        min_images: fewer images than this are not halved.
        not_served: why the task does not serve the mapping (the record says so).

    Example:
        >>> score_calibration_record(scores, hits, images, "runs/detect/detect", "validation detections", 10, "...")
    """
    from imgpipe.engine import plots

    images = len(np.unique(image_of_row))
    if images < min_images:
        reason = f"not fitted: {images} validation images, fewer than {min_images} (half fits, half reports)"
        log.info("calibration: %s", reason)
        return {"skipped": reason}
    scores, right = np.asarray(scores, np.float64), np.asarray(right, np.int64)
    fit, report = image_halves(image_of_row, SEED)
    slope, intercept = fit_logistic(scores[fit], right[fit])
    before = np.stack([1 - scores[report], scores[report]], axis=1)
    after_scores = logistic(scores[report], slope, intercept)
    after = np.stack([1 - after_scores, after_scores], axis=1)
    record = {"method": "logistic (Platt) on the score's log-odds", "slope": round(slope, 4),
              "intercept": round(intercept, 4), "fitted_on": int(len(fit)), "reported_on": int(len(report)),
              "before": calibration_errors(before, right[report], positive=True),
              "after": calibration_errors(after, right[report], positive=True), "unit": unit, "used": False,
              "why": f"not served: {not_served}"}
    plots.plot_reliability(
        [(f"before: ECE {record['before']['ece']:.3f} on {len(report)} held-out {unit}",
          reliability_bins(before, right[report], positive=True)),
         (f"after Platt scaling: ECE {record['after']['ece']:.3f} (reported, not served)",
          reliability_bins(after, right[report], positive=True))],
        pathlib.Path(run_dir) / "reliability.png")
    log.info("calibration: Platt scaling fitted on %d %s; on the other %d, ECE %.3f -> %.3f; %s", len(fit), unit,
             len(report), record["before"]["ece"], record["after"]["ece"], record["why"])
    return record


def _logit(scores):
    scores = np.clip(np.asarray(scores, np.float64), SMALLEST_PROBABILITY, 1 - SMALLEST_PROBABILITY)
    return np.log(scores) - np.log1p(-scores)
