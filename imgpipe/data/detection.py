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
import logging
import pathlib
import typing

import numpy as np

from imgpipe.data.boxes import clean_annotation
from imgpipe.data.coco import coco_files, read_coco
from imgpipe.data.images import DEFAULT_MAX_PIXELS, UnreadableImage, read_header
from imgpipe.data.sources import ImageSet, TaskData, auto_image_size
from imgpipe.data.grouped_split import split_keeping_duplicates
from imgpipe.data.split import stratified_split
from imgpipe.data.voc import read_voc, voc_folders
from imgpipe.data.yolo import is_yolo, read_yolo
from imgpipe.errors import DataError

log = logging.getLogger("imgpipe")

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
    kept, headers, skipped = [], [], []
    for annotation in annotations:
        try:
            header = read_header(annotation.image, max_pixels)
        except UnreadableImage as error:
            log.warning("skipped %s", error)
            skipped.append(str(error))
            continue
        width, height = header.upright_size
        kept.append(clean_annotation(annotation, width, height))
        headers.append(header)
    return kept, headers, skipped


def read_detection(root, format="auto", val_split=0.2, seed=1337, max_pixels=None, image_size="auto",
                   split_groups="duplicates"):
    """Reads a detection data set into a `TaskData` (targets are indices into `state.annotations`)."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found" if not root.exists() else f"{root}: not a folder")
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    splits, names, format = read_annotations(root, format, max_pixels)
    if not names:
        raise DataError(f"{root}: no object classes found in the {format} annotations")
    all_annotations, all_headers, skipped, split_of = [], [], [], []
    for split, annotations in splits.items():
        kept, headers, missed = clean_split(annotations, max_pixels)
        all_annotations += kept
        all_headers += headers
        skipped += missed
        split_of += [split] * len(kept)
    if not all_annotations:
        raise DataError(f"{root}: no readable images")
    if sum(len(a.boxes) for a in all_annotations) == 0:
        raise DataError(f"{root}: the annotations hold no usable boxes")
    split_report = None
    if None in splits:
        # Stratify on each image's first class (negatives apart), so rare classes reach validation.
        strata = [int(a.classes[0]) if len(a.classes) else -1 for a in all_annotations]
        if len(stratified_split(strata, val_split, seed)[1]) == 0:
            strata = [0] * len(all_annotations)  # every stratum a singleton (tiny sets): split them as one group
        train_index, val_index, split_report = split_keeping_duplicates(
            [a.image for a in all_annotations], strata, val_split, seed, split_groups, max_pixels)
    else:
        train_index = np.array([i for i, s in enumerate(split_of) if s == "train"])
        val_index = np.array([i for i, s in enumerate(split_of) if s == "val"])
    if len(train_index) == 0 or len(val_index) == 0:
        raise DataError(f"{root}: need images in both training and validation "
                        f"(found {len(train_index)} and {len(val_index)})")

    def subset(indices):
        return ImageSet.from_files([all_annotations[i].image for i in indices], np.asarray(indices, np.int32))

    size = auto_image_size(all_headers, low=64, high=256, step=32) if image_size == "auto" else list(image_size)
    return TaskData(train=subset(train_index), val=subset(val_index), class_names=list(names), image_size=size,
                    source=str(root), skipped=skipped, state=DetectionLabels(all_annotations, format),
                    split_report=split_report)
