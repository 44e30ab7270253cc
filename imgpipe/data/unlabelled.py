"""A folder of images without labels (style transfer, colorization): each image is its own target.

Example:
    >>> data = read_image_folder("photos/", val_split=0.1)
    >>> data.train.count, data.image_size
    (180, [128, 128])
"""

import logging
import pathlib

import numpy as np

from imgpipe.data.folders import list_images
from imgpipe.data.images import DEFAULT_MAX_PIXELS, UnreadableImage, read_header
from imgpipe.data.sources import ImageSet, TaskData, auto_image_size
from imgpipe.data.grouped_split import split_keeping_duplicates
from imgpipe.errors import DataError

log = logging.getLogger("imgpipe")


def read_image_folder(root, val_split=0.2, seed=1337, max_pixels=DEFAULT_MAX_PIXELS, image_size="auto", low=64,
                      high=128, step=32, split_groups="duplicates"):
    """Every readable image below `root`, split seeded; targets are zeros; unreadable files skipped with a warning.

    `image_size` 'auto' picks the median side clamped to [low, high] in multiples of `step`; copies of one
    picture stay on one side of the split (`split_groups`).
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found" if not root.exists() else f"{root}: not a folder")
    paths, headers, skipped = [], [], []
    for path in list_images(root):
        try:
            headers.append(read_header(path, max_pixels))
            paths.append(path)
        except UnreadableImage as error:
            log.warning("skipped %s", error)
            skipped.append(str(error))
    if len(paths) < 2:
        raise DataError(f"{root}: needs at least two readable images, found {len(paths)}")
    train_index, val_index, split_report = split_keeping_duplicates(paths, [0] * len(paths), val_split, seed,
                                                                    split_groups, max_pixels)
    size = auto_image_size(headers, low=low, high=high, step=step) if image_size == "auto" else list(image_size)

    def subset(indices):
        return ImageSet.from_files([paths[i] for i in indices], np.zeros(len(indices), np.int32))

    return TaskData(train=subset(train_index), val=subset(val_index), class_names=[], image_size=size,
                    source=str(root), skipped=skipped, split_report=split_report)
