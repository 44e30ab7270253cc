"""Test-time augmentation on real data: what each `export.tta` mode gains, and what it costs per image served.

For each case, one short `imgpipe run` (with ../shared/weights, the pretrained MobileNetV2 variant
a user would deploy), then `imgpipe export RUN --tta MODE` for none, flip and flip+scales (the
same checkpoint in three SavedModel versions), and for each version:

    metric    `imgpipe evaluate VERSION --data VAL`: the export's own answers through serving_default,
              files decoded in the graph (accuracy; mean IoU at each section's full 512x512 size)
    latency   serving_default on the validation files' bytes (decode, the network's views, the
              answer), ms per image at batch 1 and batch 32 (the files repeated), the median of
              repeated calls after one warm-up call

and each as a ratio to none. The cases:

    classify   raccoon box crops against background crops of ../shared/data/raccoon, split by photo
               (`benchmarks/transfer.py`'s folder; 64 validation crops)
    classify_scratch   the same crops from scratch (`--weights none`: strided_cnn, which is small_cnn at 64 px): the pretrained model
               is right on every validation crop, which leaves TTA nothing to gain
    segment    ../shared/data/membrane, the first 24 sections train, the last 6 validate
               (`benchmarks/time_to_accuracy.py`'s split)

The runs are short (`--epochs`), so a model with room to improve shows what TTA can add; the
runs are kept under BENCH_WORK and reused.

Usage (from the repository root, with `.[test]` installed):
    .venv/bin/python benchmarks/tta.py [--cases classify,classify_scratch,segment] [--epochs 5,6,8]
"""

import argparse
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import RACCOON_IMAGES, machine_summary, print_table  # noqa: E402

SHARED = RACCOON_IMAGES.parents[2]
WORK = pathlib.Path(os.environ.get("BENCH_WORK", "/tmp/imgpipe_bench/tta"))
CASES = ("classify", "classify_scratch", "segment")
TASK = {"classify": "classify", "classify_scratch": "classify", "segment": "segment"}
EXTRA = {"classify_scratch": ("--weights", "none")}
MODES = ("none", "flip", "flip+scales")
METRIC = {"classify": "accuracy", "segment": "mean_iou"}
REPEATS = {1: 20, 32: 5}


def case_data(case):
    """The case's train/ + val/ folder."""
    from benchmarks import time_to_accuracy

    time_to_accuracy.WORK = WORK
    return time_to_accuracy.case_folder("raccoon" if TASK[case] == "classify" else "membrane")


def imgpipe(*args):
    """Runs the imgpipe CLI as a user would, with the shared ImageNet weights folder; returns its stdout."""
    environment = {**os.environ, "IMGPIPE_WEIGHTS_DIR": str(SHARED / "weights"), "IMGPIPE_OFFLINE": "1"}
    command = [sys.executable, "-m", "imgpipe.cli", "-q", *map(str, args)]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True)
    if completed.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return completed.stdout


def exports(case, epochs):
    """Trains the case once (kept under WORK), then one SavedModel version per mode; returns {mode: version}."""
    run_dir, export_root = WORK / "runs" / case, WORK / "saved_models"
    if not (run_dir / "metrics.json").is_file():
        imgpipe("run", TASK[case], "--data", case_data(case), "--epochs", epochs, "--output", run_dir, "--no-export",
                *EXTRA.get(case, ()),
                "--no-robustness", "--set", "train.verbose=0", "--set", "train.suspect_labels=none")
    versions = {}
    for mode in MODES:
        out = imgpipe("export", run_dir, "--export-dir", export_root, "--name", f"{case}_tta", "--tta", mode)
        versions[mode] = pathlib.Path(out.split("export:", 1)[1].strip())
    return run_dir, versions


def serving_ms(version, files):
    """ms per image of serving_default on the files' bytes, at batch 1 and batch 32: {batch: ms}."""
    import numpy as np
    import tensorflow as tf

    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    payloads = [path.read_bytes() for path in files]
    timings = {}
    for batch, repeats in REPEATS.items():
        seconds = []
        for call in range(repeats + 1):
            chunk = tf.constant([payloads[(call * batch + i) % len(payloads)] for i in range(batch)])
            start = time.perf_counter()
            serve(image_bytes=chunk)
            if call:  # the first call traces and allocates
                seconds.append(time.perf_counter() - start)
        timings[batch] = float(np.median(seconds) / batch * 1000)
    return timings


def run_case(case, epochs):
    """The table's rows for one case: per mode, the metric and latency, and their ratios to none."""
    import json

    from imgpipe.engine.use_export import evaluate

    run_dir, versions = exports(case, epochs)
    val = case_data(case) / "val"
    files = sorted(path for path in val.rglob("*") if path.suffix in (".jpg", ".png") and "masks" not in path.parts)
    rows, base = [], None
    for mode, version in versions.items():
        report = evaluate(version, val, report_dir=WORK / "reports" / case / mode.replace("+", "_"))
        assert report["tta"] == mode, (report["tta"], mode)
        figures = (report[METRIC[TASK[case]]], *serving_ms(version, files).values())
        base = base or figures
        rows.append([mode, f"{figures[0]:.4f}", f"{figures[0] - base[0]:+.4f}", round(figures[1], 1),
                     f"{figures[1] / base[1]:.2f}x", round(figures[2], 1), f"{figures[2] / base[2]:.2f}x"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    title = (f"{case}: {metrics['model']}, {epochs} epochs, {report['images']} validation images, "
             f"{METRIC[TASK[case]]} by imgpipe evaluate on each export")
    return title, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--epochs", default="5,6,8", help="epochs per case, in the order of --cases")
    args = parser.parse_args()
    cases = args.cases.split(",")
    epochs = dict(zip(cases, args.epochs.split(",")))
    print(machine_summary())
    for case in cases:
        title, rows = run_case(case, epochs[case])
        print_table(title, ["export.tta", METRIC[TASK[case]], "vs none", "ms/img b1", "vs none", "ms/img b32", "vs none"],
                    rows)


if __name__ == "__main__":
    main()
