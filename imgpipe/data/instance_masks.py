"""Instance ID masks: `images/NAME.ext` + `instances/NAME.png`, one value per object.

`train/` + `val/`, each laid out so, keep the user's split. In
`instances/NAME.png` 0 is background and k marks the pixels of the k-th
object: an 8-bit greyscale PNG, or 16-bit where an image has more than 255
objects. An optional sidecar `instances/NAME.json` names each object's class,
`{"1": "cat", "2": "dog"}`; an image without a sidecar has objects of class
"object". The class names are the sorted names of all sidecars (plus "object"
when some image has none). Every image needs its ID PNG (an all-zero PNG for
an image without objects), at the image's upright size.

Example:
    >>> splits, class_names = read_instance_masks("./cells")
"""

import json
import pathlib

from imgpipe.data.instance_annotation import IdMaskInstances
from imgpipe.data.masks import find_pairs
from imgpipe.errors import DataError

INSTANCE_DIR = "instances"
SPLITS = ("train", "val")  # train/ + val/, each images/ + instances/: a split the user chose, kept as it is
DEFAULT_CLASS = "object"


def _is_one_folder(root):
    return (root / "images").is_dir() and (root / INSTANCE_DIR).is_dir() and any((root / INSTANCE_DIR).rglob("*.png"))


def _has_splits(root):
    return all(_is_one_folder(root / split) for split in SPLITS)


def is_instance_mask_layout(root):
    """True for images/ beside an instances/ folder holding PNGs, or train/ and val/ each laid out so."""
    root = pathlib.Path(root)
    return _is_one_folder(root) or _has_splits(root)


def read_sidecar(path):
    """{instance id: class name} of one sidecar JSON."""
    try:
        document = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({str(error).splitlines()[0]})") from None
    if not isinstance(document, dict):
        raise DataError(f"{path}: expected an object of instance id to class name, like {{\"1\": \"cat\"}}")
    names = {}
    for key, name in document.items():
        try:
            number = int(key)
        except ValueError:
            number = 0
        if number <= 0 or not isinstance(name, str):
            raise DataError(f"{path}: entry {key!r}: {name!r} is not a positive instance id with a class name, "
                            "like \"1\": \"cat\"")
        names[number] = name
    return names


def read_instance_masks(root):
    """({None or "train"/"val": [IdMaskInstances]}, class names) for an images/ + instances/ layout.

    The ID PNGs themselves are read when the annotations are cleaned (`IdMaskInstances.cleaned`).
    """
    root = pathlib.Path(root)
    if not is_instance_mask_layout(root):
        raise DataError(f"{root}: expected images/ + {INSTANCE_DIR}/ holding one ID PNG per image (or train/ and "
                        "val/ each laid out so)")
    folders = {split: root / split for split in SPLITS} if _has_splits(root) else {None: root}
    pairs = {split: find_pairs(folder / "images", folder / INSTANCE_DIR) for split, folder in folders.items()}
    found = {split: [(image, mask, pathlib.Path(mask).with_suffix(".json")) for image, mask in zip(*pair)]
             for split, pair in pairs.items()}
    names_by_id = {split: [read_sidecar(sidecar) if sidecar.is_file() else None for _, _, sidecar in rows]
                   for split, rows in found.items()}
    every = [ids for rows in names_by_id.values() for ids in rows]
    names = {name for ids in every if ids for name in ids.values()}
    if any(ids is None for ids in every):
        names.add(DEFAULT_CLASS)
    names = sorted(names)
    index_of = {name: index for index, name in enumerate(names)}
    splits = {}
    for split, rows in found.items():
        splits[split] = [
            IdMaskInstances(image, [], mask=mask, sidecar=str(sidecar) if ids is not None else None,
                            class_of_id=None if ids is None else {i: index_of[n] for i, n in ids.items()},
                            default_class=index_of.get(DEFAULT_CLASS, 0))
            for (image, mask, sidecar), ids in zip(rows, names_by_id[split])]
    return splits, names
