"""COCO JSON instance annotations: the `segmentation` of each object, as polygons or RLE.

The layout is the detection reader's (`annotations.json` or `instances_*.json`
beside an images folder; see data/coco.py). A segmentation is a list of flat
polygons `[x1, y1, x2, y2, ...]` in pixels, or an RLE `{"counts", "size": [h, w]}`
with `counts` compressed (a string) or not (a list). Category ids become
contiguous class indices in id order; crowd annotations (`iscrowd`) are skipped.
A polygon corner more than a pixel outside its image stops the read; polygons
with fewer than 3 corners or no area are dropped with one warning per file.

Example:
    >>> splits, class_names = read_coco_segments("./coco_subset")
"""

import functools
import logging
import pathlib

import numpy as np
import pycocotools.mask

from imgpipe.data.boxes import inside
from imgpipe.data.coco import _load_json, class_indices, coco_files, read_coco_layout
from imgpipe.data.images import DEFAULT_MAX_PIXELS, UnreadableImage, read_header
from imgpipe.data.instance_annotation import ShapeInstances, is_usable_part
from imgpipe.errors import DataError

log = logging.getLogger("imgpipe")

# A corner this many pixels outside the image is a rounding error of the annotation tool, not a wrong image.
OUTSIDE_TOLERANCE = 1.0


def has_segmentation(path):
    """True when a COCO JSON file's annotations carry a `segmentation` (False for unreadable files)."""
    try:
        document = _load_json(path)
    except DataError:
        return False
    annotations = document.get("annotations") if isinstance(document, dict) else None
    return isinstance(annotations, list) and any(
        isinstance(item, dict) and item.get("segmentation") for item in annotations)


def coco_segment_files(root):
    """{split name or None: json path} when `root` is a COCO layout with segmentations, else {}."""
    files = coco_files(root)
    return files if any(has_segmentation(path) for path in files.values()) else {}


def _shape(segmentation, number, path):
    """One annotation's segmentation as polygon parts ([N, 2] arrays) or a compressed RLE dict."""
    if isinstance(segmentation, dict):
        height, width = (int(v) for v in segmentation["size"])
        if isinstance(segmentation["counts"], str):
            return {"size": [height, width], "counts": segmentation["counts"]}
        return pycocotools.mask.frPyObjects({"size": [height, width], "counts": list(segmentation["counts"])},
                                            height, width)
    parts = []
    for polygon in segmentation:
        if len(polygon) % 2:
            raise DataError(f"{path}: annotation {number} has a polygon with an odd number of coordinates "
                            f"({len(polygon)}); a polygon is x1, y1, x2, y2, ...")
        parts.append(np.asarray(polygon, np.float64).reshape(-1, 2))
    return parts


def _check_inside(parts, width, height, number, path, file_name):
    for part in parts:
        outside = ((part < -OUTSIDE_TOLERANCE) | (part > np.array([width, height]) + OUTSIDE_TOLERANCE)).any(axis=1)
        if outside.any():
            x, y = part[outside][0]
            raise DataError(f"{path}: annotation {number} has a polygon corner ({x:g}, {y:g}) outside the "
                            f"{width}x{height} image {file_name}; fix the annotation or its image")


def read_coco_segments_file(path, image_root, data_root, max_pixels=DEFAULT_MAX_PIXELS):
    """([ShapeInstances], class names) of one COCO JSON file."""
    document = _load_json(path)
    if not isinstance(document, dict) or not {"images", "annotations", "categories"} <= set(document):
        raise DataError(f"{path}: not a COCO file (needs images, annotations and categories)")
    dropped = []
    try:
        index_of, names = class_indices(document)
        objects_by_image = {}
        for number, item in enumerate(document["annotations"]):
            if item.get("iscrowd"):
                continue
            if item["category_id"] not in index_of:
                raise DataError(f"{path}: annotation {number} has unknown category_id {item['category_id']}")
            shape = _shape(item.get("segmentation") or [], number, path)
            objects_by_image.setdefault(item["image_id"], []).append((number, shape, index_of[item["category_id"]]))
        annotations = []
        for image in document["images"]:
            file = inside(data_root, pathlib.Path(image_root).relative_to(data_root) / image["file_name"], path)
            try:
                width, height = read_header(file, max_pixels).upright_size
            except UnreadableImage:
                width = height = None  # skipped with a warning when the split is cleaned
            shapes, classes = [], []
            for number, shape, class_index in objects_by_image.get(image["id"], []):
                if not isinstance(shape, dict):
                    if width is not None:
                        _check_inside(shape, width, height, number, path, image["file_name"])
                    shape = [part for part in shape if is_usable_part(part)]
                    if not shape:
                        dropped.append(number)
                        continue
                shapes.append(shape)
                classes.append(class_index)
            annotations.append(ShapeInstances(str(file), classes, shapes=shapes, source=str(path)))
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: malformed COCO entry ({type(error).__name__}: {error})") from None
    if dropped:
        log.warning("%s: %d instance(s) without a usable polygon (fewer than 3 corners or no area) dropped, "
                    "e.g. annotation %d", path, len(dropped), dropped[0])
    return annotations, names


def read_coco_segments(root, max_pixels=DEFAULT_MAX_PIXELS):
    """({split or None: [ShapeInstances]}, class names) for a COCO layout with segmentations."""
    return read_coco_layout(root, functools.partial(read_coco_segments_file, max_pixels=max_pixels))
