"""Detection data from any of the three annotation formats, split and cleaned.

The format is detected from the layout (VOC, then COCO, then YOLO) unless
`data.format` forces one. Every image's header is read (size, bombs, unreadable
files skipped with a warning), every box is clipped or dropped against the
upright image size, and the split is seeded unless the source has its own.
The pipeline's target for an image is its index into `state.annotations`.

Example:
    >>> data = read_detection("../shared/data/raccoon")
    >>> data.class_names, data.state.format
    (['raccoon'], 'voc')
"""

import dataclasses
import pathlib
import typing

from imgpipe.data.annotated_split import clean_annotations, read_annotated
from imgpipe.data.boxes import clean_annotation
from imgpipe.data.coco import coco_files, read_coco
from imgpipe.data.images import DEFAULT_MAX_PIXELS
from imgpipe.data.voc import read_voc, voc_folders
from imgpipe.data.yolo import is_yolo, read_yolo
from imgpipe.errors import DataError


FORMATS = ("voc", "coco", "yolo")
MAX_BOXES = 100


@dataclasses.dataclass
class DetectionLabels:
    """The detection task's state: every image's `Annotation` (targets index them), and how they were stored.

    Only `max_boxes` is needed to rebuild a trained model, so only it is kept
    in the run folder; the annotations stay with the data.
    """

    annotations: list = dataclasses.field(default_factory=list)
    format: typing.Optional[str] = None
    max_boxes: int = MAX_BOXES

    def to_json(self):
        return {"max_boxes": self.max_boxes}

    @classmethod
    def from_json(cls, saved):
        return cls(max_boxes=saved.get("max_boxes", MAX_BOXES))


def detect_format(root):
    """'voc', 'coco' or 'yolo' from the folder layout."""
    if voc_folders(root):
        return "voc"
    if coco_files(root):
        return "coco"
    if is_yolo(root):
        return "yolo"
    raise DataError(f"{root}: no detection layout found (VOC images/ + annotations/*.xml, COCO annotations.json "
                    "or instances_*.json, YOLO images/ + labels/)")


def has_detection_layout(root):
    """True when `root` is laid out as VOC, COCO or YOLO (`imgpipe check` guesses the task with it)."""
    try:
        detect_format(pathlib.Path(root))
    except DataError:
        return False
    return True


def read_annotations(root, format="auto", max_pixels=DEFAULT_MAX_PIXELS):
    """({split or None: [Annotation]}, class names, format) before cleaning."""
    format = detect_format(root) if format in ("auto", None) else format
    if format == "voc":
        annotations, names = read_voc(root)
        return {None: annotations}, names, format
    if format == "coco":
        splits, names = read_coco(root)
        return splits, names, format
    if format == "yolo":
        splits, names = read_yolo(root, max_pixels)
        return splits, names, format
    raise DataError(f"data.format: expected one of auto, {', '.join(FORMATS)}, got {format!r}")


def clean_split(annotations, max_pixels):
    """Reads each image's header and cleans its boxes; returns (annotations, headers, skipped)."""
    return clean_annotations(annotations, clean_annotation, max_pixels)


def read_detection(root, format="auto", val_split=0.2, seed=1337, max_pixels=None, image_size="auto",
                   split_groups="duplicates"):
    """Reads a detection data set into a `TaskData` (targets are indices into `state.annotations`)."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found" if not root.exists() else f"{root}: not a folder")
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    splits, names, format = read_annotations(root, format, max_pixels)
    return read_annotated(root, splits, names, format, clean_annotation, DetectionLabels, "boxes", val_split, seed,
                          max_pixels, image_size, split_groups)
