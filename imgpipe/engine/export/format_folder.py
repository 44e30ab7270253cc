"""A LiteRT, ONNX or OpenVINO file brought back for `imgpipe evaluate` and `imgpipe predict`.

The file holds the network only. Around it runs what the SavedModel's
`serving_default` runs: the same decode, pixel budget and EXIF orientation, and the task's
post-processing (`Task.serving_functions`), here in eager TensorFlow.
So an evaluation scores the exported network exactly as a caller
following the contract would get it, and answers in the same terms as the
SavedModel.

Example:
    >>> folder, metadata, loaded, recipe = load_format_file("saved_models/classify/formats/1/model.onnx")
    >>> loaded.signatures["serving_default"](image_bytes=tf.constant([jpeg_bytes]))["class_name"]
"""

import json
import pathlib

import yaml

from imgpipe.data.sources import ImageSet, TaskData
from imgpipe.engine.export.formats import load_runtime, require_runtime
from imgpipe.engine.export.saved_model import METADATA_FILE, RECIPE_FILE
from imgpipe.errors import ExportError

SUFFIXES = {".onnx": "onnx", ".tflite": "litert", ".xml": "openvino"}


def is_format_file(path):
    """True for an .onnx, .tflite or OpenVINO .xml file (anything else is read as a SavedModel folder)."""
    path = pathlib.Path(path)
    return path.suffix.lower() in SUFFIXES and path.is_file()


class FormatExport:
    """A format file answering as a loaded SavedModel does: `signatures["serving_default"](image_bytes=...)`."""

    def __init__(self, task, runtime, data, recipe):
        import tensorflow as tf

        def network(images, training=False):
            return tf.constant(runtime(images.numpy()))

        serve_image_bytes, _ = task.serving_functions(network, data, recipe)
        self.runtime = runtime
        self.signatures = {"serving_default": lambda image_bytes: {
            key: tf.convert_to_tensor(value) for key, value in serve_image_bytes(image_bytes).items()}}


def _folder_of(path):
    """The formats folder a file belongs to: its own folder, or the one above (OpenVINO's openvino/model.xml)."""
    for folder in (path.parent, path.parent.parent):
        if (folder / METADATA_FILE).is_file():
            return folder
    raise ExportError(f"{path}: not an imgpipe export (no {METADATA_FILE} beside it; "
                      f"export with `imgpipe export RUN_DIR --format ...`)")


def load_format_file(path):
    """Loads a format file in its runtime; returns (its folder, metadata, a `FormatExport`, the run's recipe)."""
    from imgpipe.engine.recipe import recipe_from_dict
    from imgpipe.engine.registry import TASKS
    from imgpipe.engine.run_folder import CLASSES_FILE, restore_state

    path = pathlib.Path(path)
    folder = _folder_of(path)
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text())
        recipe = recipe_from_dict(yaml.safe_load((folder / RECIPE_FILE).read_text()), str(folder / RECIPE_FILE))
        record = json.loads((folder / CLASSES_FILE).read_text())
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ExportError(f"{folder}: cannot read the export's {METADATA_FILE}, {RECIPE_FILE} or {CLASSES_FILE} "
                          f"({error})") from None
    task = TASKS.get(metadata["task"], key="task")()
    data = TaskData(train=ImageSet(), val=ImageSet(), class_names=record["class_names"],
                    image_size=list(metadata["image_size"]), source=str(folder), state=restore_state(task, record))
    name = SUFFIXES[path.suffix.lower()]
    require_runtime(name)
    try:
        runtime = load_runtime(name, path)
    except Exception as error:  # runtimes raise their own types for corrupt files
        raise ExportError(f"{path}: cannot load it ({str(error).splitlines()[0][:200]})") from None
    return folder, metadata, FormatExport(task, runtime, data, recipe), recipe
