"""Reading one image file, whatever users hand us, as upright 8-bit RGB.

Pillow reads JPEG, PNG, BMP, GIF (first frame), WebP and TIFF by content, not
by extension, and its modes cover greyscale, palette, RGBA, CMYK and 16-bit.
The header is read first so that decompression bombs are refused before any
pixel is decoded, and JPEGs much larger than the target are decoded at reduced
size (DCT scaling via `Image.draft`), which is most of the decode time saved.
`plain_jpeg_scale` tells the training pipeline which JPEGs TensorFlow can
decode to the same pixels without Pillow (most photos), which is faster still.

Example:
    >>> pixels = load_image("cat.jpg", size=(96, 128))
    >>> pixels.shape, pixels.dtype
    ((96, 128, 3), dtype('uint8'))
"""

import dataclasses
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgpipe.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 89_478_485
JPEG_END_MARKER = b"\xff\xd9"

# imgpipe enforces its own data.max_pixels limit before decoding; Pillow's
# global limit would otherwise fire first with its own wording.
Image.MAX_IMAGE_PIXELS = None


class UnreadableImage(DataError):
    """One file is not a usable image; the message names the file and why."""


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What the header of an image file says, read without decoding pixels."""

    path: str
    format: str
    mode: str
    width: int
    height: int
    exif_rotated: bool
    exif_swaps_sides: bool = False

    @property
    def upright_size(self):
        """(width, height) once the EXIF rotation is applied, as `load_image` returns it."""
        return (self.height, self.width) if self.exif_swaps_sides else (self.width, self.height)


def read_header(path, max_pixels=DEFAULT_MAX_PIXELS):
    """Reads format, mode and size of `path` without decoding it.

    Raises `UnreadableImage` naming the file for empty, truncated headers,
    non-images and images over `max_pixels`.
    """
    with _open(path) as image:
        orientation = _exif_orientation(image)
        header = ImageHeader(
            path=str(path),
            format=image.format or "unknown",
            mode=image.mode,
            width=image.width,
            height=image.height,
            exif_rotated=orientation not in (None, 1),
            exif_swaps_sides=orientation in (5, 6, 7, 8),
        )
    _check_pixels(path, header.width, header.height, max_pixels)
    return header


def load_image(path, size=None, max_pixels=DEFAULT_MAX_PIXELS, draft=None):
    """Decodes `path` to an upright uint8 RGB array, resized to `size` = (height, width).

    Args:
        path: str or path-like, an image file of any format Pillow reads.
        size: optional (height, width); the image is resized (not cropped) to it.
        max_pixels: int, images with more pixels are refused before decoding.
        draft: optional (height, width) the caller will resize to itself: a JPEG
            is decoded at the smallest DCT scale that is still at least this big.

    Raises:
        UnreadableImage: the file is empty, truncated, not an image or too large.
    """
    with _open(path) as image:
        _check_pixels(path, image.width, image.height, max_pixels)
        draft = draft or size
        if draft is not None and image.format == "JPEG":
            # DCT scaling keeps at least the requested size, so quality is kept.
            upright = _exif_orientation(image) in (None, 1, 2, 3, 4)
            image.draft("RGB", (draft[1], draft[0]) if upright else (draft[0], draft[1]))
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
            rgb = to_rgb(upright)
        except (OSError, ValueError, SyntaxError) as error:
            raise UnreadableImage(f"{path}: cannot decode image ({_reason(error)})") from None
        if size is not None and (rgb.height, rgb.width) != tuple(size):
            rgb = rgb.resize((size[1], size[0]), Image.BILINEAR, reducing_gap=3.0)
        return np.asarray(rgb, dtype=np.uint8)


def plain_jpeg_scale(data, size, max_pixels=DEFAULT_MAX_PIXELS, name="<bytes>"):
    """The DCT scale (1, 2, 4 or 8) at which a plain JPEG can be decoded outside Pillow; 0 for any other image.

    A plain JPEG is RGB or greyscale, upright (no EXIF rotation) and complete
    (it ends with the end-of-image marker). TensorFlow's
    `tf.io.decode_jpeg(ratio=scale, dct_method="INTEGER_ACCURATE")` decodes it
    to exactly the pixels `load_image(..., draft=size)` gives, but in the graph,
    in parallel and without holding Python's GIL. Everything else (CMYK,
    EXIF-rotated, truncated, other formats) returns 0 and goes through
    `load_image`. The scale is the one `Image.draft` picks: the largest that
    keeps the decoded image at least `size` = (height, width).

    Raises:
        UnreadableImage: the header is unreadable, or the image is over `max_pixels` or empty.

    Example:
        >>> plain_jpeg_scale(open("photo_1600x1200.jpg", "rb").read(), size=(224, 224))
        4
    """
    with _open(_NamedBytes(data, name)) as image:
        _check_pixels(name, image.width, image.height, max_pixels)
        plain = (image.format == "JPEG" and image.mode in ("RGB", "L")
                 and _exif_orientation(image) in (None, 1) and data.endswith(JPEG_END_MARKER))
        shrink = min(image.width // size[1], image.height // size[0])
    if not plain:
        return 0
    return next((scale for scale in (8, 4, 2) if shrink >= scale), 1)


def decode_bytes(data, size=None, max_pixels=DEFAULT_MAX_PIXELS, name="<bytes>", draft=None):
    """Like `load_image`, for encoded bytes already in memory; `name` (the file, say) names it in errors."""
    return load_image(_NamedBytes(data, name), size=size, max_pixels=max_pixels, draft=draft)


def to_rgb(image):
    """Converts any Pillow mode to 8-bit RGB: alpha composited on white, 16-bit scaled."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        grey = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


class _NamedBytes(io.BytesIO):
    def __init__(self, data, name):
        super().__init__(data)
        self.name = name

    def __str__(self):
        return self.name


def _open(path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(path)
        image.seek(0)
        return image
    except FileNotFoundError:
        raise UnreadableImage(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UnreadableImage(f"{path}: is a folder, not an image") from None
    except UnidentifiedImageError:
        size = _file_size(path)
        reason = "empty file (0 bytes)" if size == 0 else "not an image Pillow can read"
        raise UnreadableImage(f"{path}: {reason}") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableImage(f"{path}: cannot read image header ({_reason(error)})") from None


def _check_pixels(path, width, height, max_pixels):
    if width * height > max_pixels:
        raise UnreadableImage(
            f"{path}: {width}x{height} = {width * height:,} pixels exceeds data.max_pixels={max_pixels:,} "
            "(possible decompression bomb); raise data.max_pixels if the image is genuine"
        )
    if width == 0 or height == 0:
        raise UnreadableImage(f"{path}: image has zero width or height")


def _exif_orientation(image):
    try:
        return image.getexif().get(0x0112)
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        return None


def _file_size(path):
    try:
        return path.getbuffer().nbytes if isinstance(path, io.BytesIO) else os.path.getsize(path)
    except OSError:
        return None


def _reason(error):
    return str(error).splitlines()[0] if str(error) else type(error).__name__
