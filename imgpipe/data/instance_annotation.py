"""Object instances as every instance reader hands them over: masks, boxes and the training target.

Two kinds share one interface (`masks()`, `render(size)`, `boxes`):
- `ShapeInstances`: each instance a polygon (one or more parts) or a COCO RLE,
  in pixels of the upright image with COCO's convention (x runs from 0 at the
  image's left edge to `width` at its right edge);
- `IdMaskInstances`: an ID PNG whose value k marks the pixels of one instance.

Polygons are filled by `cv2.fillPoly` at pixel centres, so the pixels an
outline passes through count as inside: a square with corners (2, 3) and
(10, 9) covers columns 2..10 and rows 3..9. `render` fills polygons at the
target size from scaled corners (no big mask drawn and shrunk) and resizes
RLEs and ID PNGs with nearest neighbour.

Example:
    >>> square = ShapeInstances("a.png", [0], 16, 16, shapes=[[np.array([[2, 3], [10, 3], [10, 9], [2, 9]])]])
    >>> square.boxes.tolist()
    [[2.0, 3.0, 11.0, 10.0]]
"""

import dataclasses
import functools
import logging
import typing

import cv2
import numpy as np
import pycocotools.mask
import scipy.ndimage

from imgpipe.data.masks import read_mask_array, resize_nearest
from imgpipe.errors import DataError

log = logging.getLogger("imgpipe")

# Polygon corners are handed to cv2 in fixed point with 4 fractional bits (1/16 pixel).
SUBPIXEL_BITS = 4


def fill_polygon(canvas, parts, value, scale_x=1.0, scale_y=1.0):
    """Fills each part ([N, 2] x, y in pixels) of one polygon into `canvas` with `value`, scaled first.

    Parts are filled one by one so that overlapping parts add up (one cv2 call
    would cut the overlap out as a hole).
    """
    for part in parts:
        corners = (np.asarray(part, np.float64) * (scale_x, scale_y) - 0.5) * (1 << SUBPIXEL_BITS)
        cv2.fillPoly(canvas, [np.round(corners).astype(np.int32)], value, shift=SUBPIXEL_BITS)


def polygon_area(part):
    """The area enclosed by one polygon part (shoelace formula), in square pixels."""
    x, y = part[:, 0], part[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def is_usable_part(part):
    """A polygon part with at least 3 corners and some area."""
    return len(part) >= 3 and polygon_area(part) > 0


def tight_box(mask):
    """[x_min, y_min, x_max, y_max] of a bool mask's pixels (x_max = last column + 1); zeros when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return [0, 0, 0, 0]
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


@dataclasses.dataclass
class InstanceAnnotation:
    """One image and its object instances (upright pixels; EXIF rotation applied, as the training reader sees it).

    Attributes:
        image: str, the image file.
        classes: int32 [K], the class index of each instance.
        width, height: int, the upright image size once known (0 before cleaning).
    """

    image: str
    classes: np.ndarray
    width: int = 0
    height: int = 0

    def __post_init__(self):
        self.classes = np.asarray(self.classes, dtype=np.int32).reshape(-1)

    def masks(self):
        """bool [K, height, width]: instance k's pixels at the image's own size."""
        raise NotImplementedError

    def render(self, size):
        """int32 [h, w, 2] at `size` = (h, w): instance number 1..K (0 = background), and that instance's class.

        Where instances overlap the smaller one is drawn last, so small objects are never hidden.
        """
        raise NotImplementedError

    def cleaned(self, width, height):
        """A copy at the upright image size `width` x `height`, instances without pixels dropped with a warning."""
        raise NotImplementedError

    @property
    def areas(self):
        """int64 [K]: each instance's pixel count at the image's size."""
        return self._measures[0]

    @property
    def boxes(self):
        """float32 [K, 4] x_min, y_min, x_max, y_max: each instance's tight box (x_max = last column + 1)."""
        return self._measures[1]

    @functools.cached_property
    def _measures(self):
        areas, boxes = [], []
        for mask in self._each_mask():
            areas.append(int(mask.sum()))
            boxes.append(tight_box(mask))
        return np.array(areas, np.int64), np.array(boxes, np.float32).reshape(-1, 4)

    def _each_mask(self):
        yield from self.masks()


@dataclasses.dataclass
class ShapeInstances(InstanceAnnotation):
    """Instances given as polygons or COCO RLEs (COCO and YOLO-seg).

    Attributes:
        shapes: per instance, either a list of polygon parts ([N, 2] float x, y in
            pixels) or a compressed COCO RLE dict (`size` [h, w], `counts` bytes).
        source: str, the annotation file, named in errors.
    """

    shapes: list = dataclasses.field(default_factory=list)
    source: str = ""

    def masks(self):
        return np.stack(list(self._each_mask())) if self.shapes else np.zeros((0, self.height, self.width), bool)

    def render(self, size):
        numbers = np.zeros(tuple(size), np.int32)
        for index in np.argsort(-self.areas, kind="stable"):
            shape = self.shapes[index]
            if isinstance(shape, dict):
                numbers[resize_nearest(pycocotools.mask.decode(shape), size) > 0] = index + 1
            else:
                fill_polygon(numbers, shape, int(index) + 1, size[1] / self.width, size[0] / self.height)
        class_of_number = np.concatenate([[0], self.classes]).astype(np.int32)
        return np.stack([numbers, class_of_number[numbers]], axis=-1)

    def cleaned(self, width, height):
        for shape in self.shapes:
            if isinstance(shape, dict) and list(shape["size"]) != [height, width]:
                raise DataError(f"{self.source}: an RLE of {self.image} is {shape['size'][1]}x{shape['size'][0]} "
                                f"but the image is {width}x{height}; export the masks at the image's size")
        sized = dataclasses.replace(self, width=width, height=height)
        keep = np.flatnonzero(sized.areas > 0)
        if len(keep) == len(self.shapes):
            return sized
        log.warning("%s: %d instance(s) without pixels in the %dx%d image dropped", self.image,
                    len(self.shapes) - len(keep), width, height)
        return dataclasses.replace(sized, classes=sized.classes[keep], shapes=[self.shapes[i] for i in keep])

    def _each_mask(self):
        for shape in self.shapes:
            if isinstance(shape, dict):
                yield pycocotools.mask.decode(shape).astype(bool)
            else:
                canvas = np.zeros((self.height, self.width), np.uint8)
                fill_polygon(canvas, shape, 1)
                yield canvas.astype(bool)


@dataclasses.dataclass
class IdMaskInstances(InstanceAnnotation):
    """Instances given as an ID PNG: value `ids[k]` marks instance k, 0 is background.

    Attributes:
        mask: str, the ID PNG (8- or 16-bit greyscale).
        ids: int [K], the PNG value of each instance (set by `cleaned`).
        class_of_id: {id: class index} from the image's sidecar JSON, or None (every id is `default_class`).
        sidecar: str, the sidecar JSON named in errors, or None.
        default_class: int, the class of every instance when there is no sidecar.
    """

    mask: str = ""
    ids: np.ndarray = None
    class_of_id: typing.Optional[dict] = None
    sidecar: typing.Optional[str] = None
    default_class: int = 0

    def __post_init__(self):
        super().__post_init__()
        self.ids = np.asarray([] if self.ids is None else self.ids, dtype=np.int64).reshape(-1)

    def masks(self):
        return read_mask_array(self.mask)[None] == self.ids[:, None, None]

    def render(self, size):
        numbers = resize_nearest(read_mask_array(self.mask), size)
        lookup = np.zeros((max(int(numbers.max(initial=0)), int(self.ids.max(initial=0))) + 1, 2), np.int32)
        lookup[self.ids, 0] = np.arange(1, len(self.ids) + 1)
        lookup[self.ids, 1] = self.classes
        return lookup[numbers]

    def cleaned(self, width, height):
        values = read_mask_array(self.mask)
        if values.ndim != 2:
            raise DataError(f"{self.mask}: an ID mask must be greyscale (8- or 16-bit), got {values.shape[2]} "
                            "channels; save instance ids as a single-channel PNG")
        if values.shape != (height, width):
            raise DataError(f"{self.mask}: ID mask is {values.shape[1]}x{values.shape[0]} but its image "
                            f"{self.image} is {width}x{height} (upright); export the mask at the image's size")
        present = np.unique(values)
        present = present[present > 0]
        if self.class_of_id is None:
            classes = np.full(len(present), self.default_class)
        else:
            unnamed = [int(i) for i in present if int(i) not in self.class_of_id]
            if unnamed:
                raise DataError(f"{self.sidecar}: instance id {unnamed[0]} of {self.mask} has no class; "
                                f"add \"{unnamed[0]}\": \"<class name>\"")
            absent = set(self.class_of_id) - {int(i) for i in present}
            if absent:
                log.warning("%s: %d instance id(s) named in %s have no pixels; dropped", self.mask, len(absent),
                            self.sidecar)
            classes = [self.class_of_id[int(i)] for i in present]
        return dataclasses.replace(self, classes=classes, width=width, height=height, ids=present)

    @functools.cached_property
    def _measures(self):
        values = read_mask_array(self.mask)
        areas = np.bincount(values.ravel(), minlength=int(self.ids.max(initial=0)) + 1)[self.ids]
        slices = scipy.ndimage.find_objects(values)
        boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in (slices[i - 1] for i in self.ids)]
        return areas.astype(np.int64), np.array(boxes, np.float32).reshape(-1, 4)
