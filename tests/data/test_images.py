import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from imgpipe.data.images import UnreadableImage, decode_bytes, load_image, plain_jpeg_scale, read_header

RED = (200, 20, 20)


def save(image, path, **kwargs):
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize(
    "mode, suffix, format",
    [("L", ".png", "PNG"), ("P", ".png", "PNG"), ("RGBA", ".png", "PNG"), ("CMYK", ".jpg", "JPEG"),
     ("RGB", ".bmp", "BMP"), ("P", ".gif", "GIF"), ("RGB", ".webp", "WEBP"), ("RGB", ".tif", "TIFF"),
     ("LA", ".png", "PNG")],
)
def test_every_mode_and_format_becomes_rgb_uint8(tmp_path, mode, suffix, format):
    # The colours must survive too: an inverted CMYK JPEG or a palette read as indices has the right shape.
    source = Image.new("RGB", (20, 10), RED).convert(mode)
    path = save(source, tmp_path / f"image{suffix}", format=format)
    pixels = load_image(path)
    assert pixels.shape == (10, 20, 3) and pixels.dtype == np.uint8
    expected = np.asarray(source.convert("RGB"), np.int16)
    lossy = format in ("JPEG", "WEBP")
    assert np.abs(pixels.astype(np.int16) - expected).max() <= (12 if lossy else 0)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    array = np.full((4, 4), 32768, dtype=np.uint16)
    path = save(Image.fromarray(array), tmp_path / "deep.png")
    pixels = load_image(path)
    assert np.all(np.abs(pixels.astype(int) - 128) <= 1)


def test_transparent_pixels_are_composited_on_white(tmp_path):
    path = save(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), tmp_path / "clear.png")
    assert np.all(load_image(path) == 255)


def _quadrants(width=20, height=10):
    """Four flat quadrants of distinct colours, so every rotation and mirror looks different."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 2, : width // 2] = (250, 0, 0)
    pixels[: height // 2, width // 2:] = (0, 250, 0)
    pixels[height // 2:, : width // 2] = (0, 0, 250)
    pixels[height // 2:, width // 2:] = (250, 250, 250)
    return pixels


# What each EXIF orientation tag means, as the upright view of the stored pixels.
UPRIGHT = {
    1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
    5: lambda a: np.rot90(np.flipud(a), -1), 6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(np.flipud(a), 1), 8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_turns_the_pixels_upright(tmp_path, orientation):
    # A 20 wide x 10 high PNG (lossless) with four coloured quadrants; 90 and 270 degrees differ.
    stored = _quadrants()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(Image.fromarray(stored), tmp_path / "rotated.png", exif=exif.tobytes())
    np.testing.assert_array_equal(load_image(path), UPRIGHT[orientation](stored))
    assert read_header(path).exif_rotated == (orientation != 1)


def test_first_frame_of_an_animated_gif(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # in the web palette "P" uses, so exact
    frames = [Image.new("RGB", (8, 8), colour).convert("P") for colour in colours]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert Image.open(path).n_frames == 3
    pixels = load_image(path)
    assert pixels.shape == (8, 8, 3) and np.all(pixels == colours[0])


def test_content_decides_not_extension(tmp_path):
    path = save(Image.new("RGB", (6, 6), RED), tmp_path / "really_png.jpg", format="PNG")
    assert read_header(path).format == "PNG"
    assert tuple(load_image(path)[0, 0]) == RED


def test_resize_to_height_width(tmp_path):
    path = save(Image.new("RGB", (300, 200), RED), tmp_path / "big.jpg", quality=95)
    pixels = load_image(path, size=(24, 32))
    assert pixels.shape == (24, 32, 3)
    assert np.all(np.abs(pixels.astype(int) - RED) < 8)


@pytest.mark.parametrize("content, reason", [(b"", "empty file"), (b"hello, not an image", "not an image")])
def test_non_images_are_refused_with_the_file_name(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(UnreadableImage, match=f"bad.png.*{reason}"):
        load_image(path)


def test_truncated_jpeg_is_refused(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    with pytest.raises(UnreadableImage, match="cut.jpg"):
        load_image(path)


def png_claiming_size(width, height):
    """A tiny PNG whose header claims width x height: a decompression bomb's shape."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming_size(100_000, 100_000))
    with pytest.raises(UnreadableImage, match=r"bomb.png.*data.max_pixels"):
        read_header(path, max_pixels=10_000_000)
    with pytest.raises(UnreadableImage, match=r"bomb.png.*data.max_pixels"):
        load_image(path, max_pixels=10_000_000)


def jpeg_bytes(width, height, mode="RGB", **kwargs):
    pixels = np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("width, height, size, scale", [(64, 48, (16, 16), 2), (64, 64, (16, 16), 4),
                                                        (200, 160, (16, 16), 8), (20, 20, (16, 16), 1),
                                                        (10, 10, (16, 16), 1)])
def test_plain_jpeg_scale_is_the_one_draft_picks(width, height, size, scale):
    assert plain_jpeg_scale(jpeg_bytes(width, height), size) == scale
    assert plain_jpeg_scale(jpeg_bytes(width, height, mode="L"), size) == scale


def test_jpegs_pillow_must_decode_are_not_plain():
    exif = Image.Exif()
    exif[0x0112] = 6
    png = io.BytesIO()
    Image.new("RGB", (32, 32), RED).save(png, "PNG")
    assert plain_jpeg_scale(jpeg_bytes(32, 32, mode="CMYK"), (16, 16)) == 0
    assert plain_jpeg_scale(jpeg_bytes(32, 32, exif=exif.tobytes()), (16, 16)) == 0
    assert plain_jpeg_scale(jpeg_bytes(32, 32)[:-200], (16, 16)) == 0
    assert plain_jpeg_scale(png.getvalue(), (16, 16)) == 0


def test_plain_jpeg_scale_refuses_bombs_naming_the_file():
    with pytest.raises(UnreadableImage, match=r"big.jpg.*data.max_pixels"):
        plain_jpeg_scale(jpeg_bytes(64, 64), (16, 16), max_pixels=1000, name="big.jpg")


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_tensorflow_decodes_a_plain_jpeg_to_pillows_pixels(mode):
    import tensorflow as tf

    data = jpeg_bytes(96, 72, mode=mode)
    scale = plain_jpeg_scale(data, (24, 24))
    graph = tf.io.decode_jpeg(data, channels=3, ratio=scale, dct_method="INTEGER_ACCURATE").numpy()
    assert scale == 2
    assert np.array_equal(graph, decode_bytes(data, draft=(24, 24)))
