"""YOLO txt detection annotations: `images/` + `labels/` + a class names file.

One `labels/<stem>.txt` per image, a line per object: `class x_center y_center
width height`, normalised to 0..1. Class names come from `classes.txt`,
`obj.names` or `data.yaml` (`names:` as a list or an id -> name mapping). An
image without a label file is a negative. `images/train` + `images/val` (with
the same under `labels/`) keep their split.

Example:
    >>> splits, class_names = read_yolo("./yolo_data")
"""

import pathlib

import yaml

from imgpipe.data.boxes import Annotation
from imgpipe.data.folders import list_images
from imgpipe.data.images import DEFAULT_MAX_PIXELS, UnreadableImage, read_header
from imgpipe.errors import DataError

NAME_FILES = ("classes.txt", "obj.names", "data.yaml", "dataset.yaml")


def is_yolo(root):
    root = pathlib.Path(root)
    return (root / "images").is_dir() and (root / "labels").is_dir()


def read_class_names(root):
    """Class names from the first names file found in `root`."""
    root = pathlib.Path(root)
    for name in NAME_FILES:
        path = root / name
        if not path.is_file():
            continue
        if path.suffix == ".yaml":
            try:
                names = (yaml.safe_load(path.read_text()) or {}).get("names")
            except yaml.YAMLError as error:
                raise DataError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
            if isinstance(names, dict):
                names = [names[key] for key in sorted(names)]
            if not isinstance(names, list):
                raise DataError(f"{path}: expected 'names:' as a list or a mapping of id to name")
            return [str(n) for n in names]
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    raise DataError(f"{root}: YOLO layout needs class names in one of {', '.join(NAME_FILES)}")


def parse_label_file(path, width, height, num_classes):
    """(boxes in pixels, classes) of one YOLO label file."""
    boxes, classes = [], []
    for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:5])
            if len(fields) < 5:
                raise ValueError
        except ValueError:
            raise DataError(f"{path}:{number}: expected 'class x_center y_center width height', got {line!r}") \
                from None
        if not 0 <= cls < num_classes:
            raise DataError(f"{path}:{number}: class {cls} is not in 0..{num_classes - 1}")
        boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
        classes.append(cls)
    return boxes, classes


def parsed_label_files(root, max_pixels, parse):
    """{split or None: [(image path, its label path, parse(label, width, height) or None)]} of a YOLO layout.

    `images/train` + `images/val` (with the same under `labels/`) keep their split. The parse is None
    where an image has no label file (a negative) or cannot be read (skipped with a warning when the
    split is cleaned); `width` and `height` are the upright image's.
    """
    root = pathlib.Path(root)
    if not is_yolo(root):
        raise DataError(f"{root}: expected images/ + labels/ (YOLO)")
    has_splits = (root / "images" / "train").is_dir() and (root / "images" / "val").is_dir()
    splits = {}
    for split in (("train", "val") if has_splits else (None,)):
        image_dir = root / "images" / split if split else root / "images"
        label_dir = root / "labels" / split if split else root / "labels"
        rows = []
        for image in list_images(image_dir):
            label = label_dir / pathlib.Path(image).relative_to(image_dir).with_suffix(".txt")
            parsed = None
            if label.is_file():
                try:
                    parsed = parse(label, *read_header(image, max_pixels).upright_size)
                except UnreadableImage:
                    pass
            rows.append((image, label, parsed))
        splits[split] = rows
    return splits


def read_yolo(root, max_pixels=DEFAULT_MAX_PIXELS):
    """({split or None: annotations}, class names) for a YOLO layout."""
    names = read_class_names(root) if is_yolo(root) else []
    splits = parsed_label_files(root, max_pixels, lambda label, width, height: parse_label_file(
        label, width, height, len(names)))
    return {split: [Annotation(image, *(parsed or ([], []))) for image, _, parsed in rows]
            for split, rows in splits.items()}, names
