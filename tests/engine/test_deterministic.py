"""`train.deterministic: true`: two runs on the same machine give the same weights, history and metrics.

Each run is its own process: op determinism, once on, stays on for the process (and would change
every test after this one).
"""

import csv
import json
import os
import subprocess
import sys

import h5py
import numpy as np


def run_in_process(data, run_dir, *settings):
    environment = {**os.environ, "IMGPIPE_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "imgpipe.cli", "-q", "run", "classify", "--data", str(data),
               "--output", str(run_dir), "--epochs", "1", "--image-size", "16",
               *[part for setting in settings for part in ("--set", setting)],
               "--set", "train.batch_size=8", "--set", "train.verbose=0", "--set", "evaluate.robustness=false",
               "--set", "export.enabled=false", "--set", "train.tensorboard=false"]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    history = [{key: float(value) for key, value in row.items() if key != "wall_seconds"}
               for row in csv.DictReader((run_dir / "history.csv").open())]
    with h5py.File(run_dir / "checkpoints" / "last.weights.h5") as weights:
        arrays = []
        weights.visititems(lambda name, item: arrays.append(np.asarray(item)) if isinstance(item, h5py.Dataset)
                           else None)
    return history, arrays, json.loads((run_dir / "metrics.json").read_text())


def test_two_deterministic_runs_agree_exactly(class_folder, tmp_path):
    first = run_in_process(class_folder, tmp_path / "one", "train.deterministic=true")
    second = run_in_process(class_folder, tmp_path / "two", "train.deterministic=true")
    assert first[0] == second[0]  # every epoch's losses and metrics, to the last digit
    assert len(first[1]) == len(second[1]) > 0
    assert all(np.array_equal(a, b) for a, b in zip(first[1], second[1]))
    assert first[2]["val_loss"] == second[2]["val_loss"]
