"""Versioned, atomic SavedModel exports that TensorFlow Serving loads as they are.

    saved_models/<name>/<version>/            version = next integer
        saved_model.pb, variables/            the graph with its signatures
        assets.extra/imgpipe.json             task, class names, input size, signatures
        assets.extra/recipe.yaml              the resolved recipe of the run

The export is written into a hidden temporary folder beside the versions
(TF Serving only loads folders named by an integer) and renamed into place in
one step, so a crash never leaves a half-written version behind. Two exports
racing for the same version both succeed: the loser of the rename takes the
next number.

Example:
    >>> path = write_export(archive, "saved_models", "classify", metadata, recipe_yaml)
    >>> path.name
    '1'
"""

import json
import os
import pathlib
import shutil
import tempfile

from imgpipe.errors import ExportError

METADATA_FILE = "imgpipe.json"
RECIPE_FILE = "recipe.yaml"
EXTRA_FOLDER = "assets.extra"


def versions(model_root):
    """Integer versions already under `model_root`, ascending."""
    model_root = pathlib.Path(model_root)
    if not model_root.is_dir():
        return []
    return sorted(int(entry.name) for entry in model_root.iterdir() if entry.name.isdigit() and entry.is_dir())


def write_export(archive, root, name, metadata, recipe_yaml, max_attempts=100):
    """Writes `archive` (a keras `ExportArchive`) as the next version of `root/name`.

    Args:
        archive: keras.export.ExportArchive with its endpoints added.
        root: str or path, the export root (`saved_models`).
        name: str, the model name.
        metadata: dict written to assets.extra/imgpipe.json.
        recipe_yaml: str, the resolved recipe.

    Returns:
        pathlib.Path of the new version folder.
    """
    model_root = pathlib.Path(root) / name
    try:
        model_root.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=".export-", dir=model_root))
    except OSError as error:
        raise ExportError(f"{model_root}: cannot write the export ({error.strerror or error})") from None
    try:
        archive.write_out(str(staging), verbose=False)
        extra = staging / EXTRA_FOLDER
        extra.mkdir()
        (extra / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        (extra / RECIPE_FILE).write_text(recipe_yaml)
        fsync_tree(staging)
        return rename_to_next_version(staging, model_root, max_attempts)
    except OSError as error:
        raise ExportError(f"{model_root}: cannot write the export ({error.strerror or error})") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def rename_to_next_version(staging, model_root, max_attempts=100):
    """Renames the finished folder `staging` to the next free integer under `model_root`; returns it."""
    for _ in range(max_attempts):
        target = model_root / str((versions(model_root) or [0])[-1] + 1)
        try:
            # rename(2) of a folder onto an existing non-empty folder fails,
            # so a concurrent export that took this number makes us retry.
            os.rename(staging, target)
            return target
        except OSError:
            if not target.exists():
                raise
    raise ExportError(f"{model_root}: could not claim a free version after {max_attempts} attempts")


def fsync_tree(folder):
    """Flushes every file under `folder` to disk, so a rename publishes complete files."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())


def export_metadata(task, data, recipe):
    """What assets.extra/imgpipe.json holds: the task, name, input size and model, and the task's own entries.

    The one place the metadata is put together: a run's export, `imgpipe
    export RUN_DIR` and the robustness card all read it from here.

    Example:
        >>> export_metadata(task, data, recipe)["class_names"]
        ['cat', 'dog']
    """
    return {"task": task.name, "name": recipe.name, "image_size": list(data.image_size), "model": recipe.model.name,
            "max_pixels": recipe.export.max_pixels, **task.export_metadata(data, recipe)}


def export_recipe(version_dir):
    """The resolved recipe an export was trained with (assets.extra/recipe.yaml)."""
    import yaml

    from imgpipe.engine.recipe import recipe_from_dict

    path = pathlib.Path(version_dir) / EXTRA_FOLDER / RECIPE_FILE
    try:
        return recipe_from_dict(yaml.safe_load(path.read_text()), source=str(path))
    except (OSError, yaml.YAMLError) as error:
        raise ExportError(f"{path}: cannot read the export's recipe ({error})") from None


def resolve_export(path):
    """A version folder from `path`: the folder itself, or the newest version of a model folder."""
    path = pathlib.Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    found = versions(path)
    if found:
        return path / str(found[-1])
    if not path.exists():
        raise ExportError(f"{path}: no such export (expected saved_models/<name>/<version>)")
    raise ExportError(f"{path}: not a SavedModel export (no saved_model.pb and no version folders)")


def read_metadata(version_dir):
    """The imgpipe metadata of an export: task, class names, input size."""
    path = pathlib.Path(version_dir) / EXTRA_FOLDER / METADATA_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ExportError(f"{version_dir}: not an imgpipe export (missing or unreadable {path.name})") from None


def load_export(path):
    """Loads an export for prediction: returns (version folder, metadata, loaded SavedModel).

    Keep the loaded object alive while calling its signatures: they use its variables.

    Example:
        >>> version_dir, metadata, loaded = load_export("saved_models/classify")
        >>> loaded.signatures["serving_default"](image_bytes=tf.constant([jpeg_bytes]))
    """
    import tensorflow as tf

    version_dir = resolve_export(path)
    metadata = read_metadata(version_dir)
    try:
        loaded = tf.saved_model.load(str(version_dir))
    except Exception as error:  # TF raises many types for corrupt folders
        raise ExportError(f"{version_dir}: cannot load SavedModel ({str(error).splitlines()[0]})") from None
    return version_dir, metadata, loaded
