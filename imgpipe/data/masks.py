"""Segmentation data: images paired with masks, in the conventions users really have.

Layouts (detected in this order):
- `train/` and `val/` folders, each holding `images/` + `masks/`;
- `images/` + `masks/` paired by file stem (any image extension on either side);
- Pascal VOC: `JPEGImages/` + `SegmentationClass/` (+ `ImageSets/Segmentation/train.txt`, `val.txt`).

Mask conventions (`MaskEncoding`):
- index: greyscale or palette PNGs whose values are class indices 0..C-1;
- binary: values 0 and 255 only, read as classes 0 and 1;
- colour: RGB masks; colours map to classes through `classes.txt` / `labelmap.txt`
  beside the data (`name: r,g,b` per line, CVAT and VOC style), or are discovered
  from the masks (sorted, black first) and reported.
An ignore value (default 255 wherever 255 is not a class) is left out of loss and
metrics. Class names come from the colour table, VOC's standard names, or `class_0..`.

Example:
    >>> data = read_mask_folders("../shared/data/membrane")
    >>> data.class_names, data.state.kind
    (['class_0', 'class_1'], 'binary')
"""

import dataclasses
import logging
import os
import pathlib
import re

import numpy as np
from PIL import Image

from imgpipe.data.folders import list_images
from imgpipe.data.images import DEFAULT_MAX_PIXELS, UnreadableImage, read_header
from imgpipe.data.sources import ImageSet, TaskData, auto_image_size
from imgpipe.data.grouped_split import split_keeping_duplicates
from imgpipe.errors import DataError

log = logging.getLogger("imgpipe")

IGNORE_DEFAULT = 255
TABLE_FILES = ("labelmap.txt", "classes.txt")
VOC_CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


@dataclasses.dataclass
class MaskEncoding:
    """How stored mask values become class indices.

    Attributes:
        kind: 'index', 'binary' or 'colour'.
        num_classes: number of classes C.
        ignore_index: value excluded from loss and metrics, or None.
        colours: for 'colour', the RGB triple of each class, in class order.
    """

    kind: str
    num_classes: int
    ignore_index: object = None
    colours: list = None

    @property
    def fill_value(self):
        """Label given to pixels of no class (unknown colours, out-of-range values)."""
        return self.ignore_index if self.ignore_index is not None else 0

    def encode(self, raw):
        """Stored mask array -> int32 class indices [H, W] (ignore value kept)."""
        if self.kind == "colour":
            rgb = raw[..., :3].astype(np.int64)
            keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            table = {(r << 16) | (g << 8) | b: index for index, (r, g, b) in enumerate(self.colours)}
            out = np.full(keys.shape, self.fill_value, np.int32)
            for key, index in table.items():
                out[keys == key] = index
            return out
        values = raw.astype(np.int64)
        if self.kind == "binary":
            values = (values >= 128).astype(np.int64)
        out = values.astype(np.int32)
        outside = (values >= self.num_classes) & (values != (self.ignore_index if self.ignore_index is not None else -1))
        out[outside] = self.fill_value
        return out

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        """The segmentation task's state in the run folder and the export metadata."""
        return {"encoding": self.to_dict()}

    @classmethod
    def from_json(cls, saved):
        return cls(**saved["encoding"])


def read_mask_array(path):
    """The stored values of a mask file: [H, W] for grey/palette, [H, W, 3] for colour."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("P", "L", "1"):
                return np.asarray(image.convert("L") if image.mode == "1" else image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(image, dtype=np.int64)
            if image.mode == "LA":
                return np.asarray(image.getchannel(0))
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableImage(f"{path}: cannot read mask ({str(error).splitlines()[0]})") from None


def resize_nearest(raw, size):
    """A mask array ([H, W] values or [H, W, 3] colours) at `size` = (height, width), by nearest neighbour."""
    if raw.shape[:2] == tuple(size):
        return raw
    mode = "RGB" if raw.ndim == 3 else ("I" if raw.dtype.itemsize > 1 else "L")
    return np.asarray(Image.fromarray(raw.astype(np.int32) if mode == "I" else raw, mode)
                      .resize((size[1], size[0]), Image.NEAREST))


def load_mask(path, size, encoding):
    """A mask file as int32 class indices, resized to `size` = (height, width) with nearest neighbour."""
    return encoding.encode(resize_nearest(read_mask_array(path), size))


def read_colour_table(root):
    """(names, colours or None) from `labelmap.txt` or `classes.txt` in `root`, or (None, None)."""
    for name in TABLE_FILES:
        path = pathlib.Path(root) / name
        if path.is_file():
            return _parse_table(path)
    return None, None


def _parse_table(path):
    names, colours = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([^:,]+?)\s*(?:[:,\s]\s*(\d+)\s*[,\s]\s*(\d+)\s*[,\s]\s*(\d+))?\s*(?::.*)?$", line)
        if not match:
            raise DataError(f"{path}:{number}: expected 'name' or 'name: r,g,b', got {line!r}")
        names.append(match.group(1).strip())
        if match.group(2) is not None:
            colour = tuple(int(match.group(i)) for i in (2, 3, 4))
            if max(colour) > 255:
                raise DataError(f"{path}:{number}: colour values must be 0..255, got {colour}")
            colours.append(colour)
    if colours and len(colours) != len(names):
        raise DataError(f"{path}: every class needs a colour once one has (found {len(colours)} of {len(names)})")
    return names, (colours or None)


def find_pairs(image_dir, mask_dir):
    """(image paths, mask paths) paired by file stem; an image without a mask is an error."""
    masks = {}
    for path in list_images(mask_dir):
        masks.setdefault(_stem(path, mask_dir), path)
    images = list_images(image_dir)
    missing = [path for path in images if _stem(path, image_dir) not in masks]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{missing[0]}: image has no mask in {mask_dir}{more}")
    orphans = set(masks) - {_stem(path, image_dir) for path in images}
    for stem in sorted(orphans)[:5]:
        log.warning("mask %s has no image; ignored", masks[stem])
    return images, [masks[_stem(path, image_dir)] for path in images]


def _stem(path, root):
    return os.path.splitext(os.path.relpath(path, root))[0]


@dataclasses.dataclass
class MaskValues:
    """The values stored in a set of mask files, before any class mapping.

    Attributes:
        pixels: {value: pixel count}; an int for grey/palette masks, an (r, g, b) tuple for colour masks.
        unreadable: {mask path: one-line reason} for masks that could not be decoded.
    """

    pixels: dict
    unreadable: dict


def count_mask_values(mask_paths):
    """Reads every mask once and counts its stored values; undecodable masks are listed, not raised."""
    pixels, unreadable = {}, {}
    for path in mask_paths:
        try:
            raw = read_mask_array(path)
        except UnreadableImage as error:
            unreadable[str(path)] = str(error)
            continue
        for key, count in _value_counts(raw).items():
            pixels[key] = pixels.get(key, 0) + count
    return MaskValues(pixels, unreadable)


def _value_counts(raw):
    """{stored value: pixels} of one mask: ints for grey masks, (r, g, b) for colour ones.

    Colours are packed into one integer so a 1-D count does the work; a sort of
    rows (`np.unique(axis=0)`) is ten times slower on a 512x512 mask.
    """
    if raw.ndim == 3:
        rgb = raw[..., :3].astype(np.uint32)
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        values, counts = np.unique(packed, return_counts=True)
        return {(v >> 16, (v >> 8) & 255, v & 255): c for v, c in zip(values.tolist(), counts.tolist())}
    if raw.dtype.kind == "u" and raw.dtype.itemsize <= 2:
        counts = np.bincount(raw.reshape(-1))
        return {value: int(counts[value]) for value in np.flatnonzero(counts).tolist()}
    values, counts = np.unique(raw, return_counts=True)
    return dict(zip(map(int, values.tolist()), counts.tolist()))


def discover_encoding(values, table_names, table_colours, ignore_index, voc_layout=False, folder=""):
    """Works out the mask convention and class names from the values found and the colour table."""
    colours = {value for value in values.pixels if isinstance(value, tuple)}
    grey_values = {value for value in values.pixels if not isinstance(value, tuple)}
    if colours and grey_values:
        raise DataError(f"{folder}: masks mix colour (RGB) and single-channel files")
    if colours:
        if table_colours is None:
            table_colours = sorted(colours, key=lambda c: (sum(c) > 0, c))
            table_names = table_names if table_names and len(table_names) == len(table_colours) else \
                [f"class_{i}" for i in range(len(table_colours))]
            log.warning("mask colours found (no classes.txt/labelmap.txt): %s",
                        ", ".join(f"{n}={c}" for n, c in zip(table_names, table_colours)))
        unknown = colours - set(map(tuple, table_colours))
        if unknown:
            log.warning("%d mask colour(s) not in the colour table are ignored, e.g. %s", len(unknown),
                        sorted(unknown)[0])
        return MaskEncoding("colour", len(table_colours), ignore_index if ignore_index is not None else
                            IGNORE_DEFAULT, [list(c) for c in table_colours]), list(table_names)
    if grey_values <= {0, 255} and 255 in grey_values and ignore_index != 255 and not voc_layout:
        names = table_names if table_names and len(table_names) == 2 else ["class_0", "class_1"]
        return MaskEncoding("binary", 2, ignore_index), names
    if ignore_index is None and IGNORE_DEFAULT in grey_values:
        ignore_index = IGNORE_DEFAULT
    classes = sorted(value for value in grey_values if value != ignore_index)
    count = max(len(table_names or ()), (max(classes) + 1) if classes else 1)
    if table_names:
        names = list(table_names) + [f"class_{i}" for i in range(len(table_names), count)]
    elif voc_layout and count <= len(VOC_CLASS_NAMES):
        names = list(VOC_CLASS_NAMES)
        count = len(names)
    else:
        names = [f"class_{i}" for i in range(count)]
    return MaskEncoding("index", count, ignore_index), names


def _readable_pairs(images, masks, max_pixels):
    """(images, masks, image headers, skip reasons): pairs whose two headers read; the rest skipped with a warning.

    A mask whose size differs from its image is an error, not a skip: it means
    the pairing or the export of the masks is wrong, not one bad file.
    """
    kept_images, kept_masks, headers, skipped = [], [], [], []
    for image_path, mask_path in zip(images, masks):
        try:
            image = read_header(image_path, max_pixels)
            mask = read_header(mask_path, max_pixels)
        except UnreadableImage as error:
            log.warning("skipped %s", error)
            skipped.append(str(error))
            continue
        if (image.width, image.height) != (mask.width, mask.height):
            raise DataError(f"{mask_path}: mask is {mask.width}x{mask.height} but its image {image_path} is "
                            f"{image.width}x{image.height}")
        kept_images.append(image_path)
        kept_masks.append(mask_path)
        headers.append(image)
    return kept_images, kept_masks, headers, skipped


def _layout(root):
    """[(split name or None, image dir, mask dir)] for the layouts this reader knows."""
    for val_name in ("val", "validation"):
        if (root / "train" / "images").is_dir() and (root / val_name / "images").is_dir():
            return [("train", root / "train" / "images", root / "train" / "masks"),
                    ("val", root / val_name / "images", root / val_name / "masks")]
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return [(None, root / "images", root / "masks")]
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        return [("voc", root / "JPEGImages", root / "SegmentationClass")]
    raise DataError(f"{root}: expected images/ + masks/, train/ + val/ folders holding them, or a Pascal VOC "
                    "JPEGImages/ + SegmentationClass/ layout")


def has_mask_layout(root):
    """True when `root` is laid out as one of the segmentation layouts above."""
    try:
        _layout(pathlib.Path(root))
    except DataError:
        return False
    return True


def _voc_pairs(root, image_dir, mask_dir):
    """VOC: masks define which images are annotated; the split files, if present, define the split."""
    images_by_stem = {_stem(path, image_dir): path for path in list_images(image_dir)}
    masks = list_images(mask_dir)
    missing = [m for m in masks if _stem(m, mask_dir) not in images_by_stem]
    if missing:
        raise DataError(f"{missing[0]}: mask has no image in {image_dir}")
    stems = [_stem(m, mask_dir) for m in masks]
    split_dir = root / "ImageSets" / "Segmentation"
    splits = {}
    for name in ("train", "val"):
        if (split_dir / f"{name}.txt").is_file():
            splits[name] = set((split_dir / f"{name}.txt").read_text().split())
    return [images_by_stem[s] for s in stems], masks, stems, splits


def list_pairs(root):
    """Every (image, mask) pair under `root`, whatever its layout (for evaluation)."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    pairs = []
    for name, image_dir, mask_dir in _layout(root):
        if name == "voc":
            images, masks, _, _ = _voc_pairs(root, image_dir, mask_dir)
        else:
            images, masks = find_pairs(image_dir, mask_dir)
        pairs += list(zip(images, masks))
    if not pairs:
        raise DataError(f"{root}: no image/mask pairs found")
    return pairs


def read_mask_folders(root, val_split=0.2, seed=1337, max_pixels=None, image_size="auto", ignore_index=None,
                      split_groups="duplicates"):
    """Reads a segmentation data set into a `TaskData` whose targets are mask paths.

    `state` is the `MaskEncoding` every mask is decoded with. When the data gives no
    split, copies of one image stay on one side of the drawn split (`split_groups`).

    Raises:
        DataError: unknown layout, an image without its mask, a mask whose size
            differs from its image, or no pairs at all.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found" if not root.exists() else f"{root}: not a folder")
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    layout = _layout(root)
    split_lists = {}
    if layout[0][0] == "voc":
        _, image_dir, mask_dir = layout[0]
        images, masks, stems, voc_splits = _voc_pairs(root, image_dir, mask_dir)
        if {"train", "val"} <= set(voc_splits):
            for name in ("train", "val"):
                chosen = [i for i, s in enumerate(stems) if s in voc_splits[name]]
                split_lists[name] = ([images[i] for i in chosen], [masks[i] for i in chosen])
        else:
            split_lists[None] = (images, masks)
    else:
        for name, image_dir, mask_dir in layout:
            if not mask_dir.is_dir():
                raise DataError(f"{mask_dir}: masks folder not found for {image_dir}")
            split_lists[name] = find_pairs(image_dir, mask_dir)
    if not any(images for images, _ in split_lists.values()):
        raise DataError(f"{root}: no image/mask pairs found")
    headers, skipped = [], []
    for name, (images, masks) in split_lists.items():
        images, masks, split_headers, split_skipped = _readable_pairs(images, masks, max_pixels)
        split_lists[name] = (images, masks)
        headers += split_headers
        skipped += split_skipped
    values = count_mask_values([p for _, masks in split_lists.values() for p in masks])
    for name, (images, masks) in split_lists.items():
        kept = [i for i, mask in enumerate(masks) if mask not in values.unreadable]
        split_lists[name] = ([images[i] for i in kept], [masks[i] for i in kept])
    for reason in values.unreadable.values():
        log.warning("skipped %s", reason)
        skipped.append(reason)
    if not any(images for images, _ in split_lists.values()):
        raise DataError(f"{root}: no readable image/mask pairs")
    table_names, table_colours = read_colour_table(root)
    encoding, class_names = discover_encoding(values, table_names, table_colours, ignore_index,
                                              voc_layout=layout[0][0] == "voc", folder=str(root))
    if None in split_lists:
        images, masks = split_lists[None]
        train_index, val_index, split_report = split_keeping_duplicates(images, np.zeros(len(images), np.int64),
                                                                        val_split, seed, split_groups, max_pixels)
        train = ImageSet.from_files([images[i] for i in train_index], np.array([masks[i] for i in train_index]))
        val = ImageSet.from_files([images[i] for i in val_index], np.array([masks[i] for i in val_index]))
    else:
        split_report = None
        train = ImageSet.from_files(split_lists["train"][0], np.array(split_lists["train"][1]))
        val = ImageSet.from_files(split_lists["val"][0], np.array(split_lists["val"][1]))
    if train.count == 0 or val.count == 0:
        raise DataError(f"{root}: need image/mask pairs in both training and validation (found "
                        f"{train.count} and {val.count})")
    size = auto_image_size(headers, low=32, high=256, step=32) if image_size == "auto" else list(image_size)
    return TaskData(train=train, val=val, class_names=class_names, image_size=size, source=str(root),
                    skipped=skipped, state=encoding, split_report=split_report)
