"""A run folder brought back to a model: `imgpipe export RUN_DIR` and `imgpipe explain RUN_DIR`.

Exporting again is useful after a run stopped before its own export, or to
export the last rather than the best weights. The model is rebuilt from the run's resolved
recipe and class list, so nothing but the run folder is needed.

Example:
    >>> export_run("runs/classify/classify", weights="last")
    PosixPath('saved_models/classify/2')
"""

import dataclasses
import json
import pathlib
import typing

import yaml

from imgpipe.data.sources import ImageSet, TaskData
from imgpipe.errors import DataError
from imgpipe.engine.export.calibrated import run_calibration, served_network
from imgpipe.engine.export.saved_model import export_metadata, write_export
from imgpipe.engine.recipe import recipe_from_dict
from imgpipe.engine.registry import TASKS

CLASSES_FILE = "classes.json"


def write_run_classes(run_dir, data, task):
    """Records the class names (and what else the task needs) of a run, so it can be rebuilt without its data."""
    record = {"class_names": list(data.class_names), "state": data.state.to_json() if data.state is not None else {}}
    (pathlib.Path(run_dir) / CLASSES_FILE).write_text(json.dumps(record))


def export_run(run_dir, export_dir=None, name=None, weights="best", max_pixels=None, tta=None):
    """Rebuilds the run's model, loads its `best` or `last` weights and exports it.

    `max_pixels` replaces the recipe's `export.max_pixels`, the served pixel budget, and `tta` its
    `export.tta`, the test-time augmentation inside the served network.

    Example:
        >>> export_run("runs/classify/classify", max_pixels=50_000_000, tta="flip")
        PosixPath('saved_models/classify/2')
    """
    updates = (("export.root", export_dir), ("export.name", name), ("export.max_pixels", max_pixels),
               ("export.tta", tta))
    run = load_run(run_dir, weights, **{key: value for key, value in updates if value is not None})
    network, entries = served_network(run.model, run_calibration(run_dir), run.recipe)
    return write_export(run.task.export_archive(network, run.data, run.recipe), run.recipe.export.root,
                        run.recipe.name, {**export_metadata(run.task, run.data, run.recipe), **entries},
                        run.recipe.to_yaml())


def export_run_formats(run_dir, names, quantization="float32", allow_metric_drop=False, export_dir=None, name=None,
                       weights="best", tta=None):
    """Converts a run's checkpoint into LiteRT, ONNX or OpenVINO files, each proven on the run's validation split.

    The proof needs the run's data: it is read again from the recipe's `data.path` and split by its seed, so
    the validation images are the ones the run held out, and int8 calibrates on its training images.

    Example:
        >>> folder, report = export_run_formats("runs/classify/classify", ["onnx"])
        >>> report["files"][0]["max_abs_diff"]
    """
    from imgpipe.engine.export.deploy import export_formats
    from imgpipe.engine.pipeline import FileDecoder

    updates = (("export.root", export_dir), ("export.name", name), ("export.tta", tta))
    run = load_run(run_dir, weights, **{key: value for key, value in updates if value is not None})
    try:
        data = run.task.read_data(run.recipe)
    except DataError as error:
        raise DataError(f"{error}; the proof of an export runs on the run's own data "
                        f"({run.recipe.data.path or 'the demo data'})") from None
    if list(data.class_names) != list(run.data.class_names):
        raise DataError(f"{run.recipe.data.path}: its classes are now {data.class_names}, the run was trained on "
                        f"{run.data.class_names}; the proof needs the run's own data")
    data = dataclasses.replace(data, image_size=run.data.image_size)  # its state: what reads the targets
    decoder = FileDecoder(data.image_size, run.recipe.data.max_pixels, run.task.load_target(data),
                          run.task.target_signature(data))
    network, entries = served_network(run.model, run_calibration(run_dir), run.recipe)
    return export_formats(run.task, network, data, run.recipe, decoder, names, quantization, allow_metric_drop,
                          metadata_entries=entries)


def restore_state(task, record):
    """The task's typed state from a run folder's record (`extras` in folders written before it was typed)."""
    saved = record.get("state", record.get("extras", {}))
    return task.state_class.from_json(saved) if task.state_class is not None else None


@dataclasses.dataclass
class TrainedRun:
    """A run folder brought back: its resolved recipe, task, class list (as `data`, without images) and model."""

    recipe: typing.Any
    task: typing.Any
    data: TaskData
    model: typing.Any


def load_run(run_dir, weights="best", **recipe_updates):
    """Rebuilds a run's model from its folder alone and loads its `best` or `last` checkpoint.

    Example:
        >>> run = load_run("runs/classify/classify")
        >>> run.model.predict(images), run.data.class_names
    """
    run_dir = pathlib.Path(run_dir)
    try:
        recipe = recipe_from_dict(yaml.safe_load((run_dir / "recipe.yaml").read_text()), str(run_dir))
        record = json.loads((run_dir / CLASSES_FILE).read_text())
        class_names = record["class_names"]
    except (OSError, ValueError, KeyError, yaml.YAMLError):
        raise DataError(f"{run_dir}: not an imgpipe run folder (recipe.yaml or {CLASSES_FILE} missing)") from None
    checkpoint = run_dir / "checkpoints" / f"{weights}.weights.h5"
    if weights == "last" and not checkpoint.is_file():  # interrupted: the backup holds the last epoch
        backups = [run_dir / "checkpoints" / f"backup_{phase}" / "latest.weights.h5" for phase in ("train", "warmup")]
        checkpoint = next((path for path in backups if path.is_file()), checkpoint)
    if not checkpoint.is_file():
        why = "it stopped before its first epoch" if weights == "last" else \
            "it stopped before an epoch was kept as the best, or before its monitored score was first made"
        raise DataError(f"{checkpoint}: no {weights} checkpoint in this run ({why})")
    recipe = recipe.update(**recipe_updates) if recipe_updates else recipe
    task = TASKS.get(recipe.task, key="task")()
    data = TaskData(train=ImageSet(), val=ImageSet(), class_names=class_names,
                    image_size=list(recipe.data.image_size), source=str(run_dir),
                    state=restore_state(task, record))
    model = task.build_model(recipe.update(**{"model.weights": None}), data)
    model.load_weights(checkpoint)
    return TrainedRun(recipe, task, data, model)
