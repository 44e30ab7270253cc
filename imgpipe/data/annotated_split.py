"""Per-image annotations (boxes, instance shapes) checked against their images and split in two.

Detection and instance segmentation read their formats differently and then
do the same: read every image's header (size, bombs; an unreadable image is
skipped with a warning), fit each annotation to the upright image, keep a
split the source has, or draw a seeded stratified split that keeps duplicate
images together. The pipeline's target for an image is its index into the
annotations.

Example:
    >>> data = read_annotated(root, splits, names, "voc", clean_annotation, DetectionLabels, "boxes")
"""

import logging

import numpy as np

from imgpipe.data.grouped_split import split_keeping_duplicates
from imgpipe.data.images import DEFAULT_MAX_PIXELS, UnreadableImage, read_header
from imgpipe.data.sources import ImageSet, TaskData, auto_image_size
from imgpipe.data.split import stratified_split
from imgpipe.errors import DataError

log = logging.getLogger("imgpipe")


def clean_annotations(annotations, clean, max_pixels):
    """Reads each image's header and fits its annotation with `clean(annotation, width, height)`.

    Returns:
        (kept annotations, their `ImageHeader`s, messages of the skipped images)
    """
    kept, headers, skipped = [], [], []
    for annotation in annotations:
        try:
            header = read_header(annotation.image, max_pixels)
            kept.append(clean(annotation, *header.upright_size))
        except UnreadableImage as error:
            log.warning("skipped %s", error)
            skipped.append(str(error))
            continue
        headers.append(header)
    return kept, headers, skipped


def _seeded_split(annotations, val_split, seed, split_groups, max_pixels):
    # Stratify on each image's first class (images without objects apart), so rare classes reach validation.
    strata = [int(a.classes[0]) if len(a.classes) else -1 for a in annotations]
    if len(stratified_split(strata, val_split, seed)[1]) == 0:
        strata = [0] * len(annotations)  # every stratum a singleton (tiny sets): split them as one group
    return split_keeping_duplicates([a.image for a in annotations], strata, val_split, seed, split_groups, max_pixels)


def read_annotated(root, splits, names, format, clean, state_class, objects, val_split=0.2, seed=1337,
                   max_pixels=None, image_size="auto", split_groups="duplicates"):
    """A `TaskData` of annotated images: targets index `state.annotations`, `state = state_class(annotations,
    format)`.

    Args:
        splits: {split name or None: [annotation]} as the format's reader found them ("train"/"val" keep theirs).
        names: class names; `objects`: what an annotation holds, for the messages ("boxes", "instances").
        clean: fn(annotation, width, height) -> the annotation fitted to its upright image.
    """
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    if not names:
        raise DataError(f"{root}: no object classes found in the {format} annotations")
    annotations, headers, skipped, split_of = [], [], [], []
    for split, found in splits.items():
        kept, kept_headers, missed = clean_annotations(found, clean, max_pixels)
        annotations += kept
        headers += kept_headers
        skipped += missed
        split_of += [split] * len(kept)
    if not annotations:
        raise DataError(f"{root}: no readable images")
    if sum(len(a.classes) for a in annotations) == 0:
        raise DataError(f"{root}: the {format} annotations hold no usable {objects}")
    split_report = None
    if None in splits:
        train_index, val_index, split_report = _seeded_split(annotations, val_split, seed, split_groups, max_pixels)
    else:
        train_index = np.array([i for i, s in enumerate(split_of) if s == "train"])
        val_index = np.array([i for i, s in enumerate(split_of) if s == "val"])
    if len(train_index) == 0 or len(val_index) == 0:
        raise DataError(f"{root}: need images in both training and validation "
                        f"(found {len(train_index)} and {len(val_index)})")

    def subset(indices):
        return ImageSet.from_files([annotations[i].image for i in indices], np.asarray(indices, np.int32))

    size = auto_image_size(headers, low=64, high=256, step=32) if image_size == "auto" else list(image_size)
    return TaskData(train=subset(train_index), val=subset(val_index), class_names=list(names), image_size=size,
                    source=str(root), skipped=skipped, state=state_class(annotations, format),
                    split_report=split_report)


def objects_per_class(data, objects):
    """What `imgpipe check` tabulates for annotated images: per class, its `objects` in each split and the
    images holding one; and how many images of each split hold none.

    Returns:
        (list of row dicts, {"training": int, "validation": int} images without objects)
    """
    annotations = data.state.annotations
    rows = {name: {"class": name, f"training {objects}": 0, f"validation {objects}": 0, "images": 0}
            for name in data.class_names}
    empty = {"training": 0, "validation": 0}
    for split, image_set in (("training", data.train), ("validation", data.val)):
        for index in image_set.targets:
            classes = annotations[int(index)].classes
            empty[split] += len(classes) == 0
            for class_index in classes.tolist():
                rows[data.class_names[class_index]][f"{split} {objects}"] += 1
            for class_index in set(classes.tolist()):
                rows[data.class_names[class_index]]["images"] += 1
    return list(rows.values()), empty
