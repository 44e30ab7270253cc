"""Planted label errors: does `imgpipe run classify` rank them first in suspect_labels.csv?

    a copy of a real train/ + val/ folder (the raccoon crops; scikit-learn's 8x8 digits)
    -> 5 % of the images of each split moved into another class's folder (seeded): wrong labels
    -> imgpipe run classify --data COPY, as a user types it (the ImageNet weights folder set),
       with --set train.suspect_labels=MODE
    -> precision and recall of the planted errors among the top k of suspect_labels.csv, k = twice
       the planted count. Validation mode ranks only validation images, so only the validation
       errors count (the training ones are there to train on noisy labels, as users do);
       cross_validation ranks every image, so every planted error counts.

Usage (from the repository root, with `.[test]` and scikit-learn installed):
    .venv/bin/python benchmarks/suspect_labels.py [--cases raccoon,digits] [--fraction 0.05] \
        [--mode validation|cross_validation]
"""

import argparse
import csv
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_summary, print_table  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
WORK = pathlib.Path(os.environ.get("BENCH_WORK", "/tmp/imgpipe_bench/suspect_labels"))


def case_data(case):
    """The case's clean train/ + val/ folder (benchmarks/time_to_accuracy.py builds and keeps it)."""
    from benchmarks import time_to_accuracy

    time_to_accuracy.WORK = WORK
    return time_to_accuracy.case_folder(case)


def plant_errors(source, target, fraction, seed=0, splits=("val",)):
    """Copies `source` to `target` with `fraction` of each split's files moved to another class (seeded).

    Returns:
        {path in target: the true class} of the moved files of `splits`.
    """
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    rng = np.random.default_rng(seed)
    planted = {}
    for split in ("train", "val"):
        classes = sorted(path.name for path in (target / split).iterdir() if path.is_dir())
        files = sorted(path for path in (target / split).rglob("*") if path.is_file())
        for index in rng.permutation(len(files))[: round(fraction * len(files))]:
            path = files[index]
            others = [name for name in classes if name != path.parent.name]
            moved = target / split / others[rng.integers(len(others))] / f"moved_{path.name}"
            path.rename(moved)
            if split in splits:
                planted[str(moved)] = path.parent.name
    return planted


def run(case, data, mode):
    run_dir = WORK / "runs" / case
    shutil.rmtree(run_dir, ignore_errors=True)
    environment = {**os.environ, "IMGPIPE_WEIGHTS_DIR": str(SHARED / "weights"), "IMGPIPE_OFFLINE": "1"}
    command = [sys.executable, "-m", "imgpipe.cli", "-q", "run", "classify", "--data", str(data),
               "--output", str(run_dir), "--no-export", "--no-robustness", "--set", f"train.suspect_labels={mode}"]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True)
    if completed.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return run_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="raccoon,digits")
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--mode", default="validation", choices=("validation", "cross_validation"))
    arguments = parser.parse_args()
    splits = ("val",) if arguments.mode == "validation" else ("train", "val")
    print(machine_summary())
    rows = []
    for case in arguments.cases.split(","):
        data = WORK / "data" / f"{case}_noisy"
        planted = plant_errors(case_data(case), data, arguments.fraction, splits=splits)
        run_dir = run(case, data, arguments.mode)
        suspects = list(csv.DictReader((run_dir / "suspect_labels.csv").open()))
        k = 2 * len(planted)
        found = [row for row in suspects[:k] if row["file"] in planted]
        right_class = sum(row["suggested_label"] == planted[row["file"]] for row in found)
        ranked = len(suspects)
        flagged = [row for row in suspects if row["flagged"] == "yes"]
        flagged_planted = sum(row["file"] in planted for row in flagged)
        rows.append([case, ranked, len(planted), k, f"{len(found) / k:.2f}", f"{len(found) / len(planted):.2f}",
                     f"{right_class}/{len(found)}", len(flagged), f"{flagged_planted}/{len(flagged)}"])
        print(f"{case}: {run_dir}")
    print_table(f"planted wrong labels ({arguments.fraction:.0%} of each split), {arguments.mode} mode",
                ["case", "images ranked", "planted among them", "k", "precision@k", "recall@k", "suggested = true class",
                 "flagged", "planted among flagged"], rows)


if __name__ == "__main__":
    main()
