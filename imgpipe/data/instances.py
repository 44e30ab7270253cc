"""Instance segmentation data from any of the three annotation formats, split and cleaned.

The format is detected from the layout (ID masks, then YOLO-seg, then COCO)
unless `data.format` forces one. Every image's header is read (size, bombs,
unreadable files skipped with a warning), instances without pixels are
dropped with a warning, and the split is seeded unless the source has its own.
The pipeline's target for an image is its index into `state.annotations`;
`state.annotations[i].render(size)` draws that image's instance and class map.

Example:
    >>> data = read_instances(demo_instances_folder())
    >>> data.class_names, data.state.format
    (['circle', 'square', 'triangle'], 'masks')
"""

import dataclasses
import pathlib
import typing

from imgpipe.data.annotated_split import clean_annotations, read_annotated
from imgpipe.data.coco_segments import coco_segment_files, read_coco_segments
from imgpipe.data.images import DEFAULT_MAX_PIXELS
from imgpipe.data.instance_annotation import IdMaskInstances, InstanceAnnotation, ShapeInstances
from imgpipe.data.instance_masks import is_instance_mask_layout, read_instance_masks
from imgpipe.data.yolo_segments import is_yolo_segments, read_yolo_segments
from imgpipe.errors import DataError

__all__ = ["FORMATS", "IdMaskInstances", "InstanceAnnotation", "InstanceLabels", "ShapeInstances",
           "detect_instance_format", "has_instance_layout", "read_instance_annotations", "read_instances"]


FORMATS = ("coco", "yolo", "masks")


@dataclasses.dataclass
class InstanceLabels:
    """The instances task's state: every image's `InstanceAnnotation` (targets index them), and how they were stored.

    A trained model needs none of it (the class names say all), so the run folder keeps only the format;
    the annotations stay with the data.
    """

    annotations: list = dataclasses.field(default_factory=list)
    format: typing.Optional[str] = None

    def to_json(self):
        return {"format": self.format}

    @classmethod
    def from_json(cls, saved):
        return cls(format=saved.get("format"))


def detect_instance_format(root):
    """'masks', 'yolo' or 'coco' from the folder layout.

    Example:
        >>> detect_instance_format(demo_instances_folder())
        'masks'
    """
    root = pathlib.Path(root)
    if is_instance_mask_layout(root):
        return "masks"
    if is_yolo_segments(root):
        return "yolo"
    if coco_segment_files(root):
        return "coco"
    raise DataError(f"{root}: no instance segmentation layout found (images/ + instances/ ID PNGs, YOLO-seg "
                    "images/ + labels/ with polygon lines, or COCO annotations.json / instances_*.json with "
                    "segmentation)")


def has_instance_layout(root):
    """True for the ID-PNG and YOLO-seg layouts (`imgpipe check` guesses the task with it).

    COCO is left out of the guess: a COCO file with segmentations also has
    boxes, and the detection task claims COCO layouts.

    Example:
        >>> has_instance_layout(demo_instances_folder())
        True
    """
    root = pathlib.Path(root)
    return root.is_dir() and (is_instance_mask_layout(root) or is_yolo_segments(root))


def _read_format(root, format, max_pixels):
    """({split or None: [InstanceAnnotation]}, class names, format) before cleaning."""
    format = detect_instance_format(root) if format in ("auto", None) else format
    if format == "masks":
        splits, names = read_instance_masks(root)
    elif format == "yolo":
        splits, names = read_yolo_segments(root, max_pixels)
    elif format == "coco":
        splits, names = read_coco_segments(root, max_pixels)
    else:
        raise DataError(f"data.format: expected one of auto, {', '.join(FORMATS)}, got {format!r}")
    return splits, names, format


def _cleaned(annotation, width, height):
    return annotation.cleaned(width, height)


def clean_split(annotations, max_pixels):
    """Reads each image's header and cleans its instances; returns (annotations, headers, skipped)."""
    return clean_annotations(annotations, _cleaned, max_pixels)


def read_instance_annotations(root, format="auto", max_pixels=DEFAULT_MAX_PIXELS):
    """({split or None: [InstanceAnnotation]}, class names, format), cleaned at each image's upright size.

    Example:
        >>> splits, class_names, format = read_instance_annotations("./cells")
        >>> splits[None][0].masks().shape
        (3, 480, 640)
    """
    splits, names, format = _read_format(pathlib.Path(root), format, max_pixels)
    return {split: clean_split(annotations, max_pixels)[0] for split, annotations in splits.items()}, names, format


def read_instances(root, format="auto", val_split=0.2, seed=1337, max_pixels=None, image_size="auto",
                   split_groups="duplicates"):
    """Reads an instance segmentation data set into a `TaskData` (targets are indices into `state.annotations`).

    Args:
        root: folder in one of the layouts of `detect_instance_format`.
        format: 'auto' or one of FORMATS.
        val_split: float, fraction held out when the source has no split of its own.
        seed: int, seed of that split.
        max_pixels: int or None (`DEFAULT_MAX_PIXELS`), larger images are skipped.
        image_size: 'auto' or [height, width].
        split_groups: 'duplicates' keeps duplicate images on one side of the split, 'none' does not.

    Example:
        >>> data = read_instances("./cells", val_split=0.2)
        >>> data.state.annotations[data.train.targets[0]].render((128, 128)).shape
        (128, 128, 2)
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found" if not root.exists() else f"{root}: not a folder")
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    splits, names, format = _read_format(root, format, max_pixels)
    return read_annotated(root, splits, names, format, _cleaned, InstanceLabels, "instance", val_split, seed,
                          max_pixels, image_size, split_groups)
