"""Classification data from a folder of class sub-folders.

    images/cat/001.jpg, images/cat/nested/002.png, images/dog/003.jpg ...

Class names are the sub-folder names, sorted; images are found recursively.
A folder with `train/` and `val/` (or `validation/`) sub-folders keeps that
split; otherwise a seeded 80/20 split, stratified by class, is drawn. Every
file's header is read once here, so unreadable files are skipped (one warning
each) before training starts, and nothing is ever written into the folder.

Example:
    >>> data = read_class_folders("./images", val_split=0.2, seed=1337)
    >>> data.class_names, data.train.count
"""

import logging
import os
import pathlib

import numpy as np

from imgpipe.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, UnreadableImage, read_header
from imgpipe.data.sources import ImageSet, TaskData, auto_image_size
from imgpipe.data.grouped_split import split_keeping_duplicates
from imgpipe.data.walk import walk_folders
from imgpipe.errors import DataError

log = logging.getLogger("imgpipe")

VAL_FOLDER_NAMES = ("val", "validation")


def list_images(folder):
    """Image files below `folder` (recursive, by extension, hidden files left out), sorted."""
    return sorted(
        os.path.join(root, name)
        for root, files in walk_folders(folder)
        for name in files
        if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
    )


def class_folders(root):
    """Sorted, non-hidden sub-folders of `root`: the class names."""
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))


def scan_class_folders(root, max_pixels, class_names=None):
    """Reads the headers of every image under `root`'s class folders.

    Returns (paths, labels, class_names, headers, skipped). With `class_names`
    given (validation or test folders), those names fix the label indices and a
    folder of an unknown class is an error.
    """
    root = pathlib.Path(root)
    found_names = class_folders(root)
    if not found_names:
        loose = list_images(root)
        problem = (
            f"{len(loose)} images but no class sub-folders (expected {root}/<class name>/<image>)"
            if loose
            else "no class sub-folders and no images"
        )
        raise DataError(f"{root}: {problem}")
    if class_names is None:
        class_names = found_names
    else:
        unknown = sorted(set(found_names) - set(class_names))
        if unknown:
            raise DataError(f"{root / unknown[0]}: class {unknown[0]!r} is not one of the model's classes")
    paths, labels, headers, skipped = [], [], [], []
    for name in found_names:
        for path in list_images(root / name):
            try:
                headers.append(read_header(path, max_pixels))
            except UnreadableImage as error:
                log.warning("skipped %s", error)
                skipped.append(str(error))
                continue
            paths.append(path)
            labels.append(class_names.index(name))
    return paths, np.array(labels, dtype=np.int32), class_names, headers, skipped


def read_class_folders(root, val_split=0.2, seed=1337, max_pixels=None, image_size="auto", split_groups="duplicates"):
    """Reads a class-folder data set into a `TaskData` with both splits.

    Args:
        root: str or path, the folder holding one sub-folder per class, or
            `train/` and `val/` folders each laid out so.
        val_split: float, fraction of each class held out when there is no `val/`.
        seed: int, seed of that split.
        max_pixels: int, larger images are skipped as decompression bombs.
        image_size: 'auto' or [height, width]; 'auto' follows the data.
        split_groups: 'duplicates' keeps copies of one picture on one side of the split imgpipe draws; 'none'.

    Raises:
        DataError: the folder is missing, flat, has fewer than two classes or no
            readable image.
    """
    root = pathlib.Path(root)
    if not root.exists():
        raise DataError(f"{root}: data folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected a folder of class sub-folders)")
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    split_report = None
    val_root = next((root / name for name in VAL_FOLDER_NAMES if (root / name).is_dir()), None)
    if (root / "train").is_dir() and val_root is not None:
        paths, labels, class_names, headers, skipped = scan_class_folders(root / "train", max_pixels)
        val_paths, val_labels, _, val_headers, val_skipped = scan_class_folders(val_root, max_pixels, class_names)
        skipped += val_skipped
        train = ImageSet.from_files(paths, labels, headers)
        val = ImageSet.from_files(val_paths, val_labels, val_headers)
    else:
        paths, labels, class_names, headers, skipped = scan_class_folders(root, max_pixels)
        train_index, val_index, split_report = split_keeping_duplicates(paths, labels, val_split, seed, split_groups,
                                                                        max_pixels)
        train = ImageSet.from_files([paths[i] for i in train_index], labels[train_index],
                                    [headers[i] for i in train_index])
        val = ImageSet.from_files([paths[i] for i in val_index], labels[val_index], [headers[i] for i in val_index])
    _require_trainable(root, train, class_names, skipped)
    if val.count == 0:
        raise DataError(f"{root}: no validation images (add a val/ folder or more images per class)")
    return TaskData(
        train=train,
        val=val,
        class_names=list(class_names),
        image_size=auto_image_size(headers) if image_size == "auto" else list(image_size),
        source=str(root),
        skipped=skipped,
        split_report=split_report,
    )


def _require_trainable(root, train, class_names, skipped):
    if train.count == 0:
        detail = f" ({len(skipped)} files could not be read)" if skipped else ""
        raise DataError(f"{root}: no readable images{detail}")
    present = sorted(set(np.asarray(train.targets).tolist()))
    if len(present) < 2:
        only = class_names[present[0]] if present else "none"
        raise DataError(f"{root}: need at least two classes with readable images, found one ({only})")
