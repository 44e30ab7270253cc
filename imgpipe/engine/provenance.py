"""Where a run's figures came from: library versions, the data's file list, the seed, the devices.

Two runs whose metrics differ can then be told apart from metrics.json alone:
another TensorFlow, a file added to the folder, another seed or another
device count.

Example:
    >>> provenance(data, recipe, ["/job:localhost/replica:0/task:0/device:CPU:0"])["data"]["files"]
    398
"""

import hashlib
import importlib.metadata
import os
import platform

LIBRARIES = ("imgpipe", "tensorflow", "keras", "albumentations", "numpy")


def library_versions():
    """Installed versions of the libraries a run's figures depend on, and Python's."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def file_list_digest(data):
    """(file count, sha256 of each file's split, path relative to their common folder and size in bytes).

    It changes when a file is added, removed, renamed, resized or moved across the split; it does not
    read the images, so it costs one `stat` per file. None for data sets that are not files (tfds).
    """
    splits = [("train", data.train), ("val", data.val)]
    if not all(image_set.is_files for _, image_set in splits):
        return None, None
    paths = [path for _, image_set in splits for path in image_set.paths]
    if not paths:
        return 0, None
    root = os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in paths])
    digest = hashlib.sha256()
    for split, image_set in splits:
        for path in sorted(image_set.paths):
            relative = os.path.relpath(os.path.abspath(path), root)
            digest.update(f"{split}\t{relative}\t{os.path.getsize(path)}\n".encode())
    return len(paths), digest.hexdigest()


def provenance(data, recipe, devices):
    """metrics.json's `provenance`: versions, the data source with its file count and digest, seed, devices."""
    files, digest = file_list_digest(data)
    return {"versions": library_versions(),
            "data": {"source": str(data.source), "files": files, "file_list_sha256": digest},
            "seed": recipe.data.seed, "devices": list(devices)}
