"""Calibration on real photos: what the run's temperature does on held-out images, and how much to trust it.

    -> imgpipe run classify --data DIR, as a user types it (the raccoon crops with the ImageNet weights
       folder; scikit-learn's 8x8 digits from scratch), and two weaker models: the raccoon crops from
       scratch for 6 epochs, the digits for 3
    -> the run's own record: ECE, MCE and NLL before and after its temperature, on the half of the
       validation split it was not fitted on
    -> then, from the trained run's validation probabilities (no retraining), 200 other random halvings:
       the spread of the fitted temperature and of the held-out ECE and NLL, and how often the
       temperature lowered the held-out NLL. That spread is what a validation split of this size
       can promise about calibration.

The plain-model reference is the network's own softmax on the same held-out half (temperature 1).

The membrane case is segmentation, calibrated per pixel: `imgpipe run segment` on the 30 sections split
contiguously (24 / 6), and halvings of its 6 validation *images* (their pixels never on both sides):
only 20 distinct halvings exist, so the spread is over those.

`--detect-runs RUN_DIR ...` instead recomputes the detection-score record (Platt scaling, reported) of
trained detection runs from their checkpoints, without training.

Usage (from the repository root, with `.[test]` and scikit-learn installed):
    .venv/bin/python benchmarks/calibration.py [--cases raccoon,digits,raccoon_scratch,digits_3_epochs,membrane]
    .venv/bin/python benchmarks/calibration.py --detect-runs /tmp/imgpipe_grouped_split/detect_none
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_summary, print_table  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
WORK = pathlib.Path(os.environ.get("BENCH_WORK", "/tmp/imgpipe_bench/calibration"))
HALVINGS = 200
# case: (data folder, extra arguments). The short and from-scratch cases make a weaker model, whose
# validation split holds enough wrong answers to fit a temperature on.
CASES = {
    "raccoon": ("raccoon", []),
    "digits": ("digits", []),
    "raccoon_scratch": ("raccoon", ["--weights", "none", "--epochs", "6"]),
    "digits_3_epochs": ("digits", ["--epochs", "3"]),
    "membrane": ("membrane", []),
}
TASKS = {"membrane": ("segment", "val_mean_iou")}  # other cases: ("classify", "val_accuracy")


def case_data(case):
    """The case's train/ + val/ folder (benchmarks/time_to_accuracy.py builds and keeps it)."""
    from benchmarks import time_to_accuracy

    time_to_accuracy.WORK = WORK
    return time_to_accuracy.case_folder(case)


def train(case):
    """`imgpipe run classify --data DIR` with the weights folder set; returns the run folder."""
    run_dir = WORK / "runs" / case
    if not (run_dir / "metrics.json").is_file():
        environment = {**os.environ, "IMGPIPE_WEIGHTS_DIR": str(SHARED / "weights"), "IMGPIPE_OFFLINE": "1"}
        folder, extra = CASES[case]
        task = TASKS.get(case, ("classify",))[0]
        command = [sys.executable, "-m", "imgpipe.cli", "-q", "run", task, "--data", str(case_data(folder)),
                   "--output", str(run_dir), "--export-dir", str(WORK / "saved_models"), *extra]
        completed = subprocess.run(command, env=environment, capture_output=True, text=True)
        if completed.returncode:
            sys.exit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return run_dir


def validation_probabilities(run_dir):
    """The trained network's own softmax and the labels on the run's validation split, and for segmentation the
    image of each (sampled) pixel row, as the run samples them (None for classification)."""
    from imgpipe.engine.pipeline import make_dataset
    from imgpipe.engine.run_folder import load_run
    from imgpipe.engine.scoring import split_examples
    from imgpipe.tasks.segment.task import CALIBRATION_PIXELS, sampled_pixels
    from imgpipe.understand.suspect_labels import class_probabilities

    run = load_run(run_dir)
    data = run.task.read_data(run.recipe)
    if run.task.suspect_labels == "pixels":
        dataset, _ = make_dataset(data.val, data.image_size, 4, training=False, cache="none", decoder=_decoder(run, data))
        return sampled_pixels(run.model, dataset, data.state.ignore_index, CALIBRATION_PIXELS // data.val.count)
    images, labels = split_examples(data.val, data.image_size, data.val.count)
    return class_probabilities(run.model, images), labels.astype(np.int64), None


def _decoder(run, data):
    from imgpipe.engine.pipeline import FileDecoder

    return FileDecoder(data.image_size, run.recipe.data.max_pixels, run.task.load_target(data),
                       run.task.target_signature(data))


def detection_record(run_dir, picture_dir):
    """A trained detection run's score-calibration record, recomputed from its best checkpoint."""
    from imgpipe.engine.export.saved_model import export_metadata
    from imgpipe.engine.pipeline import make_dataset
    from imgpipe.engine.run_folder import load_run
    from imgpipe.engine.scoring import model_answers
    from imgpipe.tasks.detect.task import score_calibration

    run = load_run(run_dir)
    data = run.task.read_data(run.recipe)
    dataset, _ = make_dataset(data.val, data.image_size, 8, training=False, cache="none", decoder=_decoder(run, data))
    metadata = export_metadata(run.task, data, run.recipe)
    answers, truths = model_answers(run.task, run.model, dataset, metadata)
    picture_dir.mkdir(parents=True, exist_ok=True)
    return score_calibration(answers, truths, data.class_names, picture_dir)


def halvings(probabilities, labels, image_of_row=None):
    """Per random halving: (temperature, ECE before, ECE after, NLL before, NLL after, served) on the held-out half."""
    from imgpipe.understand.calibration import calibrate, image_halves, serving_decision

    rows = []
    for seed in range(1, HALVINGS + 1):
        halves = None if image_of_row is None else image_halves(image_of_row, seed)
        result = calibrate(probabilities, labels, seed=seed, halves=halves)
        rows.append((result["temperature"], result["before"]["ece"], result["after"]["ece"],
                     result["before"]["nll"], result["after"]["nll"], serving_decision(result)[0]))
    return np.array(rows, dtype=np.float64)


def spread(values):
    low, median, high = np.percentile(values, [10, 50, 90])
    return f"{median:.3f} [{low:.3f}-{high:.3f}]"


def main():
    from imgpipe.understand.calibration import SEED as CALIBRATION_SEED
    from imgpipe.understand.calibration import calibrate, image_halves, serving_decision

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--detect-runs", nargs="*", type=pathlib.Path, default=[])
    arguments = parser.parse_args()
    print(machine_summary())
    if arguments.detect_runs:
        rows = []
        for run_dir in arguments.detect_runs:
            record = detection_record(run_dir, WORK / "detect" / run_dir.name)
            rows.append([str(run_dir), f"{record['fitted_on']}/{record['reported_on']}",
                         f"{record['slope']:.2f}, {record['intercept']:.2f}",
                         f"{record['before']['ece']:.3f} -> {record['after']['ece']:.3f}",
                         f"{record['before']['nll']:.3f} -> {record['after']['nll']:.3f}"])
        print_table("detection scores, Platt scaling on half the validation images' boxes, scored on the other half",
                    ["run", "fit/held-out boxes", "slope, intercept", "ECE", "NLL"], rows)
        return
    cases = arguments.cases.split(",")
    record_rows, spread_rows = [], []
    for case in cases:
        run_dir = train(case)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        probabilities, labels, image_of_row = validation_probabilities(run_dir)
        # The run's own halving (the task's seed), recomputed from its network with this checkout's code, so a
        # run trained before a change to the halving or the serving rule is judged by the current one.
        halves = None if image_of_row is None else image_halves(image_of_row, CALIBRATION_SEED)
        record = calibrate(probabilities, labels, seed=CALIBRATION_SEED, halves=halves)
        served, why = serving_decision(record)
        metric = TASKS.get(case, ("classify", "val_accuracy"))[1]
        record_rows.append([case, metrics["model"], f"{metrics[metric]:.4f}",
                            f"{record['fitted_on']}/{record['reported_on']}",
                            f"{record['wrong_in_fit']}/{record['wrong_in_report']}", f"{record['temperature']:.3f}",
                            f"{record['before']['ece']:.3f} -> {record['after']['ece']:.3f}",
                            f"{record['before']['mce']:.3f} -> {record['after']['mce']:.3f}",
                            f"{record['before']['nll']:.3f} -> {record['after']['nll']:.3f}",
                            "yes" if served else "no"])
        print(f"{case}: {run_dir}: {why}")
        table = halvings(probabilities, labels, image_of_row)
        kept = table[table[:, 5] == 1]
        spread_rows.append([case, spread(table[:, 0]), spread(table[:, 1]), spread(table[:, 2]),
                            spread(table[:, 3]), spread(table[:, 4]), f"{(table[:, 4] < table[:, 3]).mean():.2f}",
                            f"{table[:, 5].mean():.2f}", spread(kept[:, 2]) if len(kept) else "-"])
    print_table("the run's record (fitted on one half of validation, scored on the other)",
                ["case", "model", "val accuracy / mIoU", "fit/held-out rows", "wrong fit/held-out", "T", "ECE", "MCE", "NLL",
                 "served"], record_rows)
    print_table(f"{HALVINGS} other random halvings of the same validation probabilities: median [10th-90th "
                "percentile]", ["case", "T", "ECE softmax", "ECE calibrated", "NLL softmax", "NLL calibrated",
                                "NLL lowered", "served", "ECE when served"], spread_rows)


if __name__ == "__main__":
    main()
