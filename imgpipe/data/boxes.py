"""Boxes as every detection reader hands them over, and the cleaning they all share.

The one box format inside imgpipe: `[x_min, y_min, x_max, y_max]`, float32,
absolute pixels of the upright image (EXIF rotation applied), with an int32
class index per box. Boxes partly outside the image are clipped with a
warning; zero-area or inverted boxes are dropped with a warning naming the
file; images without objects are kept as negatives.

Example:
    >>> annotation = clean_annotation(Annotation("a.jpg", [[-5, 10, 50, 60]], [0]), width=40, height=80)
    >>> annotation.boxes.tolist()
    [[0.0, 10.0, 40.0, 60.0]]
"""

import dataclasses
import logging
import os
import pathlib

import numpy as np

from imgpipe.errors import DataError

log = logging.getLogger("imgpipe")


@dataclasses.dataclass
class Annotation:
    """One image and its objects; `width`/`height` are the upright image's size once known."""

    image: str
    boxes: np.ndarray
    classes: np.ndarray
    width: int = 0
    height: int = 0

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.classes = np.asarray(self.classes, dtype=np.int32).reshape(-1)


def clean_annotation(annotation, width, height):
    """Clips boxes to the image, drops degenerate ones (warning naming the file), records the size."""
    boxes, classes = annotation.boxes.copy(), annotation.classes
    inverted = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
    clipped[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
    outside = np.any(clipped != boxes, axis=1) & ~inverted
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if outside.any():
        log.warning("%s: %d box(es) extend outside the %dx%d image; clipped", annotation.image,
                    int(outside.sum()), width, height)
    dropped = inverted | empty
    if dropped.any():
        log.warning("%s: %d zero-area or inverted box(es) dropped, e.g. %s", annotation.image, int(dropped.sum()),
                    boxes[dropped][0].round(1).tolist())
    return Annotation(annotation.image, clipped[~dropped], classes[~dropped], width, height)


def inside(root, relative, source):
    """`root/relative`, refusing a path that escapes `root` (annotation files are untrusted)."""
    root = pathlib.Path(root).resolve()
    path = (root / relative).resolve()
    if os.path.commonpath([root, path]) != str(root):
        raise DataError(f"{source}: image path {relative!r} points outside the data folder {root}")
    return path


def pad_boxes(boxes, classes, max_boxes):
    """[max_boxes, 5] float32 rows of x_min, y_min, x_max, y_max, class; padding rows have class -1."""
    padded = np.zeros((max_boxes, 5), np.float32)
    padded[:, 4] = -1
    count = min(len(boxes), max_boxes)
    padded[:count, :4] = boxes[:count]
    padded[:count, 4] = classes[:count]
    return padded


def unpad_boxes(padded):
    """(boxes [N, 4], classes [N]) from a padded [M, 5] array."""
    padded = np.asarray(padded)
    valid = padded[:, 4] >= 0
    return padded[valid, :4], padded[valid, 4].astype(np.int32)
