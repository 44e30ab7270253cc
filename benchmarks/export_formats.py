"""Deployment formats on real data: size, parity with Keras, the task's metric and latency per format.

For each case, one short `imgpipe run` (with ../shared/weights, so the model is the pretrained
MobileNetV2 variant a user would deploy), then `imgpipe export RUN --format all`, LiteRT float16
and LiteRT int8 (`--allow-metric-drop`, so the drop is reported rather than refused). Every
figure is read from the `export_report.json` files the exports write: each file run in its
own runtime (onnxruntime, ai-edge-litert, OpenVINO) on the run's validation images, against
the Keras model in the same process.

    classify   raccoon box crops against background crops of ../shared/data/raccoon, split by photo
               (`benchmarks/transfer.py`'s folder)
    segment    ../shared/data/membrane, the first 24 sections train, the last 6 validate
               (`benchmarks/time_to_accuracy.py`'s split)
    detect     ../shared/data/raccoon as it is (Pascal VOC), imgpipe's seeded split

The runs are short (`--epochs`): the benchmark compares each file with the model it came from,
not the model with the best one could train. Latency is the network alone on float32 input
at the model's size (no decode), the median of 10 calls, batch 1 and batch 32.

Last, the README's plain onnxruntime snippet (Pillow's decode, OpenCV's resize, as the contract
describes them) is compared with the SavedModel's serving_default on the classify case's validation JPEGs:
the tolerance a caller who follows the contract gets on real photos.

Usage (from the repository root, with `.[test]` installed):
    .venv/bin/python benchmarks/export_formats.py [--cases classify,segment,detect] [--epochs 5,8,5]
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import RACCOON_IMAGES, machine_summary, print_table  # noqa: E402

SHARED = RACCOON_IMAGES.parents[2]
WORK = pathlib.Path(os.environ.get("BENCH_WORK", "/tmp/imgpipe_bench/export_formats"))
CASES = ("classify", "segment", "detect")
EXPORTS = (("--format", "all"), ("--format", "litert", "--quantize", "float16"),
           ("--format", "litert", "--quantize", "int8", "--allow-metric-drop"))


def case_data(case):
    """The folder `imgpipe run CASE --data` reads."""
    if case == "detect":
        return SHARED / "data" / "raccoon"
    from benchmarks import time_to_accuracy

    time_to_accuracy.WORK = WORK
    return time_to_accuracy.case_folder("raccoon" if case == "classify" else "membrane")


def imgpipe(*args):
    """Runs the imgpipe CLI as a user would, with the shared ImageNet weights folder."""
    environment = {**os.environ, "IMGPIPE_WEIGHTS_DIR": str(SHARED / "weights"), "IMGPIPE_OFFLINE": "1"}
    command = [sys.executable, "-m", "imgpipe.cli", "-q", *map(str, args)]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True)
    if completed.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return completed.stdout


def run_case(case, epochs):
    """Trains the case once (kept under WORK), exports every format; returns the reports' rows."""
    run_dir, export_root = WORK / "runs" / case, WORK / "saved_models"
    if not (run_dir / "metrics.json").is_file():
        imgpipe("run", case, "--data", case_data(case), "--epochs", epochs, "--output", run_dir,
                "--export-dir", export_root, "--set", "evaluate.robustness=false", "--set", "train.verbose=0")
    formats_root = export_root / case / "formats"
    before = set(formats_root.iterdir()) if formats_root.is_dir() else set()
    for export in EXPORTS:
        imgpipe("export", run_dir, "--export-dir", export_root, *export)
    reports = [json.loads((folder / "export_report.json").read_text())
               for folder in sorted(set(formats_root.iterdir()) - before, key=lambda path: int(path.name))]
    keras = reports[0]["keras"]
    rows = [["keras", "float32", "", "", f"{keras['metric']:.4f}", keras["batch_1_ms"], keras["batch_32_ms"]]]
    for report in reports:
        for entry in report["files"]:
            rows.append([entry["format"], entry["quantization"], round(entry["size_bytes"] / 1e6, 2),
                         f"{entry['max_abs_diff']:.1e}", f"{entry['metric_format']:.4f}", entry["batch_1_ms"],
                         entry["batch_32_ms"]])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    title = (f"{case}: {metrics.get('model', '')} {reports[0]['images']} validation images, metric "
             f"{reports[0]['metric']}, {epochs} epochs")
    return title, rows


def contract_client(folder, path):
    """The README's plain onnxruntime snippet (no imgpipe import): class probabilities for one file."""
    import cv2
    import numpy as np
    import onnxruntime
    from PIL import Image, ImageOps

    contract = next(f for f in json.loads((folder / "contract.json").read_text())["files"] if f["format"] == "onnx")
    height, width = contract["input"]["shape"][1:3]
    session = onnxruntime.InferenceSession(str(folder / contract["file"]))
    image = Image.open(path)
    image.draft("RGB", (width, height))
    pixels = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    shrinks_over_2x = pixels.shape[0] > 2 * height or pixels.shape[1] > 2 * width
    pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA if shrinks_over_2x else cv2.INTER_LINEAR)
    return session.run(None, {contract["input"]["name"]: pixels.astype(np.float32)[None]})[0][0]


def contract_client_agreement(case="classify"):
    """The README snippet against the SavedModel's serving_default on the case's validation JPEGs."""
    import numpy as np
    import tensorflow as tf

    export_root = WORK / "saved_models" / case
    formats = sorted((export_root / "formats").iterdir(), key=lambda path: int(path.name))
    folder = next(f for f in formats if (f / "model.onnx").is_file())
    version = max((p for p in export_root.iterdir() if p.name.isdigit()), key=lambda path: int(path.name))
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    files = sorted((case_data(case) / "val").rglob("*.jpg"))
    differences, agree = [], 0
    for path in files:
        served = serve(image_bytes=tf.constant([path.read_bytes()]))["probabilities"].numpy()[0]
        client = contract_client(folder, path)
        differences.append(float(np.abs(served - client).max()))
        agree += int(served.argmax() == client.argmax())
    return [[len(files), f"{max(differences):.4f}", f"{float(np.median(differences)):.4f}",
             f"{agree}/{len(files)}"]]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--epochs", default="5,8,5", help="epochs per case, in the order of --cases")
    args = parser.parse_args()
    cases = args.cases.split(",")
    epochs = dict(zip(cases, args.epochs.split(",")))
    print(machine_summary())
    for case in cases:
        title, rows = run_case(case, epochs[case])
        print_table(title, ["format", "quantization", "size MB", "max |diff|", "metric", "ms/img b1",
                            "ms/img b32"], rows)
    if "classify" in cases:
        print_table("the README's onnxruntime snippet (Pillow decode, OpenCV resize) against the SavedModel's "
                    "serving_default, on the classify case's validation JPEGs",
                    ["JPEGs", "max |prob diff|", "median", "same top-1"], contract_client_agreement())


if __name__ == "__main__":
    main()
