"""The serving decode: the training reader's pixels for every format, orientation and alpha, and a
status instead of a crash for every image it cannot answer."""

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from imgpipe.data.images import decode_bytes  # noqa: E402
from imgpipe.data.sources import ImageSet  # noqa: E402
from imgpipe.engine.pipeline import make_dataset  # noqa: E402
from imgpipe.engine.serving import decode_batch, decode_checked, status_strings, with_status  # noqa: E402

MAX_PIXELS = 25_000_000
RNG = np.random.default_rng(0)
# Blocks of 8x8 flat colour: no JPEG ringing at block edges, and every orientation looks different.
BASE = np.kron(RNG.integers(0, 256, (9, 13, 3)), np.ones((8, 8, 1))).astype(np.uint8)[:70, :100]
ALPHA = RNG.integers(0, 256, BASE.shape[:2]).astype(np.uint8)


def encoded(image, format, orientation=None, **options):
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def _palette_with_transparency():
    palette = Image.fromarray(BASE).quantize(16)
    return encoded(palette, "PNG", transparency=3)


CASES = {
    "png_rgba": lambda: encoded(Image.fromarray(np.dstack([BASE, ALPHA]), "RGBA"), "PNG"),
    "png_grey_alpha": lambda: encoded(Image.fromarray(np.dstack([BASE[..., 0], ALPHA]), "LA"), "PNG"),
    "png_grey": lambda: encoded(Image.fromarray(BASE[..., 0], "L"), "PNG"),
    "png_palette_transparency": _palette_with_transparency,
    "gif": lambda: encoded(Image.fromarray(BASE).quantize(64), "GIF"),
    "bmp": lambda: encoded(Image.fromarray(BASE), "BMP"),
    "webp_rgba": lambda: encoded(Image.fromarray(np.dstack([BASE, ALPHA]), "RGBA"), "WEBP", lossless=True),
}
for _orientation in range(1, 9):
    CASES[f"jpeg_orientation_{_orientation}"] = (
        lambda o=_orientation: encoded(Image.fromarray(BASE), "JPEG", o, quality=90))
    CASES[f"png_orientation_{_orientation}"] = lambda o=_orientation: encoded(Image.fromarray(BASE), "PNG", o)
    CASES[f"webp_orientation_{_orientation}"] = (
        lambda o=_orientation: encoded(Image.fromarray(BASE), "WEBP", o, lossless=True))


def own_size_image(batch, index):
    """Image `index` of a `decode_checked` batch at each image's own size (flattened, padded) as [H, W, 3]."""
    height, width = batch.sizes[index].numpy()
    return batch.images[index].numpy()[:height * width * 3].reshape(height, width, 3)


def test_every_format_orientation_and_alpha_gives_the_training_readers_pixels():
    """At each image's own size (what stylize and colorize serve), in one mixed batch."""
    names = list(CASES)
    payloads = [CASES[name]() for name in names]
    batch = decode_checked(tf.constant(payloads), MAX_PIXELS)
    for index, (name, payload) in enumerate(zip(names, payloads)):
        expected = decode_bytes(payload)
        height, width = batch.sizes[index].numpy()
        assert int(batch.status[index]) == 0, name
        assert (height, width) == expected.shape[:2], name
        np.testing.assert_array_equal(own_size_image(batch, index), expected, err_msg=name)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_rotated_jpeg_at_a_dct_scale_gives_the_training_pipelines_pixels(tmp_path, orientation):
    """A large JPEG is decoded at a reduced DCT scale chosen from its upright size, as training chooses."""
    pixels = np.kron(RNG.integers(0, 256, (42, 54, 3)), np.ones((10, 10, 1))).astype(np.uint8)[:410, :530]
    path = tmp_path / "photo.jpg"
    path.write_bytes(encoded(Image.fromarray(pixels), "JPEG", orientation, quality=90))
    training, _ = make_dataset(ImageSet.from_files([path], np.zeros(1, np.int32)), [64, 48], 1, training=False,
                               cache="none")
    served = decode_batch(tf.constant([path.read_bytes()]), [64, 48], MAX_PIXELS)
    upright = [530, 410] if orientation >= 5 else [410, 530]
    assert served.sizes.numpy().tolist() == [upright]
    np.testing.assert_array_equal(served.images.numpy(), next(iter(training))[0].numpy())


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def grey_png(width, height, rows=None):
    """A grey PNG with the given header; `rows` rows of image data (default all), streamed through zlib."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + bytes(width)
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def broken_crc(png):
    """The PNG with its IDAT checksum wrong: complete (IEND is there) but corrupt."""
    start = png.index(b"IDAT") - 4
    length = struct.unpack(">I", png[start:start + 4])[0]
    crc = start + 8 + length
    return png[:crc] + bytes(4) + png[crc + 4:]


def test_each_refused_image_gets_its_reason_and_the_others_their_pixels():
    good = CASES["png_orientation_6"]()
    png = CASES["bmp"]()
    ordinary = encoded(Image.fromarray(BASE), "PNG")
    payloads = [good, b"", b"just some text", ordinary[: len(ordinary) // 2], grey_png(6000, 5000, rows=2),
                broken_crc(ordinary), png]
    batch = decode_checked(tf.constant(payloads), MAX_PIXELS)
    statuses = [value.decode() for value in status_strings(batch.status, MAX_PIXELS).numpy()]
    assert statuses == ["ok", "empty", "not an image", "truncated", "over max_pixels 25000000", "corrupt", "ok"]
    assert batch.sizes.numpy().tolist() == [[100, 70], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0], [70, 100]]
    for index in (1, 2, 3, 4, 5):
        assert not batch.images[index].numpy().any()
    np.testing.assert_array_equal(own_size_image(batch, 0), decode_bytes(good))
    np.testing.assert_array_equal(own_size_image(batch, 6), decode_bytes(png))


def test_a_forged_size_is_refused_before_decoding_even_when_the_data_is_tiny():
    """3000 x 2000 announced, two rows of data: the budget, not the decoder, refuses it."""
    forged = grey_png(3000, 2000, rows=2)
    assert len(forged) < 1000
    refused = decode_checked(tf.constant([forged]), 5_000_000)
    assert status_strings(refused.status, 5_000_000).numpy().tolist() == [b"over max_pixels 5000000"]
    within = decode_checked(tf.constant([forged]), 6_000_000)
    assert status_strings(within.status, 6_000_000).numpy().tolist() == [b"corrupt"]


def forged_jpeg(height, width):
    """A real 70 x 100 JPEG whose SOF announces `height` x `width`."""
    jpeg = bytearray(encoded(Image.fromarray(BASE), "JPEG", quality=90))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def test_a_jpeg_is_held_to_the_pixel_budget_by_the_size_libjpeg_reads_and_fails_alone():
    """A JPEG's size comes from libjpeg's header read inside the decode step: a forged SOF is refused before
    decoding, and a JPEG whose header libjpeg rejects costs only its own answer."""
    good = CASES["jpeg_orientation_6"]()
    forged = forged_jpeg(5000, 6000)
    broken_table = good.replace(b"\xff\xdb\x00\x43", b"\xff\xdb\x00\x03", 1)  # a DQT too short to hold a table
    payloads = [forged, good, good[:len(good) // 2], broken_table, good]
    batch = decode_checked(tf.constant(payloads), 25_000_000, [32, 32])
    statuses = [value.decode() for value in status_strings(batch.status, 25_000_000).numpy()]
    assert statuses == ["over max_pixels 25000000", "ok", "truncated", "corrupt", "ok"]
    assert batch.sizes.numpy().tolist() == [[0, 0], [100, 70], [0, 0], [0, 0], [100, 70]]
    assert not batch.images[0].numpy().any()
    np.testing.assert_array_equal(batch.images[1].numpy(), batch.images[4].numpy())
    within = decode_checked(tf.constant([forged]), 30_000_001, [32, 32])
    assert status_strings(within.status, 30_000_001).numpy().tolist() != [b"over max_pixels 30000001"]


def test_with_status_answers_the_neutral_value_for_refused_images():
    status = tf.constant([0, 4, 0])
    answers = {"score": tf.constant([0.9, 0.8, 0.7]), "class_name": tf.constant([b"cat", b"dog", b"cat"]),
               "class_ids": tf.constant([[1, 2], [3, 4], [5, 6]])}
    result = with_status(answers, status, 100, neutral={"class_ids": -1})
    assert result["score"].numpy().tolist() == pytest.approx([0.9, 0.0, 0.7])
    assert result["class_name"].numpy().tolist() == [b"cat", b"", b"cat"]
    assert result["class_ids"].numpy().tolist() == [[1, 2], [-1, -1], [5, 6]]
    assert result["status"].numpy().tolist() == [b"ok", b"over max_pixels 100", b"ok"]


def assert_a_refused_image_gets_no_picture_and_the_other_its_own(export_path):
    """For the exports that answer pictures at each image's size (stylize, colorize)."""
    from imgpipe.engine.export.saved_model import load_export

    serve = load_export(export_path)[2].signatures["serving_default"]
    picture = encoded(Image.fromarray(RNG.integers(0, 256, (22, 31, 3), dtype=np.uint8)), "PNG")
    alone = serve(image_bytes=tf.constant([picture]))
    mixed = serve(image_bytes=tf.constant([b"<html>not found</html>", picture]))
    assert mixed["status"].numpy().tolist() == [b"not an image", b"ok"]
    assert mixed["image_png_bytes"].numpy()[0] == b""
    assert mixed["height"].numpy().tolist() == [0, 22] and mixed["width"].numpy().tolist() == [0, 31]
    assert mixed["image_png_bytes"].numpy()[1] == alone["image_png_bytes"].numpy()[0]


# The peak is this child's own VmHWM, reset after the warm-up (`ru_maxrss` carries the parent's over exec).
_THIN_PAIR_CHILD = """
import json, pickle, sys
import tensorflow as tf
from imgpipe.engine.serving import images_at_original_size

def peak_kib():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1])

warm_up, pair = pickle.loads(open(sys.argv[1], "rb").read())
serve = tf.function(lambda image_bytes: images_at_original_size(
    image_bytes, lambda image: tf.cast(image, tf.float32), 25_000_000))
serve(tf.constant(warm_up))
with open("/proc/self/clear_refs", "w") as clear_refs:
    clear_refs.write("5")
before = peak_kib()
answer = serve(tf.constant(pair))
after = peak_kib()
print(json.dumps({"growth_mib": (after - before) / 1024, "status": [s.decode() for s in answer["status"].numpy()],
                  "shapes": [list(tf.io.decode_png(png).shape) for png in answer["image_png_bytes"].numpy()]}))
"""


@pytest.mark.slow
def test_a_long_thin_pair_at_the_original_size_costs_its_own_pixels_not_their_bounding_box(tmp_path):
    """1 x 8000 and 8000 x 1 in one request: padding both to 8000 x 8000 took 3.2 GB more; their own pixels are 48 KB."""
    cases = tmp_path / "cases.pkl"
    cases.write_bytes(pickle.dumps(([grey_png(8, 1), grey_png(1, 8)], [grey_png(8000, 1), grey_png(1, 8000)])))
    child = subprocess.run([sys.executable, "-c", _THIN_PAIR_CHILD, str(cases)], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert child.returncode == 0, child.stderr[-2000:]
    report = json.loads(child.stdout.splitlines()[-1])
    assert report["status"] == ["ok", "ok"]
    assert report["shapes"] == [[1, 8000, 3], [8000, 1, 3]]
    assert report["growth_mib"] < 100, report
