"""The built-in demo data sets: coloured shapes drawn on noisy or textured backgrounds.

`imgpipe run classify` (and `detect`, `stylize`, `colorize`) with no `--data` trains on them, so a
fresh install can be tried without a download. It is drawn with a fixed seed into a cache folder
(never into the user's data) the first time it is needed.

Example:
    >>> folder = demo_classification_folder()
    >>> sorted(p.name for p in folder.iterdir())
    ['circle', 'cross', 'ring', 'square', 'triangle']
"""

import json
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


def _draw_shape_in(draw, shape, box, colour):
    """Draws `shape` filling `box` (x_min, y_min, x_max, y_max) on a PIL ImageDraw."""
    x_min, y_min, x_max, y_max = box
    cx, cy = (x_min + x_max) / 2, (y_min + y_max) / 2
    width = max(2, int((x_max - x_min) / 6))
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=width)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y_min), (x_min, y_max), (x_max, y_max)], fill=colour)
    elif shape == "cross":
        draw.rectangle([x_min, cy - width / 2, x_max, cy + width / 2], fill=colour)
        draw.rectangle([cx - width / 2, y_min, cx + width / 2, y_max], fill=colour)


def draw_shape(shape, size, rng):
    """One `size`×`size` RGB image of `shape` at a random place, scale and colour."""
    background = rng.integers(0, 256, 3)
    noise = rng.normal(0, 18, (size, size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    radius = rng.uniform(0.22, 0.4) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    colour = tuple(int(c) for c in (background + rng.integers(90, 166, 3)) % 256)
    _draw_shape_in(ImageDraw.Draw(image), shape, [cx - radius, cy - radius, cx + radius, cy + radius], colour)
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


def textured_background(size, rng):
    """A `size`×`size` RGB array: a colour gradient with stripes and noise, so objects need context."""
    ys, xs = np.mgrid[0:size, 0:size] / size
    start, end = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    gradient = start + (end - start) * ((xs + ys) / 2)[..., None]
    stripes = 25 * np.sin(2 * np.pi * rng.uniform(2, 6) * (xs * np.cos(rng.uniform(0, np.pi)) + ys))[..., None]
    return np.clip(gradient + stripes + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)


DETECTION_SHAPES = ("circle", "square", "triangle")


def _voc_xml(name, size, objects):
    rows = "".join(
        f"<object><name>{shape}</name><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
        f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>" for shape, box in objects)
    return (f"<annotation><filename>{name}</filename><size><width>{size}</width><height>{size}</height>"
            f"<depth>3</depth></size>{rows}</annotation>")


def make_detection_folder(folder, images=200, size=64, seed=0):
    """Writes a Pascal VOC layout (`images/*.png`, `annotations/*.xml`) of 1-3 shapes per image."""
    folder = pathlib.Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(images):
        image = Image.fromarray(textured_background(size, rng))
        draw = ImageDraw.Draw(image)
        objects = []
        for _ in range(rng.integers(1, 4)):
            side = int(rng.uniform(0.2, 0.45) * size)
            x_min, y_min = (int(v) for v in rng.integers(0, size - side, 2))
            box = [x_min, y_min, x_min + side, y_min + side]
            shape = DETECTION_SHAPES[rng.integers(len(DETECTION_SHAPES))]
            _draw_shape_in(draw, shape, box, tuple(int(c) for c in rng.integers(0, 256, 3)))
            objects.append((shape, box))
        name = f"shapes_{index:04d}.png"
        image.save(folder / "images" / name)
        (folder / "annotations" / f"shapes_{index:04d}.xml").write_text(_voc_xml(name, size, objects))
    return folder


def _cached(name, make):
    """`cache_root()/demo/name`, made once by `make(folder)` (atomically) and reused afterwards."""
    folder = cache_root() / "demo" / name
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    make(staging)
    try:
        staging.rename(folder)
    except OSError:  # another process drew it first; theirs is identical
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def demo_classification_folder(per_class=100, size=32):
    """The classification demo: five shape classes in sub-folders."""
    return _cached(f"shapes-{per_class}-{size}", lambda folder: make_shapes_folder(folder, per_class, size))


def demo_detection_folder(images=200, size=64):
    """The detection demo: circles, squares and triangles on textured backgrounds, in VOC layout."""
    return _cached(f"detect-shapes-{images}-{size}", lambda folder: make_detection_folder(folder, images, size))


def _touching_pair(size, rng):
    """Two shapes of one class and colour side by side, the second box starting 0-2 pixels inside the first."""
    side = int(rng.uniform(0.2, 0.35) * size)
    overlap = int(rng.integers(0, 3))
    x_min = int(rng.integers(0, size - 2 * side + overlap))
    y_min = int(rng.integers(0, size - side))
    shape = DETECTION_SHAPES[rng.integers(len(DETECTION_SHAPES))]
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    second = x_min + side - overlap
    return [(shape, [x_min, y_min, x_min + side, y_min + side], colour),
            (shape, [second, y_min, second + side, y_min + side], colour)]


def make_instances_folder(folder, images=160, size=64, seed=0):
    """Writes an instance ID-mask layout of 2-5 shapes per image, a touching same-class pair in every other one.

    `images/shapes_0000.png`, `instances/shapes_0000.png` (0 = background, k = the
    k-th shape) and `instances/shapes_0000.json` (the class of each id). The two
    shapes of a pair have one class and one colour, so they merge in a semantic
    mask and only an instance model can tell them apart; the pair is drawn last
    so no other shape parts it. Shapes drawn later cover earlier ones, and a
    shape covered entirely is not listed.
    """
    folder = pathlib.Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "instances").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(images):
        image = Image.fromarray(textured_background(size, rng))
        ids = Image.new("L", (size, size), 0)
        draw, draw_ids = ImageDraw.Draw(image), ImageDraw.Draw(ids)
        count = int(rng.integers(2, 6))
        pair = _touching_pair(size, rng) if index % 2 == 0 else []
        objects = []
        for _ in range(count - len(pair)):
            side = int(rng.uniform(0.2, 0.35) * size)
            x_min, y_min = (int(v) for v in rng.integers(0, size - side, 2))
            shape = DETECTION_SHAPES[rng.integers(len(DETECTION_SHAPES))]
            objects.append((shape, [x_min, y_min, x_min + side, y_min + side],
                            tuple(int(c) for c in rng.integers(0, 256, 3))))
        objects += pair
        for number, (shape, box, colour) in enumerate(objects, start=1):
            _draw_shape_in(draw, shape, box, colour)
            _draw_shape_in(draw_ids, shape, box, number)
        drawn = np.asarray(ids)
        visible = [int(number) for number in np.unique(drawn) if number > 0]
        renumbered = np.zeros(len(objects) + 1, np.uint8)
        renumbered[visible] = np.arange(1, len(visible) + 1)
        name = f"shapes_{index:04d}"
        image.save(folder / "images" / f"{name}.png")
        Image.fromarray(renumbered[drawn]).save(folder / "instances" / f"{name}.png")
        classes = {str(new): objects[old - 1][0] for new, old in enumerate(visible, start=1)}
        (folder / "instances" / f"{name}.json").write_text(json.dumps(classes))
    return folder


def demo_instances_folder(images=160, size=64):
    """The instance segmentation demo: touching shapes of one class to tell apart, in the ID-mask layout."""
    return _cached(f"instance-pairs-{images}-{size}", lambda folder: make_instances_folder(folder, images, size))


def make_scenes_folder(folder, images=64, size=64, seed=0):
    """Writes `images` PNGs of shapes on textured backgrounds (content images for style transfer)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(images):
        image = Image.fromarray(textured_background(size, rng))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.integers(2, 5)):
            side = int(rng.uniform(0.2, 0.5) * size)
            x_min, y_min = (int(v) for v in rng.integers(0, size - side, 2))
            shape = DETECTION_SHAPES[rng.integers(len(DETECTION_SHAPES))]
            _draw_shape_in(draw, shape, [x_min, y_min, x_min + side, y_min + side],
                           tuple(int(c) for c in rng.integers(0, 256, 3)))
        image.save(folder / f"scene_{index:04d}.png")
    return folder


def make_style_pattern(path, size=128):
    """Writes a strongly textured, colourful pattern (swirled waves) to use as a style image."""
    ys, xs = (np.mgrid[0:size, 0:size] / size - 0.5) * 2
    radius, angle = np.hypot(xs, ys), np.arctan2(ys, xs)
    swirl = np.sin(18 * radius + 5 * angle)
    channels = [np.sin(3 * swirl + phase) for phase in (0.0, 2.1, 4.2)]
    pixels = np.stack([(c + 1) * 127.5 for c in channels], axis=-1)
    stroke = np.sin(40 * (xs + 0.3 * np.sin(9 * ys)))[..., None] * 40
    Image.fromarray(np.clip(pixels + stroke, 0, 255).astype(np.uint8)).save(path)
    return pathlib.Path(path)


def demo_stylize_data(images=64, size=64):
    """(content folder, style image) of the style-transfer demo."""
    folder = _cached(f"scenes-{images}-{size}", lambda target: make_scenes_folder(target, images, size))
    style = _cached("style-pattern", lambda target: make_style_pattern(pathlib.Path(target) / "waves.png"))
    return folder, style / "waves.png"


def draw_landscape(size, rng):
    """A `size`×`size` landscape whose colours follow from its objects: blue sky, green grass, a sun, trees."""
    ys, xs = np.mgrid[0:size, 0:size] / size
    horizon = rng.uniform(0.45, 0.7)
    sky = np.array([90, 150, 235]) * (0.75 + 0.35 * ys[..., None]) + rng.normal(0, 4, (size, size, 3))
    grass = (np.array([60, 150, 50]) * (0.8 + 0.25 * np.sin(40 * ys + 6 * xs)[..., None] * 0.5)
             + rng.normal(0, 10, (size, size, 3)))
    pixels = np.where((ys < horizon + 0.03 * np.sin(9 * xs + rng.uniform(0, 6)))[..., None], sky, grass)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.06, 0.12) * size
    cx, cy = rng.uniform(0.1, 0.9) * size, rng.uniform(0.08, horizon - 0.15) * size
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=(250, 200, 40))
    for _ in range(rng.integers(1, 4)):
        tx = rng.uniform(0.05, 0.95) * size
        base = rng.uniform(horizon + 0.1, 0.95) * size
        height = rng.uniform(0.15, 0.3) * size
        draw.rectangle([tx - size * 0.02, base - height * 0.5, tx + size * 0.02, base], fill=(110, 70, 30))
        crown = height * 0.35
        draw.ellipse([tx - crown, base - height - crown * 0.2, tx + crown, base - height * 0.5 + crown * 0.5],
                     fill=(30, 110 + int(rng.integers(0, 40)), 40))
    return image


def make_landscapes_folder(folder, images=160, size=64, seed=0):
    """Writes `images` landscape PNGs (the colorization demo's training data)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(images):
        draw_landscape(size, rng).save(folder / f"landscape_{index:04d}.png")
    return folder


def demo_colorize_folder(images=160, size=64):
    """The colorization demo: landscapes whose colours can be learnt from their shapes and shading."""
    return _cached(f"landscapes-{images}-{size}", lambda folder: make_landscapes_folder(folder, images, size))
