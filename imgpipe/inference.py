"""Using an export: `evaluate` a folder and `predict` files, through the serving signature.

Both read the SavedModel exactly as TF Serving would and send it encoded
bytes, so they measure the artifact that will be deployed, decoding and all.

Example:
    >>> report = evaluate("saved_models/classify/1", data="./test_images")
    >>> predictions = predict("saved_models/classify/1", ["cat.jpg"], top_k=3)
"""

import io
import pathlib

import numpy as np

from imgpipe.data.images import UnreadableImage, read_header
from imgpipe.errors import DataError
from imgpipe.export import load_export

BATCH_SIZE = 32


def read_image_bytes(path, max_pixels=89_478_485):
    """The file's bytes, after checking its header so a bad file fails with its name."""
    read_header(path, max_pixels)
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as error:
        raise UnreadableImage(f"{path}: cannot read file ({error.strerror})") from None


def run_signature(loaded, paths, batch_size=BATCH_SIZE):
    """Sends files through `serving_default` in batches; returns {output: np.ndarray} for all files."""
    import tensorflow as tf

    serve = loaded.signatures["serving_default"]
    outputs = {}
    for start in range(0, len(paths), batch_size):
        chunk = [read_image_bytes(path) for path in paths[start:start + batch_size]]
        try:
            answer = serve(image_bytes=tf.constant(chunk))
        except tf.errors.InvalidArgumentError as error:
            raise DataError(f"{paths[start]}..: the model could not decode this batch "
                            f"({str(error).splitlines()[0][:200]})") from None
        for key, value in answer.items():
            outputs.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(values) for key, values in outputs.items()}


def evaluate(export, data, report_dir=None):
    """Metrics of an export on a folder laid out like its training data.

    Args:
        export: path of a version folder, or of a model folder (its newest version).
        data: the folder to evaluate on.
        report_dir: where plots go (default: `runs/evaluate/<name>_v<version>`).

    Returns:
        dict of metrics (flat keys), with `report_dir` and `export`.
    """
    from imgpipe.tasks import TASKS

    version_dir, metadata, loaded = load_export(export)
    task = TASKS.get(metadata["task"], key="task")()
    report_dir = pathlib.Path(report_dir or pathlib.Path("runs") / "evaluate" /
                              f"{metadata.get('name', 'model')}_v{version_dir.name}")
    report_dir.mkdir(parents=True, exist_ok=True)
    metrics = task.evaluate_export(loaded, metadata, data, report_dir)
    return {**metrics, "export": str(version_dir), "report_dir": str(report_dir)}


def predict(export, paths, top_k=None, out_dir=None):
    """Predictions of an export for image files: one dict per file, in the task's terms.

    Tasks that answer with images (masks, colorized photos) write them into `out_dir`.
    """
    from imgpipe.tasks import TASKS

    version_dir, metadata, loaded = load_export(export)
    task = TASKS.get(metadata["task"], key="task")()
    if not paths:
        raise DataError("predict: no image files given")
    return task.predict_export(loaded, metadata, [str(path) for path in paths], top_k, out_dir)


OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def write_produced_images(loaded, paths, out, label):
    """For tasks that answer with images: writes each file's `image_png` answer, one request per file.

    `out` is a folder (files become `<stem>_<label>.png`) or, for a single input, an image file.
    """
    import tensorflow as tf

    if out is None:
        raise DataError("predict: this model answers with images; give --out FOLDER (or --out FILE.png for one)")
    out = pathlib.Path(out)
    to_file = out.suffix.lower() in OUTPUT_SUFFIXES
    if to_file and len(paths) != 1:
        raise DataError(f"{out}: an output file takes exactly one input image; give a folder for {len(paths)}")
    serve = loaded.signatures["serving_default"]
    results = []
    for path in paths:
        answer = serve(image_bytes=tf.constant([read_image_bytes(path)]))
        target = out if to_file else out / f"{pathlib.Path(path).stem}_{label}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        png = answer["image_png"].numpy()[0]
        if target.suffix.lower() == ".png":
            target.write_bytes(png)
        else:
            from PIL import Image

            Image.open(io.BytesIO(png)).save(target)
        results.append({"file": str(path), label: str(target), "height": int(answer["height"][0]),
                        "width": int(answer["width"][0])})
    return results
