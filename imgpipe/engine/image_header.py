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
before decoding any, and answer a per-image `status` from it. The whole batch
is read at once: every read is one gather over all images' bytes and every
walk (JPEG segments, PNG and WebP chunks, GIF blocks) one while loop that steps
all images together, so a request pays for the header ops once, not once per
image (a graph op costs microseconds whatever its size; a JPEG's walk is some
hundreds of them).

Example:
    >>> headers = read_headers(tf.constant([png_bytes, b"junk"]))
    >>> headers["status"].numpy().tolist(), headers["height"].numpy().tolist()
    ([0, 2], [480, 0])
"""

import tensorflow as tf

# Per-image status codes; `STATUS_REASONS` holds what the served `status` output says for each.
OK, EMPTY, NOT_AN_IMAGE, TRUNCATED, OVER_MAX_PIXELS, CORRUPT = range(6)
JPEG, PNG, GIF, BMP, WEBP = range(1, 6)
NO_EXIF = -1
FIELDS = ("status", "format", "height", "width", "complete", "orientation", "end")
_PADDING = 32  # zero bytes after each image's data, so a fixed-offset read past its end reads zeros
_MAX_MARKERS = 512  # JPEG segments (or PNG / WebP chunks) walked before the image data; real files have < 30
# Steps a walk takes per iteration of its while loop: an iteration's fixed cost is that of a few steps.
_STEPS_PER_ITERATION = 4


def status_reasons(max_pixels):
    """The `status` string of each code, in code order."""
    return ["ok", "empty", "not an image", "truncated", f"over max_pixels {max_pixels}", "corrupt"]


@tf.autograph.experimental.do_not_convert
def read_headers(image_bytes, max_pixels=None):
    """A batch of encoded images (string [B]) -> dict of int32 [B] describing each, nothing decoded.

    Keys (`FIELDS`): `status` (a code above: OK, EMPTY, NOT_AN_IMAGE, TRUNCATED
    or OVER_MAX_PIXELS), `format` (JPEG, PNG, GIF, BMP, WEBP or 0), `height`,
    `width` (as stored, before any EXIF rotation), `complete` (1 if the end
    marker is there), `orientation` (EXIF's orientation tag, 1 to 8; 1 when
    there is none or it is out of range) and `end` (the byte count to decode:
    the whole file, or, for a GIF, up to the end of its first frame).
    """
    reader = _Reader(image_bytes)
    format = _format(reader)
    fields = _unknown(reader)
    for code, read in ((JPEG, _jpeg), (PNG, _png), (GIF, _gif), (BMP, _bmp), (WEBP, _webp)):
        mine = tf.equal(format, code)
        # Only the formats a batch holds are read (a one-JPEG request skips the other four).
        found = tf.cond(tf.reduce_any(mine), lambda read=read, mine=mine: read(reader, mine),
                        lambda fields=fields: fields)
        fields = tuple(tf.where(mine, value, previous) for value, previous in zip(found, fields))
    header = dict(zip(("format", "height", "width", "complete", "exif", "end", "status"), fields))
    header["orientation"] = _orientation(reader, header.pop("exif"))
    pixels = tf.cast(header["height"], tf.int64) * tf.cast(header["width"], tf.int64)
    status = header["status"]
    status = tf.where(tf.equal(status, OK) & tf.equal(pixels, 0), NOT_AN_IMAGE, status)
    if max_pixels is not None:
        status = tf.where(tf.equal(status, OK) & (pixels > max_pixels), OVER_MAX_PIXELS, status)
    header["status"] = tf.where(tf.equal(reader.length, 0), EMPTY, status)
    return {key: header[key] for key in FIELDS}


class _Reader:
    """Fixed-width integers at byte offsets of each image of a batch; offsets past an image's end read zeros.

    The images are joined into one byte vector, each followed by `_PADDING`
    zeros; an offset is a tensor whose first axis is the batch ([B] or [B, K]),
    and every read is one gather and one weighted sum for the whole batch.
    """

    def __init__(self, image_bytes):
        self.length = tf.strings.length(image_bytes)
        padded = tf.strings.join([image_bytes, tf.constant(b"\0" * _PADDING)])
        self.data = tf.io.decode_raw(tf.strings.reduce_join(padded), tf.uint8)
        self.start = tf.cumsum(tf.cast(self.length + _PADDING, tf.int64), exclusive=True)
        self.last = self.length + _PADDING - 1

    def _per_image(self, value, like):
        """`value` [B] shaped to broadcast against `like` [B, ...]."""
        return tf.reshape(value, [-1] + [1] * (like.shape.rank - 1))

    def _gather(self, positions):
        clipped = tf.clip_by_value(positions, 0, self._per_image(self.last, positions))
        return tf.cast(tf.gather(self.data, tf.cast(clipped, tf.int64) + self._per_image(self.start, positions)),
                       tf.int32)

    def _batched(self, offset):
        """An offset for every image: a Python int or scalar becomes [B]."""
        offset = tf.convert_to_tensor(offset, tf.int32)
        return tf.broadcast_to(offset, tf.shape(self.length)) if offset.shape.rank == 0 else offset

    def bytes_at(self, offset, width):
        """int32 [B, ..., width]: the `width` bytes from `offset`."""
        return self._gather(tf.expand_dims(self._batched(offset), -1) + tf.range(width))

    def byte(self, offset):
        """The byte at `offset` as int32 [B, ...]."""
        return self._gather(self._batched(offset))

    def bytes_equal(self, offset, expected):
        return tf.reduce_all(tf.equal(self.bytes_at(offset, len(expected)), tf.constant(list(expected), tf.int32)), -1)

    def big_endian(self, offset, width):
        # int32 arithmetic wraps, so 4 bytes from 0x80 up read negative, as in the byte-by-byte sum.
        weights = tf.constant([256 ** power for power in reversed(range(width))], tf.int64)
        return tf.cast(tf.reduce_sum(tf.cast(self.bytes_at(offset, width), tf.int64) * weights, -1), tf.int32)

    def little_endian(self, offset, width):
        weights = tf.constant([256 ** power for power in range(width)], tf.int64)
        return tf.cast(tf.reduce_sum(tf.cast(self.bytes_at(offset, width), tf.int64) * weights, -1), tf.int32)

    def fits(self, end):
        """True where the data holds `end` bytes."""
        end = self._batched(end)
        return end <= self._per_image(self.length, end)

    def fill(self, value):
        """int32 [B] of `value`."""
        return tf.fill(tf.shape(self.length), tf.constant(value, tf.int32))


def _walk(walking, step, start):
    """Steps every image's state (a tuple of [B] tensors) while `walking` holds for it; the others stay put."""

    def steps(*state):
        for _ in range(_STEPS_PER_ITERATION):
            moving = walking(*state)
            state = tuple(tf.where(moving, moved, kept) for moved, kept in zip(step(*state), state))
        return state

    return tf.while_loop(lambda *state: tf.reduce_any(walking(*state)), steps, start)


def _format(reader):
    jpeg = reader.bytes_equal(0, b"\xff\xd8\xff")
    png = reader.bytes_equal(0, b"\x89PNG\r\n\x1a\n")
    gif = reader.bytes_equal(0, b"GIF87a") | reader.bytes_equal(0, b"GIF89a")
    bmp = reader.bytes_equal(0, b"BM")
    webp = reader.bytes_equal(0, b"RIFF") & reader.bytes_equal(8, b"WEBP")
    found = tf.stack([jpeg, png, gif, bmp, webp], axis=-1)
    return tf.where(tf.reduce_any(found, -1), tf.cast(tf.argmax(tf.cast(found, tf.int32), -1), tf.int32) + 1, 0)


def _fields(reader, format, height, width, complete, exif, end, status):
    return tuple(tf.broadcast_to(tf.cast(value, tf.int32), tf.shape(reader.length))
                 for value in (format, height, width, complete, exif, end, status))


def _unknown(reader):
    return _fields(reader, 0, 0, 0, 0, NO_EXIF, reader.length, NOT_AN_IMAGE)


def _jpeg(reader, mine):
    """Walks the segments up to the first SOS: size from the first SOF, EXIF from the first Exif APP1."""
    sof_markers = tf.constant([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])
    exif_signature = tf.constant(list(b"Exif\0\0"), tf.int32)

    def walking(position, count, height, width, exif, found_scan, broken):
        return (count < _MAX_MARKERS) & tf.logical_not(found_scan | broken)

    def step(position, count, height, width, exif, found_scan, broken):
        read = reader.bytes_at(position, 10)  # FF, marker, length (2), precision, height (2), width (2), ...
        marker = read[:, 1]
        fill = tf.equal(marker, 0xFF)
        standalone = tf.equal(marker, 0x01) | ((marker >= 0xD0) & (marker <= 0xD7))
        segment = read[:, 2] * 256 + read[:, 3]
        is_sof = (tf.reduce_any(tf.equal(marker[:, None], sof_markers), -1) & tf.equal(height, 0)
                  & tf.equal(width, 0))
        height = tf.where(is_sof, read[:, 5] * 256 + read[:, 6], height)
        width = tf.where(is_sof, read[:, 7] * 256 + read[:, 8], width)
        is_exif = (tf.equal(marker, 0xE1) & tf.equal(exif, NO_EXIF)
                   & tf.reduce_all(tf.equal(read[:, 4:], exif_signature), -1))
        exif = tf.where(is_exif, position + 10, exif)
        advance = tf.where(fill, 1, tf.where(standalone, 2, 2 + segment))
        broken = (tf.not_equal(read[:, 0], 0xFF) | tf.logical_not(reader.fits(position + 4))
                  | (tf.logical_not(fill | standalone) & (segment < 2)))
        return position + advance, count + 1, height, width, exif, tf.equal(marker, 0xDA) & ~broken, broken

    zero = reader.fill(0)
    start = (reader.fill(2), zero, zero, zero, reader.fill(NO_EXIF), tf.zeros_like(mine), ~mine)
    position, _, height, width, exif, found_scan, _ = _walk(walking, step, start)
    ends = reader.bytes_equal(reader.length - 2, b"\xff\xd9")
    status = tf.where(found_scan, OK, tf.where(reader.fits(position + 4), CORRUPT, TRUNCATED))
    return _fields(reader, JPEG, height, width, ends, exif, reader.length, status)


def _png(reader, mine):
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

    _, _, exif, _ = _walk(walking, step, (reader.fill(8), reader.fill(0), reader.fill(NO_EXIF), ~mine))
    ends = reader.bytes_equal(reader.length - 8, b"IEND")
    status = tf.where(~reader.fits(24), TRUNCATED, tf.where(has_ihdr, OK, CORRUPT))
    # A width or height of 2**31 or more reads negative: treat it as the huge size it is.
    huge = (width < 0) | (height < 0)
    return _fields(reader, PNG, tf.where(huge, 65535, height), tf.where(huge, 65535, width), ends, exif,
                   reader.length, status)


def _colour_table_size(flags):
    return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(2, tf.bitwise.bitwise_and(flags, 7)), 0)


def _gif(reader, mine):
    """The logical screen's size; the byte count up to the end of the first frame (then a trailer is added)."""
    width = reader.little_endian(6, 2)
    height = reader.little_endian(8, 2)

    # States: 0 at a block's first byte, 1 in an extension's sub-blocks, 2 in the first image's sub-blocks.
    def walking(position, state, done, broken):
        return tf.logical_not(done | broken)

    def step(position, state, done, broken):
        introducer = reader.byte(position)  # also a sub-block's size
        local_table = _colour_table_size(reader.byte(position + 9))
        at_block = tf.equal(state, 0)
        next_position = tf.where(
            at_block,
            tf.where(tf.equal(introducer, 0x21), position + 2, position + 10 + local_table + 1),
            position + 1 + introducer,
        )
        next_state = tf.where(
            at_block,
            tf.where(tf.equal(introducer, 0x21), 1, 2),
            tf.where(tf.equal(introducer, 0), tf.where(tf.equal(state, 2), 3, 0), state),
        )
        broken = (tf.logical_not(reader.fits(position + 1))
                  | (at_block & tf.logical_not(tf.equal(introducer, 0x21) | tf.equal(introducer, 0x2C))))
        return next_position, tf.minimum(next_state, 2), tf.equal(next_state, 3) & ~broken, broken

    start = (13 + _colour_table_size(reader.byte(10)), reader.fill(0), tf.zeros_like(mine), ~mine)
    end, _, done, _ = _walk(walking, step, start)
    ends = tf.equal(reader.byte(reader.length - 1), 0x3B)
    status = tf.where(done, OK, tf.where(ends, CORRUPT, TRUNCATED))
    return _fields(reader, GIF, height, width, ends, NO_EXIF, tf.where(done, end, reader.length), status)


def _bmp(reader, mine):
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
    return _fields(reader, BMP, height, tf.where(width < 0, 0, width), complete, NO_EXIF, reader.length, status)


def _webp(reader, mine):
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

    walked = mine & extended  # only an extended file has chunks beyond its first
    _, _, exif = _walk(walking, step, (reader.fill(12), tf.where(walked, 0, _MAX_MARKERS), reader.fill(NO_EXIF)))
    exif = tf.where(extended, exif, NO_EXIF)
    complete = reader.fits(reader.little_endian(4, 4) + 8)
    known = lossy | lossless | extended
    status = tf.where(known & complete, OK, tf.where(known | ~reader.fits(30), TRUNCATED, CORRUPT))
    return _fields(reader, WEBP, height, width, complete, exif, reader.length, status)


def _orientation(reader, tiff):
    """EXIF's orientation tag (0x0112) from the first image directory of the TIFF block at `tiff`."""
    little = reader.bytes_equal(tiff, b"II*\0")
    big = reader.bytes_equal(tiff, b"MM\0*")

    def number(offset, width):
        order = little if offset.shape.rank == 1 else little[:, None]
        return tf.where(order, reader.little_endian(offset, width), reader.big_endian(offset, width))

    directory = tiff + number(tiff + 4, 4)
    count = tf.clip_by_value(number(directory, 2), 0, _MAX_MARKERS)
    slots = tf.range(_MAX_MARKERS)
    entries = directory[:, None] + 2 + 12 * slots
    tags = number(entries, 2)
    values = number(entries + 8, 2)
    wanted = tf.equal(tags, 0x0112) & (slots < count[:, None]) & reader.fits(entries + 10)
    first = tf.gather(values, tf.argmax(tf.cast(wanted, tf.int32), -1, output_type=tf.int32), batch_dims=1)
    value = tf.where(tf.reduce_any(wanted, -1), first, 1)
    readable = (little | big) & tf.not_equal(tiff, NO_EXIF) & (directory > tiff)
    return tf.where(readable & (value >= 1) & (value <= 8), value, 1)
