"""Bad input files, generated: what users' uncurated folders really contain.

Each builder writes one file at `path` and returns the path. They are shared by
the check, bad-input and fault tests.
"""

import io
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image


def _ready(path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def photo(path, seed, size=32, format=None):
    """A smooth random picture (a blurred noise field), distinct for each seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    image.save(_ready(path), format=format)
    return pathlib.Path(path)


def photo_class_folder(root, per_class, size=32):
    """root/cat/<n>.png and root/dog/<n>.png: `per_class` distinct smooth photos each."""
    for name, first_seed in (("cat", 0), ("dog", 1000)):
        for index in range(per_class):
            photo(pathlib.Path(root) / name / f"{index}.png", first_seed + index, size=size)
    return pathlib.Path(root)


def zero_bytes(path):
    _ready(path).write_bytes(b"")
    return pathlib.Path(path)


def not_an_image(path):
    _ready(path).write_text("this is a text file with an image extension\n")
    return pathlib.Path(path)


def truncated_jpeg(path, seed=0, size=64):
    """A JPEG cut in half: the header reads, the pixels do not."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    _ready(path).write_bytes(data[: len(data) // 2])
    return pathlib.Path(path)


def decompression_bomb(path, side=100_000):
    """A PNG of a few hundred bytes whose header claims side x side pixels."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    _ready(path).write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return pathlib.Path(path)


def png_named_jpg(path, seed=0):
    """A real PNG saved under a .jpg name."""
    return photo(path, seed, format="PNG")


def cmyk_jpeg(path, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (24, 24, 4), dtype=np.uint8), "CMYK").save(_ready(path), "JPEG")
    return pathlib.Path(path)


def sixteen_bit_png(path, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16)).save(_ready(path))
    return pathlib.Path(path)


def exif_rotated_jpeg(path, seed=0):
    """A JPEG whose EXIF orientation (6) asks for a 90 degree turn."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(_ready(path), "JPEG", exif=exif.tobytes())
    return pathlib.Path(path)


def billion_laughs_xml(path):
    """A VOC annotation with nested entity expansion (the 'billion laughs' attack)."""
    entities = "".join(f'<!ENTITY l{i} "{"&l%d;" % (i - 1) * 10 if i else "lol"}">' for i in range(10))
    _ready(path).write_text(f'<?xml version="1.0"?><!DOCTYPE a [{entities}]>'
                            "<annotation><filename>&l9;</filename></annotation>")
    return pathlib.Path(path)


def voc_annotation(path, image_name, width, height, objects):
    """A Pascal VOC XML file; `objects` is [(class name, (x_min, y_min, x_max, y_max))]."""
    boxes = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>" for name, b in objects)
    _ready(path).write_text(f"<annotation><filename>{image_name}</filename><size><width>{width}</width>"
                            f"<height>{height}</height><depth>3</depth></size>{boxes}</annotation>")
    return pathlib.Path(path)


def tree_snapshot(root):
    """{relative path: (size, mtime_ns, mode)} of every file and folder below `root`, to prove nothing changed."""
    root = pathlib.Path(root)
    return {str(path.relative_to(root)): (path.lstat().st_size if path.is_file() else 0, path.lstat().st_mtime_ns,
                                          path.lstat().st_mode)
            for path in sorted(root.rglob("*"))}
