"""COCO JSON detection annotations: `annotations.json` or `instances_*.json` + an images folder.

Boxes `[x, y, width, height]` become `[x_min, y_min, x_max, y_max]`; category
ids become contiguous class indices in id order, named by the categories.
`file_name` is resolved inside the images folder and may not escape it.

Example:
    >>> splits, class_names = read_coco("./coco_subset")
"""

import json
import pathlib

from imgpipe.data.boxes import Annotation, inside
from imgpipe.errors import DataError

IMAGE_DIRS = ("images", "train", "val", "")


def coco_files(root):
    """{split name or None: json path} for a COCO layout under `root` (empty when not COCO)."""
    root = pathlib.Path(root)
    for folder in (root, root / "annotations"):
        if (folder / "annotations.json").is_file():
            return {None: folder / "annotations.json"}
        found = sorted(folder.glob("instances_*.json")) if folder.is_dir() else []
        if found:
            splits = {}
            for path in found:
                split = "val" if "val" in path.stem else "train" if "train" in path.stem else path.stem
                splits[split] = path
            return splits if {"train", "val"} <= set(splits) else {None: found[0]}
    return {}


def _load_json(path):
    try:
        return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({str(error).splitlines()[0]})") from None


def _image_root(root, split):
    root = pathlib.Path(root)
    candidates = [root / "images" / split] if split else []
    candidates += [root / name for name in IMAGE_DIRS]
    return next(folder for folder in candidates if folder.is_dir())


def read_coco_file(path, image_root, data_root):
    """(annotations, class names) of one COCO JSON file."""
    document = _load_json(path)
    if not isinstance(document, dict) or not {"images", "annotations", "categories"} <= set(document):
        raise DataError(f"{path}: not a COCO detection file (needs images, annotations and categories)")
    try:
        index_of, names = class_indices(document)
        boxes_by_image = {}
        for number, item in enumerate(document["annotations"]):
            if item.get("iscrowd"):
                continue
            x, y, width, height = (float(v) for v in item["bbox"])
            if item["category_id"] not in index_of:
                raise DataError(f"{path}: annotation {number} has unknown category_id {item['category_id']}")
            boxes_by_image.setdefault(item["image_id"], []).append(
                ([x, y, x + width, y + height], index_of[item["category_id"]]))
        annotations = []
        for image in document["images"]:
            file = inside(data_root, pathlib.Path(image_root).relative_to(data_root) / image["file_name"], path)
            objects = boxes_by_image.get(image["id"], [])
            annotations.append(Annotation(str(file), [b for b, _ in objects], [c for _, c in objects]))
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: malformed COCO entry ({type(error).__name__}: {error})") from None
    return annotations, names


def class_indices(document):
    """({category id: class index}, class names) of a COCO document: contiguous indices in category id order."""
    categories = sorted(document["categories"], key=lambda c: c["id"])
    return {category["id"]: index for index, category in enumerate(categories)}, [str(c["name"]) for c in categories]


def read_coco_layout(root, read_file):
    """({split or None: annotations}, class names) of every COCO file under `root`, each read by
    `read_file(path, image_root, data_root)` -> (annotations, class names); the splits must agree on classes."""
    root = pathlib.Path(root).resolve()
    files = coco_files(root)
    if not files:
        raise DataError(f"{root}: expected annotations.json or instances_*.json (COCO)")
    splits, names = {}, None
    for split, path in files.items():
        annotations, split_names = read_file(path, _image_root(root, split), root)
        if names is not None and split_names != names:
            raise DataError(f"{path}: categories differ from the other split's")
        names = split_names
        splits[split] = annotations
    return splits, names


def read_coco(root):
    """({split or None: annotations}, class names) for a COCO layout."""
    return read_coco_layout(root, read_coco_file)
