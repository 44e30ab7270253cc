import io

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from imgpipe.engine import image_header  # noqa: E402


def encoded(format, orientation=None, size=(50, 30), **options):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), np.uint8))
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def header(data, max_pixels=None):
    return {key: int(value[0]) for key, value in image_header.read_headers(tf.constant([data]), max_pixels).items()}


@pytest.mark.parametrize("format, options", [("JPEG", {}), ("PNG", {}), ("GIF", {}), ("BMP", {}), ("WEBP", {}),
                                             ("WEBP", {"lossless": True})])
def test_sizes_are_read_from_the_header_as_pillow_reads_them(format, options):
    data = encoded(format, size=(53, 31), **options)
    found = header(data)
    if format == "JPEG":  # libjpeg's header read, in the decode step where its failure is caught
        assert (found["height"], found["width"]) == (0, 0)
        found["height"], found["width"] = image_header.jpeg_size(tf.constant(data)).numpy().tolist()
    assert (found["status"], found["height"], found["width"], found["complete"]) == (image_header.OK, 31, 53, 1)


@pytest.mark.parametrize("format", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_read_from_each_format(format, orientation):
    assert header(encoded(format, orientation))["orientation"] == orientation


def test_bad_bytes_get_their_reason():
    jpeg, png = encoded("JPEG"), encoded("PNG")
    assert header(b"")["status"] == image_header.EMPTY
    assert header(b"plain text, not an image")["status"] == image_header.NOT_AN_IMAGE
    assert header(jpeg[:60])["complete"] == 0  # told apart from a corrupt JPEG when its decode fails
    assert header(png[:20])["status"] == image_header.TRUNCATED
    assert header(png[:-12])["complete"] == 0
    assert header(png, max_pixels=50 * 30 - 1)["status"] == image_header.OVER_MAX_PIXELS
    assert header(png, max_pixels=50 * 30)["status"] == image_header.OK


def test_a_gif_is_cut_after_its_first_frame():
    frames = [Image.new("RGB", (20, 10), colour) for colour in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    data = buffer.getvalue()
    end = header(data)["end"]
    assert end < len(data) - 1
    first = Image.open(io.BytesIO(data[:end] + b";"))
    assert first.n_frames == 1 and first.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


def test_each_image_of_a_batch_is_read_as_if_it_were_alone():
    """A read past one image's end sees zeros, never the next image's bytes."""
    jpeg, png = encoded("JPEG"), encoded("PNG", orientation=6)
    images = [jpeg[:60], png, png[:30], b"", jpeg[:-2], encoded("GIF"), encoded("WEBP")[:20], encoded("BMP")]
    together = image_header.read_headers(tf.constant(images))
    for index, data in enumerate(images):
        alone = image_header.read_headers(tf.constant([data]))
        assert {key: int(value[index]) for key, value in together.items()} == {
            key: int(value[0]) for key, value in alone.items()}, index


def jpeg_segment(marker, payload):
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def test_a_jpegs_exif_is_the_first_exif_app1_on_its_segment_chain():
    """The substring search only says whether to walk: "Exif\\0\\0" inside another segment is not EXIF."""
    plain = encoded("JPEG")

    def exif_app1(orientation):
        tagged = encoded("JPEG", orientation=orientation)
        start = tagged.index(b"Exif\0\0") - 4
        return tagged[start:start + 2 + int.from_bytes(tagged[start + 2:start + 4], "big")]

    app1, sideways = exif_app1(8), exif_app1(6)
    decoy = jpeg_segment(0xFE, app1)  # a comment holding a whole Exif APP1
    after_comment = plain[:2] + decoy + sideways + plain[2:]
    assert header(after_comment)["orientation"] == 6
    assert header(plain[:2] + decoy + plain[2:])["orientation"] == 1
    assert header(plain[:2] + jpeg_segment(0xE2, b"ICC_PROFILE\0" + bytes(300)) + app1 + plain[2:])["orientation"] == 8


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_exif_is_found_in_a_file_too_long_to_be_searched_first(format):
    """Files over `_SEARCHED_BYTES` skip the substring search and are walked."""
    data = encoded(format, orientation=6, size=(700, 700), **({"quality": 100} if format == "JPEG" else {}))
    assert len(data) > image_header._SEARCHED_BYTES
    assert header(data)["orientation"] == 6
