"""Using an export: `evaluate` a folder and `predict` files, through the serving signature.

The export's own metadata names its task; the task (found in the registry)
reads the folder and scores the answers, while `imgpipe.engine.client` calls
the SavedModel as TF Serving would.

Example:
    >>> report = evaluate("saved_models/classify/1", data="./test_images")
    >>> predictions = predict("saved_models/classify/1", ["cat.jpg"], top_k=3)
    >>> evaluate("saved_models/classify/formats/1/model_int8.tflite", data="./test_images")["accuracy"]
"""

import pathlib

from imgpipe.engine.export.calibrated import TTA_KEY
from imgpipe.engine.export.format_folder import is_format_file, load_format_file
from imgpipe.engine.export.saved_model import export_recipe, load_export
from imgpipe.engine.registry import TASKS
from imgpipe.engine.scoring import evaluate_files
from imgpipe.errors import DataError


def open_export(export):
    """(where it is, metadata, something with `signatures["serving_default"]`, its recipe, a report label).

    A SavedModel version folder (or a model folder: its newest version), or a LiteRT, ONNX or OpenVINO file
    written by `imgpipe export --format`, run in its own runtime with the SavedModel's decode around it.
    """
    if is_format_file(export):
        folder, metadata, loaded, recipe = load_format_file(export)
        return pathlib.Path(export), metadata, loaded, recipe, f"formats{folder.name}_{pathlib.Path(export).stem}"
    version_dir, metadata, loaded = load_export(export)
    return version_dir, metadata, loaded, export_recipe(version_dir), f"v{version_dir.name}"


def evaluate(export, data, report_dir=None):
    """Metrics of an export on a folder laid out like its training data.

    Args:
        export: path of a version folder, of a model folder (its newest version), or of a LiteRT, ONNX or
            OpenVINO file from `imgpipe export --format`.
        data: the folder to evaluate on.
        report_dir: where plots go (default: `runs/evaluate/<name>_v<version>`).

    The export answers as it serves: with the test-time augmentation inside it (`tta` in the result,
    from its imgpipe.json; `imgpipe export RUN_DIR --tta MODE` writes a version with another).

    Returns:
        dict of metrics (flat keys), with `report_dir`, `export` and `tta`.
    """
    where, metadata, loaded, recipe, label = open_export(export)
    task = TASKS.get(metadata["task"], key="task")()
    report_dir = pathlib.Path(report_dir or pathlib.Path("runs") / "evaluate" / f"{metadata.get('name', 'model')}_{label}")
    report_dir.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_files(task, loaded, metadata, data, recipe.data.max_pixels, report_dir)
    return {**metrics, "export": str(where), "report_dir": str(report_dir), "tta": metadata.get(TTA_KEY, "none")}


def predict(export, paths, top_k=None, out_dir=None):
    """Predictions of an export for image files: one dict per file, in the task's terms.

    Tasks that answer with images (masks, colorized photos) write them into `out_dir`.
    """
    _, metadata, loaded, _, _ = open_export(export)
    task = TASKS.get(metadata["task"], key="task")()
    if not paths:
        raise DataError("predict: no image files given")
    return task.predict_export(loaded, metadata, [str(path) for path in paths], top_k, out_dir)
