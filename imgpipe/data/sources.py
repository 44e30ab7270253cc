"""What a reader hands the pipeline: images with their targets, split in two.

A file-based reader lists paths and targets (nothing is decoded yet); a
tensorflow-datasets reader hands over a `tf.data.Dataset` of decoded images.
The pipeline accepts either, so every task reuses the same decode, cache,
augment and batch steps.
"""

import dataclasses
import typing

import numpy as np


@dataclasses.dataclass
class ImageSet:
    """One split: `paths` + `targets` (files), or `dataset` of (image, target) (tfds)."""

    paths: typing.Optional[list] = None
    targets: typing.Any = None
    dataset: typing.Any = None
    count: int = 0
    upright_jpeg: typing.Optional[np.ndarray] = None

    @classmethod
    def from_files(cls, paths, targets, headers=None):
        """`headers` (`ImageHeader`s of the files, when the reader has them) mark the upright RGB or grey
        JPEGs, which the pipeline decodes in the graph without a Python call."""
        upright_jpeg = None if headers is None else np.array(
            [h.format == "JPEG" and h.mode in ("RGB", "L") and not h.exif_rotated for h in headers], bool)
        return cls(paths=[str(p) for p in paths], targets=targets, count=len(paths), upright_jpeg=upright_jpeg)

    @property
    def is_files(self):
        return self.paths is not None


@dataclasses.dataclass
class LabelledFiles:
    """Files to score an export on, each with its truth in the export's terms (`Task.evaluation_files`)."""

    paths: list
    truths: list
    skipped: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TaskData:
    """Both splits of a data set, its class names and what had to be skipped."""

    train: ImageSet
    val: ImageSet
    class_names: list
    image_size: list
    source: str
    skipped: list = dataclasses.field(default_factory=list)
    # What the task derives from the data beyond class names, as a small typed object with
    # to_json() / from_json() (a `MaskEncoding`, `DetectionLabels`, a style image, colour weights).
    state: typing.Any = None
    # What keeping duplicate groups on one side of imgpipe's own split did (`GroupedSplitReport`), or None.
    split_report: typing.Any = None

    @property
    def num_classes(self):
        return len(self.class_names)


def auto_image_size(headers, low=32, high=224, step=8):
    """A square input size near the data's median side, clamped to [low, high].

    Training at the data's own scale keeps small images cheap on a CPU and big
    ones at the usual 224.

    Example:
        >>> auto_image_size([ImageHeader(..., width=28, height=28, ...)])
        [32, 32]
    """
    if not headers:
        return [high, high]
    sides = np.sqrt([header.width * header.height for header in headers])
    side = int(np.clip(round(float(np.median(sides)) / step) * step, low, high))
    return [side, side]
