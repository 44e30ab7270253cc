"""What an encoded image's header says, read in the graph before anything is decoded.

A served model takes bytes from whoever calls it. TensorFlow's decoders
allocate the pixels a header announces and fail the whole batch on a broken
file, and no TF op reads a size without decoding (except for JPEG). So the
header is read first, with plain tensor ops on the bytes:
the format from its magic bytes; width and height from PNG's IHDR, JPEG's
first SOF, GIF's logical screen, BMP's info header or WebP's VP8/VP8L/VP8X
chunk (the same fields the decoders allocate by, so a forged size cannot get
past the pixel budget); whether the file carries its end marker; EXIF's
orientation tag; and, for GIF, where the first frame ends (TensorFlow's GIF
decoder decodes every frame, so a served graph should cut the file after the
first one, which is all training uses).

The serving signatures (`imgpipe.engine.serving`) read every image's header
before decoding any, and answer a per-image `status` from it.

Example:
    >>> header = read_header(tf.constant(png_bytes))
    >>> int(header["status"]), int(header["height"]), int(header["width"])
    (0, 480, 640)
"""

import tensorflow as tf

# Per-image status codes; `STATUS_REASONS` holds what the served `status` output says for each.
OK, EMPTY, NOT_AN_IMAGE, TRUNCATED, OVER_MAX_PIXELS, CORRUPT = range(6)
JPEG, PNG, GIF, BMP, WEBP = range(1, 6)
NO_EXIF = -1
_PADDING = 32  # zero bytes after the data, so a fixed-offset read past the end reads zeros, not an error
_MAX_MARKERS = 512  # JPEG segments (or PNG / WebP chunks) walked before the image data; real files have < 30


def status_reasons(max_pixels):
    """The `status` string of each code, in code order."""
    return ["ok", "empty", "not an image", "truncated", f"over max_pixels {max_pixels}", "corrupt"]


@tf.autograph.experimental.do_not_convert
def read_header(image_bytes, max_pixels=None):
    """One encoded image (scalar string) -> dict of int32/int64 scalars describing it, nothing decoded.

    Keys: `status` (a code above: OK, EMPTY, NOT_AN_IMAGE, TRUNCATED or
    OVER_MAX_PIXELS), `format` (JPEG, PNG, GIF, BMP, WEBP or 0), `height`,
    `width` (as stored, before any EXIF rotation), `complete` (1 if the end
    marker is there), `orientation` (EXIF's orientation tag, 1 to 8; 1 when
    there is none or it is out of range) and `end` (the byte count to decode:
    the whole file, or, for a GIF, up to the end of its first frame).
    """
    data = tf.concat([tf.io.decode_raw(image_bytes, tf.uint8), tf.zeros([_PADDING], tf.uint8)], axis=0)
    data = tf.cast(data, tf.int32)
    length = tf.size(data) - _PADDING
    reader = _Reader(data, length)
    branches = [lambda: _unknown(length), lambda: _jpeg(reader), lambda: _png(reader),
                lambda: _gif(reader), lambda: _bmp(reader), lambda: _webp(reader)]
    fields = tf.switch_case(_format(reader), branches)
    header = dict(zip(("format", "height", "width", "complete", "exif", "end", "status"), fields))
    header["orientation"] = _orientation(reader, header.pop("exif"))
    pixels = tf.cast(header["height"], tf.int64) * tf.cast(header["width"], tf.int64)
    status = header["status"]
    status = tf.where(tf.equal(status, OK) & tf.equal(pixels, 0), NOT_AN_IMAGE, status)
    if max_pixels is not None:
        status = tf.where(tf.equal(status, OK) & (pixels > max_pixels), OVER_MAX_PIXELS, status)
    header["status"] = tf.where(tf.equal(length, 0), EMPTY, status)
    return header


class _Reader:
    """Fixed-width integers at byte offsets of the (zero-padded) data; offsets past the end read zeros.

    Each read is one gather of all its bytes and one weighted sum: the header
    parse is traced into every exported signature, so its op count is the
    export's tracing time and the served model's first-call time.
    """

    def __init__(self, data, length):
        self.data = data
        self.length = length
        self.last = length + _PADDING - 1

    def _bytes(self, offset, width):
        """int32 [..., width]: the `width` bytes from `offset` (a scalar or a vector of offsets)."""
        positions = tf.expand_dims(offset, -1) + tf.range(width)
        return tf.gather(self.data, tf.clip_by_value(positions, 0, self.last))

    def byte(self, offset):
        """The byte at `offset` (a scalar or a vector of offsets) as int32."""
        return tf.gather(self.data, tf.clip_by_value(offset, 0, self.last))

    def bytes_equal(self, offset, expected):
        return tf.reduce_all(tf.equal(self._bytes(offset, len(expected)), tf.constant(list(expected), tf.int32)))

    def big_endian(self, offset, width):
        # int32 arithmetic wraps, so 4 bytes from 0x80 up read negative, as in the byte-by-byte sum.
        weights = tf.constant([256 ** power for power in reversed(range(width))], tf.int64)
        return tf.cast(tf.reduce_sum(tf.cast(self._bytes(offset, width), tf.int64) * weights, -1), tf.int32)

    def little_endian(self, offset, width):
        weights = tf.constant([256 ** power for power in range(width)], tf.int64)
        return tf.cast(tf.reduce_sum(tf.cast(self._bytes(offset, width), tf.int64) * weights, -1), tf.int32)

    def fits(self, end):
        """True when the data holds `end` bytes."""
        return end <= self.length


def _format(reader):
    jpeg = reader.bytes_equal(0, b"\xff\xd8\xff")
    png = reader.bytes_equal(0, b"\x89PNG\r\n\x1a\n")
    gif = reader.bytes_equal(0, b"GIF87a") | reader.bytes_equal(0, b"GIF89a")
    bmp = reader.bytes_equal(0, b"BM")
    webp = reader.bytes_equal(0, b"RIFF") & reader.bytes_equal(8, b"WEBP")
    found = tf.stack([jpeg, png, gif, bmp, webp])
    return tf.where(tf.reduce_any(found), tf.cast(tf.argmax(tf.cast(found, tf.int32)), tf.int32) + 1, 0)


def _fields(format, height, width, complete, exif, end, status):
    return tuple(tf.cast(value, tf.int32) for value in (format, height, width, complete, exif, end, status))


def _unknown(length):
    return _fields(0, 0, 0, 0, NO_EXIF, length, NOT_AN_IMAGE)


def _jpeg(reader):
    """Walks the segments up to the first SOS: size from the first SOF, EXIF from the first Exif APP1."""
    sof_markers = tf.constant([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])

    def walking(position, count, height, width, exif, found_scan, broken):
        return (count < _MAX_MARKERS) & tf.logical_not(found_scan | broken)

    def step(position, count, height, width, exif, found_scan, broken):
        marker = reader.byte(position + 1)
        fill = tf.equal(marker, 0xFF)
        standalone = tf.equal(marker, 0x01) | ((marker >= 0xD0) & (marker <= 0xD7))
        segment = reader.big_endian(position + 2, 2)
        is_sof = tf.reduce_any(tf.equal(marker, sof_markers)) & tf.equal(height, 0) & tf.equal(width, 0)
        height = tf.where(is_sof, reader.big_endian(position + 5, 2), height)
        width = tf.where(is_sof, reader.big_endian(position + 7, 2), width)
        is_exif = tf.equal(marker, 0xE1) & tf.equal(exif, NO_EXIF) & reader.bytes_equal(position + 4, b"Exif\0\0")
        exif = tf.where(is_exif, position + 10, exif)
        advance = tf.where(fill, 1, tf.where(standalone, 2, 2 + segment))
        broken = (tf.not_equal(reader.byte(position), 0xFF) | tf.logical_not(reader.fits(position + 4))
                  | (tf.logical_not(fill | standalone) & (segment < 2)))
        return position + advance, count + 1, height, width, exif, tf.equal(marker, 0xDA) & ~broken, broken

    start = (tf.constant(2), tf.constant(0), tf.constant(0), tf.constant(0), tf.constant(NO_EXIF),
             tf.constant(False), tf.constant(False))
    position, _, height, width, exif, found_scan, _ = tf.while_loop(walking, step, start)
    ends = reader.bytes_equal(reader.length - 2, b"\xff\xd9")
    status = tf.where(found_scan, OK, tf.where(reader.fits(position + 4), CORRUPT, TRUNCATED))
    return _fields(JPEG, height, width, ends, exif, reader.length, status)


def _png(reader):
    """IHDR's size; an eXIf chunk before the first IDAT; IEND at the end."""
    has_ihdr = reader.bytes_equal(12, b"IHDR")
    width = reader.big_endian(16, 4)
    height = reader.big_endian(20, 4)

    def walking(position, count, exif, done):
        return (count < _MAX_MARKERS) & tf.logical_not(done)

    def step(position, count, exif, done):
        size = reader.big_endian(position, 4)
        is_exif = reader.bytes_equal(position + 4, b"eXIf") & tf.equal(exif, NO_EXIF)
        exif = tf.where(is_exif, position + 8, exif)
        done = (reader.bytes_equal(position + 4, b"IDAT") | tf.logical_not(reader.fits(position + 12))
                | (size < 0))
        return position + 12 + tf.maximum(size, 0), count + 1, exif, done

    _, _, exif, _ = tf.while_loop(walking, step, (tf.constant(8), tf.constant(0), tf.constant(NO_EXIF),
                                                  tf.constant(False)))
    ends = reader.bytes_equal(reader.length - 8, b"IEND")
    status = tf.where(~reader.fits(24), TRUNCATED, tf.where(has_ihdr, OK, CORRUPT))
    # A width or height of 2**31 or more reads negative: treat it as the huge size it is.
    huge = (width < 0) | (height < 0)
    return _fields(PNG, tf.where(huge, 65535, height), tf.where(huge, 65535, width), ends, exif, reader.length,
                   status)


def _gif(reader):
    """The logical screen's size; the byte count up to the end of the first frame (then a trailer is added)."""
    width = reader.little_endian(6, 2)
    height = reader.little_endian(8, 2)
    flags = reader.byte(10)
    colour_table = tf.where(flags >= 128, 3 * tf.bitwise.left_shift(2, tf.bitwise.bitwise_and(flags, 7)), 0)

    # States: 0 at a block's first byte, 1 in an extension's sub-blocks, 2 in the first image's sub-blocks.
    def walking(position, state, done, broken):
        return tf.logical_not(done | broken)

    def step(position, state, done, broken):
        introducer = reader.byte(position)
        local_flags = reader.byte(position + 9)
        local_table = tf.where(local_flags >= 128, 3 * tf.bitwise.left_shift(2, tf.bitwise.bitwise_and(local_flags, 7)), 0)
        at_block = tf.equal(state, 0)
        block_size = reader.byte(position)
        next_position = tf.where(
            at_block,
            tf.where(tf.equal(introducer, 0x21), position + 2, position + 10 + local_table + 1),
            position + 1 + block_size,
        )
        next_state = tf.where(
            at_block,
            tf.where(tf.equal(introducer, 0x21), 1, 2),
            tf.where(tf.equal(block_size, 0), tf.where(tf.equal(state, 2), 3, 0), state),
        )
        broken = (tf.logical_not(reader.fits(position + 1))
                  | (at_block & tf.logical_not(tf.equal(introducer, 0x21) | tf.equal(introducer, 0x2C))))
        return next_position, tf.minimum(next_state, 2), tf.equal(next_state, 3) & ~broken, broken

    start = (13 + colour_table, tf.constant(0), tf.constant(False), tf.constant(False))
    end, _, done, _ = tf.while_loop(walking, step, start)
    ends = tf.equal(reader.byte(reader.length - 1), 0x3B)
    status = tf.where(done, OK, tf.where(ends, CORRUPT, TRUNCATED))
    return _fields(GIF, height, width, ends, NO_EXIF, tf.where(done, end, reader.length), status)


def _bmp(reader):
    """The info header's size; complete when the pixel rows an uncompressed file announces are all there."""
    header_size = reader.little_endian(14, 4)
    core = tf.equal(header_size, 12)
    width = tf.where(core, reader.little_endian(18, 2), reader.little_endian(18, 4))
    height = tf.where(core, reader.little_endian(20, 2), reader.little_endian(22, 4))
    height = tf.abs(height)  # negative for rows stored top-down
    bits = tf.where(core, reader.little_endian(24, 2), reader.little_endian(28, 2))
    compression = tf.where(core, 0, reader.little_endian(30, 4))
    pixel_offset = reader.little_endian(10, 4)
    row_bytes = tf.cast((tf.cast(bits, tf.int64) * tf.cast(width, tf.int64) + 31) // 32 * 4, tf.int64)
    needed = tf.cast(pixel_offset, tf.int64) + row_bytes * tf.cast(height, tf.int64)
    complete = tf.where(tf.equal(compression, 0), needed <= tf.cast(reader.length, tf.int64), True)
    known = (header_size >= 12) & (width >= 0)
    status = tf.where(known & complete, OK, tf.where(known, TRUNCATED, CORRUPT))
    return _fields(BMP, height, tf.where(width < 0, 0, width), complete, NO_EXIF, reader.length, status)


def _webp(reader):
    """VP8 / VP8L / VP8X sizes; the EXIF chunk of an extended file; complete when RIFF's size is all there."""
    lossy = reader.bytes_equal(12, b"VP8 ")
    lossless = reader.bytes_equal(12, b"VP8L")
    extended = reader.bytes_equal(12, b"VP8X")
    lossless_bits = reader.little_endian(21, 4)
    width = tf.where(lossy, tf.bitwise.bitwise_and(reader.little_endian(26, 2), 0x3FFF),
                     tf.where(lossless, tf.bitwise.bitwise_and(lossless_bits, 0x3FFF) + 1,
                              reader.little_endian(24, 3) + 1))
    height = tf.where(lossy, tf.bitwise.bitwise_and(reader.little_endian(28, 2), 0x3FFF),
                      tf.where(lossless, tf.bitwise.bitwise_and(tf.bitwise.right_shift(lossless_bits, 14), 0x3FFF) + 1,
                               reader.little_endian(27, 3) + 1))

    def walking(position, count, exif):
        return (count < _MAX_MARKERS) & tf.equal(exif, NO_EXIF) & reader.fits(position + 8)

    def step(position, count, exif):
        size = reader.little_endian(position + 4, 4)
        is_exif = reader.bytes_equal(position, b"EXIF")
        # Some writers put Exif's JPEG prefix "Exif\0\0" before the TIFF header; Pillow accepts both.
        prefixed = reader.bytes_equal(position + 8, b"Exif\0\0")
        exif = tf.where(is_exif, tf.where(prefixed, position + 14, position + 8), exif)
        return position + 8 + size + tf.bitwise.bitwise_and(size, 1), count + 1, exif

    _, _, exif = tf.while_loop(walking, step, (tf.constant(12), tf.constant(0), tf.constant(NO_EXIF)))
    exif = tf.where(extended, exif, NO_EXIF)
    complete = reader.fits(reader.little_endian(4, 4) + 8)
    known = lossy | lossless | extended
    status = tf.where(known & complete, OK, tf.where(known | ~reader.fits(30), TRUNCATED, CORRUPT))
    return _fields(WEBP, height, width, complete, exif, reader.length, status)


def _orientation(reader, tiff):
    """EXIF's orientation tag (0x0112) from the first image directory of the TIFF block at `tiff`."""
    little = reader.bytes_equal(tiff, b"II*\0")
    big = reader.bytes_equal(tiff, b"MM\0*")

    def number(offset, width):
        return tf.where(little, reader.little_endian(offset, width), reader.big_endian(offset, width))

    directory = tiff + number(tiff + 4, 4)
    count = tf.clip_by_value(number(directory, 2), 0, _MAX_MARKERS)
    entries = directory + 2 + 12 * tf.range(_MAX_MARKERS)
    tags = tf.where(little, reader.little_endian(entries, 2), reader.big_endian(entries, 2))
    values = tf.where(little, reader.little_endian(entries + 8, 2), reader.big_endian(entries + 8, 2))
    wanted = tf.equal(tags, 0x0112) & (tf.range(_MAX_MARKERS) < count) & reader.fits(entries + 10)
    value = tf.where(tf.reduce_any(wanted), tf.gather(values, tf.argmax(tf.cast(wanted, tf.int32))), 1)
    readable = (little | big) & tf.not_equal(tiff, NO_EXIF) & (directory > tiff)
    return tf.where(readable & (value >= 1) & (value <= 8), value, 1)
