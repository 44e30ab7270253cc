"""Using an export: `evaluate` a folder and `predict` files, through the serving signature.

The export's own metadata names its task; the task (found in the registry)
reads the folder and scores the answers, while `imgpipe.engine.client` calls
the SavedModel as TF Serving would.

Example:
    >>> report = evaluate("saved_models/classify/1", data="./test_images")
    >>> predictions = predict("saved_models/classify/1", ["cat.jpg"], top_k=3)
"""

import pathlib

from imgpipe.engine.export import export_recipe, load_export
from imgpipe.engine.registry import TASKS
from imgpipe.engine.scoring import evaluate_files
from imgpipe.errors import DataError


def evaluate(export, data, report_dir=None):
    """Metrics of an export on a folder laid out like its training data.

    Args:
        export: path of a version folder, or of a model folder (its newest version).
        data: the folder to evaluate on.
        report_dir: where plots go (default: `runs/evaluate/<name>_v<version>`).

    Returns:
        dict of metrics (flat keys), with `report_dir` and `export`.
    """
    version_dir, metadata, loaded = load_export(export)
    task = TASKS.get(metadata["task"], key="task")()
    max_pixels = export_recipe(version_dir).data.max_pixels
    report_dir = pathlib.Path(report_dir or pathlib.Path("runs") / "evaluate" /
                              f"{metadata.get('name', 'model')}_v{version_dir.name}")
    report_dir.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_files(task, loaded, metadata, data, max_pixels, report_dir)
    return {**metrics, "export": str(version_dir), "report_dir": str(report_dir)}


def predict(export, paths, top_k=None, out_dir=None):
    """Predictions of an export for image files: one dict per file, in the task's terms.

    Tasks that answer with images (masks, colorized photos) write them into `out_dir`.
    """
    version_dir, metadata, loaded = load_export(export)
    task = TASKS.get(metadata["task"], key="task")()
    if not paths:
        raise DataError("predict: no image files given")
    return task.predict_export(loaded, metadata, [str(path) for path in paths], top_k, out_dir)
