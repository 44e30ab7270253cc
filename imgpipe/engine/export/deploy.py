"""Deployment formats of one trained model, converted, proven and written as one atomic folder.

    <root>/<name>/formats/<n>/
        model.onnx, model_<quantization>.tflite, openvino/model.xml + .bin   the files asked for
        contract.json        per file: input, resize rule, what the caller must do, output meaning
        export_report.json   per file: size, parity with Keras, metric before and after, latency
        imgpipe.json, recipe.yaml, classes.json    what evaluate and predict need to answer as the SavedModel

TF Serving loads only the integer-named folders of `<root>/<name>/`, so
`formats/` beside them leaves every SavedModel version loadable as it is. The
folder is written in a hidden staging folder and renamed into place: a
failed conversion or a refused int8 file leaves nothing behind.

Example:
    >>> folder, report = export_formats(task, model, data, recipe, decoder, ["onnx", "litert"])
    >>> print(report_table(report))
"""

import json
import pathlib
import platform
import shutil
import tempfile

import numpy as np

from imgpipe.data.sources import ImageSet
from imgpipe.engine.export import contract as contracts
from imgpipe.engine.export import formats as format_files
from imgpipe.engine.export import proof as proofs
from imgpipe.engine.export.saved_model import METADATA_FILE, RECIPE_FILE, export_metadata, fsync_tree, \
    rename_to_next_version
from imgpipe.engine.inference import compiled_forward
from imgpipe.engine.run_folder import write_run_classes
from imgpipe.engine.scoring import split_examples
from imgpipe.errors import ExportError

FORMATS_FOLDER = "formats"
CONTRACT_FILE = "contract.json"
REPORT_FILE = "export_report.json"
PROOF_IMAGES = 200
CALIBRATION_IMAGES = 300


def export_formats(task, model, data, recipe, decoder, names, quantization="float32", allow_metric_drop=False,
                   metadata_entries=None):
    """Converts `model` into each format of `names` (not `saved_model`), proves each file, writes the folder.

    Args:
        task, model, data, recipe: the trained run (data with its train and validation splits).
        decoder: the run's `FileDecoder` (it reads targets stored in files, such as masks).
        names: format names from `imgpipe.engine.export.formats.FORMATS`.
        quantization: LiteRT's 'float32', 'float16' or 'int8'; the other formats are float32.
        allow_metric_drop: keep an int8 file whose metric drops more than `export.max_metric_drop`.
        metadata_entries: what imgpipe.json holds besides `export_metadata` (the temperature scaling inside
            `model`, `imgpipe.engine.export.calibrated`).

    Returns:
        (pathlib.Path of the new folder, the report dict written to export_report.json)
    """
    for name in names:
        format_files.require_runtime(name)
    if quantization != "float32" and "litert" not in names:
        raise ExportError(f"--quantize {quantization}: only litert files are quantized; add --format litert")
    metadata = {**export_metadata(task, data, recipe), **(metadata_entries or {})}
    if task.raw_output_contract(metadata) is None:
        raise ExportError(f"{task.name}: exports only {format_files.SAVED_MODEL}; its answers need more than the network "
                          f"that the other formats hold")
    images, truths = _proof_examples(task, data, recipe, decoder)
    calibration = _calibration_images(data, recipe, decoder) if quantization == "int8" else None
    keras_forward = compiled_forward(model)
    report = {"task": task.name, "name": recipe.name, "images": len(images), "split": "validation",
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "metric": proofs.main_metric(task),
              "keras": {"metric": proofs.score(task, keras_forward, images, truths, metadata),
                        **proofs.latency(keras_forward, images)},
              "files": []}
    root = pathlib.Path(recipe.export.root) / recipe.name / FORMATS_FOLDER
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=".export-", dir=root))
    except OSError as error:
        raise ExportError(f"{root}: cannot write the export ({error.strerror or error})") from None
    try:
        contract = []
        for name in names:
            chosen = quantization if name == "litert" else "float32"
            entry, file_contract = _one_format(task, model, keras_forward, name, chosen, staging, images, truths,
                                               metadata, calibration, report["keras"]["metric"])
            _refuse_a_metric_drop(entry, recipe.export.max_metric_drop, allow_metric_drop)
            report["files"].append(entry)
            contract.append(file_contract)
        (staging / CONTRACT_FILE).write_text(json.dumps({"files": contract}, indent=2))
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2))
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        (staging / RECIPE_FILE).write_text(recipe.to_yaml())
        write_run_classes(staging, data, task)
        fsync_tree(staging)
        folder = rename_to_next_version(staging, root)
    except OSError as error:
        raise ExportError(f"{root}: cannot write the export ({error.strerror or error})") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder, report


def _one_format(task, model, keras_forward, name, quantization, staging, images, truths, metadata, calibration,
                keras_metric):
    path = format_files.convert(model, name, quantization, staging, calibration)
    runtime = format_files.load_runtime(name, path)
    proof = proofs.prove(task, keras_forward, runtime, images, truths, metadata, keras_metric=keras_metric)
    relative = str(path.relative_to(staging))
    entry = {"format": name, "quantization": quantization, "file": relative,
             "size_bytes": format_files.file_size(path), **proof, **proofs.latency(runtime, images)}
    file_contract = contracts.format_contract(
        task, metadata, name, quantization, relative, runtime.input_name, proof,
        calibration_images=0 if calibration is None else len(calibration), output_name=runtime.output_name)
    return entry, file_contract


def _refuse_a_metric_drop(entry, max_drop, allowed):
    if entry["quantization"] != "int8" or entry["metric_drop"] <= max_drop or allowed:
        return
    raise ExportError(
        f"{entry['format']} {entry['quantization']}: {entry['metric']} drops from {entry['metric_keras']:.4f} to "
        f"{entry['metric_format']:.4f} ({entry['metric_drop']:.4f} > export.max_metric_drop {max_drop}); nothing "
        f"was written (--allow-metric-drop keeps it)")


def _proof_examples(task, data, recipe, decoder):
    """The validation images (float32, the model's size) the files are proven on, and their truths."""
    images, targets = split_examples(data.val, data.image_size, PROOF_IMAGES, decoder, recipe.data.max_pixels)
    if not len(images):
        raise ExportError(f"{data.source}: no validation images to prove the exported files on")
    return images.astype(np.float32), [task.truth(image, target) for image, target in zip(images, targets)]


def _calibration_images(data, recipe, decoder):
    """Up to CALIBRATION_IMAGES training images, a seeded sample across the split, never validation images."""
    train = data.train
    if train.is_files:
        chosen = np.sort(np.random.default_rng(recipe.data.seed).permutation(train.count)[:CALIBRATION_IMAGES])
        train = ImageSet.from_files([train.paths[i] for i in chosen], np.asarray(train.targets)[chosen])
    images, _ = split_examples(train, data.image_size, CALIBRATION_IMAGES, decoder, recipe.data.max_pixels)
    return images.astype(np.float32)


def report_table(report, folder=None):
    """The report as the text table the CLI prints: one row per file, the Keras model first.

    Example:
        >>> print(report_table(report, folder))
        format    quantization  file        size       max |diff|  accuracy       ms/img b1  ms/img b32
    """
    metric = report["metric"]
    header = f"{'format':<10}{'quantization':<14}{'file':<26}{'size':>10}{'max |diff|':>12}{metric:>16}" \
             f"{'ms/img b1':>11}{'ms/img b32':>12}"
    keras = report["keras"]
    rows = [header, f"{'keras':<10}{'float32':<14}{'(the trained model)':<26}{'':>10}{'':>12}"
                    f"{keras['metric']:>16.4f}{keras['batch_1_ms']:>11.2f}{keras['batch_32_ms']:>12.2f}"]
    for entry in report["files"]:
        rows.append(f"{entry['format']:<10}{entry['quantization']:<14}{entry['file']:<26}"
                    f"{entry['size_bytes'] / 1e6:>8.2f}MB{entry['max_abs_diff']:>12.2e}{entry['metric_format']:>16.4f}"
                    f"{entry['batch_1_ms']:>11.2f}{entry['batch_32_ms']:>12.2f}")
    where = [f"in {folder}"] if folder is not None else []
    return "\n".join(rows + where + [f"({report['images']} validation images; metric and parity against the "
                                     f"Keras model on the same float32 input)"])
