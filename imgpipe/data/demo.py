"""The built-in demo data set: coloured shapes drawn on noisy backgrounds.

`imgpipe run classify` with no `--data` trains on it, so a fresh install can be
tried without a download. It is drawn with a fixed seed into a cache folder
(never into the user's data) the first time it is needed.

Example:
    >>> folder = demo_classification_folder()
    >>> sorted(p.name for p in folder.iterdir())
    ['circle', 'cross', 'ring', 'square', 'triangle']
"""

import os
import pathlib
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "cross", "ring", "square", "triangle")


def cache_root():
    """Where imgpipe keeps generated data: $IMGPIPE_CACHE or ~/.cache/imgpipe."""
    default = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "imgpipe"
    return pathlib.Path(os.environ.get("IMGPIPE_CACHE", default))


def draw_shape(shape, size, rng):
    """One `size`×`size` RGB image of `shape` at a random place, scale and colour."""
    background = rng.integers(0, 256, 3)
    noise = rng.normal(0, 18, (size, size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.22, 0.4) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    colour = tuple(int(c) for c in (background + rng.integers(90, 166, 3)) % 256)
    width = max(2, int(radius / 3))
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=width)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=colour)
    elif shape == "cross":
        draw.rectangle([cx - radius, cy - width / 2, cx + radius, cy + width / 2], fill=colour)
        draw.rectangle([cx - width / 2, cy - radius, cx + width / 2, cy + radius], fill=colour)
    return image


def make_shapes_folder(folder, per_class=100, size=32, seed=0):
    """Writes `per_class` PNGs of each shape into `folder/<shape>/`; returns `folder`."""
    folder = pathlib.Path(folder)
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (folder / shape).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            draw_shape(shape, size, rng).save(folder / shape / f"{shape}_{index:04d}.png")
    return folder


def demo_classification_folder(per_class=100, size=32):
    """The demo folder in the cache, drawn once (atomically) and reused afterwards."""
    folder = cache_root() / "demo" / f"shapes-{per_class}-{size}"
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".shapes-", dir=folder.parent))
    make_shapes_folder(staging, per_class=per_class, size=size)
    try:
        staging.rename(folder)
    except OSError:  # another process drew it first; theirs is identical
        shutil.rmtree(staging, ignore_errors=True)
    return folder
