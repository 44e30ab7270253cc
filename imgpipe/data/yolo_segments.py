"""YOLO-seg instance annotations: `images/` + `labels/` with one polygon per line.

One `labels/<stem>.txt` per image, a line per object: `class x1 y1 x2 y2 ... xn yn`,
corners normalised to 0..1 (Ultralytics' segmentation format). Class names and
the `images/train` + `images/val` split are read as for YOLO detection
(data/yolo.py). An image without a label file has no objects. A corner more
than 0.001 outside 0..1 stops the read; lines of fewer than 3 corners or no
area are dropped with one warning per file.

Example:
    >>> splits, class_names = read_yolo_segments("./yolo_seg_data")
"""

import logging
import pathlib

import numpy as np

from imgpipe.data.images import DEFAULT_MAX_PIXELS
from imgpipe.data.instance_annotation import ShapeInstances, is_usable_part
from imgpipe.data.yolo import is_yolo, parsed_label_files, read_class_names
from imgpipe.errors import DataError

log = logging.getLogger("imgpipe")

OUTSIDE_TOLERANCE = 1e-3
# A detection line is `class cx cy w h`; a polygon of at least 3 corners has 7 or more numbers.
MIN_POLYGON_FIELDS = 7


def is_yolo_segments(root):
    """True for images/ + labels/ whose first label line is a polygon (not a detection box)."""
    root = pathlib.Path(root)
    if not is_yolo(root):
        return False
    for label in sorted((root / "labels").rglob("*.txt")):
        for line in label.read_text(errors="replace").splitlines():
            if line.split():
                return len(line.split()) >= MIN_POLYGON_FIELDS
    return False


def parse_polygon_file(path, width, height, num_classes):
    """(polygons [[N, 2] array in pixels] per object, classes, number of degenerate lines dropped) of one file."""
    shapes, classes, dropped = [], [], 0
    for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls = int(fields[0])
            corners = np.array([float(v) for v in fields[1:]], np.float64)
        except ValueError:
            raise DataError(f"{path}:{number}: expected 'class x1 y1 x2 y2 ... xn yn' (numbers, normalised "
                            f"to 0..1), got {line!r}") from None
        if len(corners) % 2:
            raise DataError(f"{path}:{number}: expected pairs of x y coordinates after the class, got "
                            f"{len(corners)} numbers")
        if not 0 <= cls < num_classes:
            raise DataError(f"{path}:{number}: class {cls} is not in 0..{num_classes - 1}")
        corners = corners.reshape(-1, 2)
        outside = ((corners < -OUTSIDE_TOLERANCE) | (corners > 1 + OUTSIDE_TOLERANCE)).any(axis=1)
        if outside.any():
            x, y = corners[outside][0]
            raise DataError(f"{path}:{number}: polygon corner ({x:g}, {y:g}) is outside the image (0..1); "
                            "YOLO coordinates are fractions of the image's width and height")
        polygon = corners * (width, height)
        if not is_usable_part(polygon):
            dropped += 1
            continue
        shapes.append([polygon])
        classes.append(cls)
    return shapes, classes, dropped


def read_yolo_segments(root, max_pixels=DEFAULT_MAX_PIXELS):
    """({split or None: [ShapeInstances]}, class names) for a YOLO-seg layout."""
    names = read_class_names(root) if is_yolo(root) else []

    def parse(label, width, height):
        shapes, classes, dropped = parse_polygon_file(label, width, height, len(names))
        if dropped:
            log.warning("%s: %d polygon(s) with fewer than 3 corners or no area dropped", label, dropped)
        return shapes, classes

    def instances(image, label, parsed):
        shapes, classes = parsed or ([], [])
        return ShapeInstances(image, classes, shapes=shapes, source=str(label))

    splits = parsed_label_files(root, max_pixels, parse)
    return {split: [instances(*row) for row in rows] for split, rows in splits.items()}, names
