"""What an encoded image's header says, read in the graph before anything is decoded.

A served model takes bytes from whoever calls it. TensorFlow's decoders
allocate the pixels a header announces and fail the whole batch on a broken
file, and no TF op reads a size without decoding (except for JPEG). So the
header is read first, with plain tensor ops on the bytes:
the format from its magic bytes; width and height from PNG's IHDR, GIF's
logical screen, BMP's info header or WebP's VP8/VP8L/VP8X chunk (the same
fields the decoders allocate by, so a forged size cannot get past the pixel
budget); whether the file carries its end marker; EXIF's orientation tag;
and, for GIF, where the first frame ends (TensorFlow's GIF decoder decodes
every frame, so a served graph should cut the file after the first one,
which is all training uses). A JPEG's size is left to libjpeg's own header
read (`jpeg_size`), the one its decoder allocates by: it is one op instead
of a walk over the segments, but it fails on a malformed header, so the
serving decode calls it where a failure costs only that image.

The serving signatures (`imgpipe.engine.serving`) read every image's header
before decoding any, and answer a per-image `status` from it. Everything is
sized for a one-image request, where each graph op's fixed cost (about a
microsecond) is what a request pays:
- the whole batch is read at once, and a read is a `substr` of each image's
  bytes (a file is never copied whole: a 3.5 MB photo's three copies cost
  2 ms);
- every format's fixed fields come from one read of each image's first 40
  bytes and one of its last 8;
- a walk (JPEG segments, PNG and WebP chunks, GIF blocks) is one while loop
  that steps all images together, and runs only when needed: for EXIF, only
  when the bytes it looks for ("Exif\\0\\0", "eXIf") occur in a file, which
  one substring search tells for a file under `_SEARCHED_BYTES` (most photos
  from the web carry no EXIF).

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
_STOPPED = -2  # a JPEG walk that reached the image data (or a broken segment) without finding EXIF
_HEAD_BYTES = 40  # every format's fixed fields lie in a file's first 40 bytes
_MAX_MARKERS = 512  # JPEG segments (or PNG / WebP chunks) walked before the image data; real files have < 30
# Files up to this size are searched for EXIF's bytes before walking; a longer one is walked (a few
# segments, 0.3 ms) rather than searched (1 ms for 3.5 MB: the search copies what it reads).
_SEARCHED_BYTES = 256 * 1024
# Steps a walk takes per iteration of its while loop: an iteration's fixed cost is that of a few steps.
_STEPS_PER_ITERATION = 4


def status_reasons(max_pixels):
    """The `status` string of each code, in code order."""
    return ["ok", "empty", "not an image", "truncated", f"over max_pixels {max_pixels}", "corrupt"]


def jpeg_size(encoded):
    """int32 [height, width] of one JPEG, as libjpeg reads its header (the size its decoder allocates).

    Fails on a malformed header: call it only where a failure is caught, as in
    the serving decode's tf.data map, which drops that image alone.

    Example:
        >>> jpeg_size(tf.constant(jpeg_bytes)).numpy().tolist()
        [480, 640]
    """
    return tf.image.extract_jpeg_shape(encoded)[:2]


@tf.autograph.experimental.do_not_convert
def read_headers(image_bytes, max_pixels=None):
    """A batch of encoded images (string [B]) -> dict of int32 [B] describing each, nothing decoded.

    Keys (`FIELDS`): `status` (a code above: OK, EMPTY, NOT_AN_IMAGE, TRUNCATED
    or OVER_MAX_PIXELS), `format` (JPEG, PNG, GIF, BMP, WEBP or 0), `height`,
    `width` (as stored, before any EXIF rotation; 0 for a JPEG, whose size
    `jpeg_size` reads and whose pixel budget the caller checks with it),
    `complete` (1 if the end marker is there), `orientation` (EXIF's
    orientation tag, 1 to 8; 1 when there is none or it is out of range) and
    `end` (the byte count to decode: the whole file, or, for a GIF, up to the
    end of its first frame).
    """
    reader = _Reader(image_bytes)
    format = _format(reader.head)
    read = [_unknown(reader)] + [parse(reader, tf.equal(format, code)) for code, parse in (
        (JPEG, _jpeg), (PNG, _png), (GIF, _gif), (BMP, _bmp), (WEBP, _webp))]
    header = {name: tf.gather(tf.stack([reader.per_image(values[name]) for values in read], axis=1), format,
                              batch_dims=1)
              for name in ("height", "width", "complete", "exif", "end", "status")}
    header["format"] = format
    header["orientation"] = _orientation(reader, header.pop("exif"))
    pixels = tf.cast(header["height"], tf.int64) * tf.cast(header["width"], tf.int64)
    sized = tf.equal(header["status"], OK) & tf.not_equal(format, JPEG)
    status = tf.where(sized & tf.equal(pixels, 0), NOT_AN_IMAGE, header["status"])
    if max_pixels is not None:
        status = tf.where(sized & (pixels > max_pixels), OVER_MAX_PIXELS, status)
    header["status"] = tf.where(tf.equal(reader.length, 0), EMPTY, status)
    return {key: header[key] for key in FIELDS}


class _Reader:
    """Fixed-width integers at byte offsets of each image of a batch; offsets past an image's end read zeros.

    An offset is a tensor whose first axis is the batch ([B] or [B, K]); a
    read is one `substr` of each image's bytes and one zero-padded
    `decode_raw`, for the whole batch. `head` and `tail` are every image's
    first `_HEAD_BYTES` and last 8 bytes, as int32 [B, n].
    """

    def __init__(self, image_bytes):
        self.image_bytes = image_bytes
        self.length = tf.strings.length(image_bytes)
        self.head = self.bytes_at(0, _HEAD_BYTES)
        self.tail = self.bytes_at(self.length - 8, 8)

    def per_image(self, value):
        """An int or bool scalar or [B] tensor as int32 [B]."""
        value = tf.cast(value, tf.int32)
        return value if value.shape.rank == 1 else tf.fill(tf.shape(self.length), value)

    def _batched(self, offset):
        """An offset for every image: a Python int or scalar becomes [B]."""
        offset = tf.convert_to_tensor(offset, tf.int32)
        return tf.broadcast_to(offset, tf.shape(self.length)) if offset.shape.rank == 0 else offset

    def bytes_at(self, offset, width):
        """int32 [B, ..., width]: the `width` bytes from `offset` (a negative offset reads from 0)."""
        offset = self._batched(offset)
        images, length = self.image_bytes, self.length
        if offset.shape.rank == 2:
            images, length = images[:, None], length[:, None]
        start = tf.clip_by_value(offset, 0, length)
        read = tf.strings.substr(images, start, tf.fill(tf.shape(start), width))
        return tf.cast(tf.io.decode_raw(read, tf.uint8, fixed_length=width), tf.int32)

    def fits(self, end):
        """True where the data holds `end` bytes."""
        end = self._batched(end)
        return end <= (self.length if end.shape.rank == 1 else self.length[:, None])

    def contains(self, pattern, searched):
        """True where `searched` (bool [B]) and the image's bytes hold `pattern` anywhere.

        One substring search, no loop; it copies what it reads, so only the searched images are read.
        """
        read = tf.strings.substr(self.image_bytes, tf.zeros_like(self.length), tf.where(searched, self.length, 0))
        return searched & (tf.strings.split(read, sep=pattern, maxsplit=1).row_lengths() > 1)

    def fill(self, value):
        """int32 [B] of `value`."""
        return tf.fill(tf.shape(self.length), tf.constant(value, tf.int32))


def _equal(read, expected):
    """True where the bytes `read` ([B, ..., n]) are `expected` (n bytes)."""
    return tf.reduce_all(tf.equal(read, tf.constant(list(expected), tf.int32)), -1)


def _big_endian(read):
    # int32 arithmetic wraps, so 4 bytes from 0x80 up read negative, as in the byte-by-byte sum.
    weights = tf.constant([256 ** power for power in reversed(range(read.shape[-1]))], tf.int64)
    return tf.cast(tf.reduce_sum(tf.cast(read, tf.int64) * weights, -1), tf.int32)


def _little_endian(read):
    weights = tf.constant([256 ** power for power in range(read.shape[-1])], tf.int64)
    return tf.cast(tf.reduce_sum(tf.cast(read, tf.int64) * weights, -1), tf.int32)


def _walk(walking, step, start):
    """Steps every image's state (a tuple of [B] tensors) while `walking` holds for it; the others stay put."""

    def steps(*state):
        for _ in range(_STEPS_PER_ITERATION):
            moving = walking(*state)
            state = tuple(tf.where(moving, moved, kept) for moved, kept in zip(step(*state), state))
        return state

    return tf.while_loop(lambda *state: tf.reduce_any(walking(*state)), steps, start)


def _walked(needed, walk, otherwise):
    """`walk()` if any image of the batch `needed` it, else `otherwise` (a one-image request skips its ops)."""
    return tf.cond(tf.reduce_any(needed), walk, lambda: otherwise)


def _format(head):
    jpeg = _equal(head[:, :3], b"\xff\xd8\xff")
    png = _equal(head[:, :8], b"\x89PNG\r\n\x1a\n")
    gif = _equal(head[:, :6], b"GIF87a") | _equal(head[:, :6], b"GIF89a")
    bmp = _equal(head[:, :2], b"BM")
    webp = _equal(head[:, :4], b"RIFF") & _equal(head[:, 8:12], b"WEBP")
    found = tf.stack([jpeg, png, gif, bmp, webp], axis=-1)
    return tf.where(tf.reduce_any(found, -1), tf.cast(tf.argmax(tf.cast(found, tf.int32), -1), tf.int32) + 1, 0)


def _unknown(reader):
    return dict(height=0, width=0, complete=0, exif=NO_EXIF, end=reader.length, status=NOT_AN_IMAGE)


def _jpeg(reader, mine):
    """EXIF's position and the end marker; the size and the segments' validity are libjpeg's (`jpeg_size`)."""
    short = reader.length <= _SEARCHED_BYTES
    tagged = reader.contains(b"Exif\0\0", mine & short) | (mine & ~short)
    exif = _walked(tagged, lambda: _jpeg_exif(reader, tagged), reader.fill(NO_EXIF))
    return dict(height=0, width=0, complete=_equal(reader.tail[:, 6:], b"\xff\xd9"), exif=exif, end=reader.length,
                status=OK)


def _jpeg_exif(reader, tagged):
    """Walks the segments to the first Exif APP1 (its TIFF block's offset) or to the first SOS (NO_EXIF)."""

    def walking(position, count, exif):
        return (count < _MAX_MARKERS) & tf.equal(exif, NO_EXIF)

    def step(position, count, exif):
        read = reader.bytes_at(position, 10)  # FF, marker, length (2), then "Exif\0\0" in an Exif APP1
        marker = read[:, 1]
        fill = tf.equal(marker, 0xFF)
        standalone = tf.equal(marker, 0x01) | ((marker >= 0xD0) & (marker <= 0xD7))
        segment = read[:, 2] * 256 + read[:, 3]
        broken = (tf.not_equal(read[:, 0], 0xFF) | tf.logical_not(reader.fits(position + 4))
                  | (tf.logical_not(fill | standalone) & (segment < 2)))
        is_exif = tf.equal(marker, 0xE1) & _equal(read[:, 4:], b"Exif\0\0") & ~broken
        stop = broken | tf.equal(marker, 0xDA)
        exif = tf.where(is_exif, position + 10, tf.where(stop, _STOPPED, exif))
        return position + tf.where(fill, 1, tf.where(standalone, 2, 2 + segment)), count + 1, exif

    start = (reader.fill(2), tf.where(tagged, 0, _MAX_MARKERS), reader.fill(NO_EXIF))
    _, _, exif = _walk(walking, step, start)
    return tf.where(tf.equal(exif, _STOPPED), NO_EXIF, exif)


def _png(reader, mine):
    """IHDR's size; an eXIf chunk before the first IDAT; IEND at the end."""
    head = reader.head
    width, height = _big_endian(head[:, 16:20]), _big_endian(head[:, 20:24])

    def walking(position, count, exif, done):
        return (count < _MAX_MARKERS) & tf.logical_not(done) & tf.equal(exif, NO_EXIF)

    def step(position, count, exif, done):
        read = reader.bytes_at(position, 8)  # a chunk's length and type
        size = _big_endian(read[:, :4])
        exif = tf.where(_equal(read[:, 4:], b"eXIf"), position + 8, exif)
        done = _equal(read[:, 4:], b"IDAT") | tf.logical_not(reader.fits(position + 12)) | (size < 0)
        return position + 12 + tf.maximum(size, 0), count + 1, exif, done

    short = reader.length <= _SEARCHED_BYTES
    tagged = reader.contains(b"eXIf", mine & short) | (mine & ~short)
    exif = _walked(tagged, lambda: _walk(walking, step, (reader.fill(8), reader.fill(0), reader.fill(NO_EXIF),
                                                         ~tagged))[2], reader.fill(NO_EXIF))
    status = tf.where(~reader.fits(24), TRUNCATED, tf.where(_equal(head[:, 12:16], b"IHDR"), OK, CORRUPT))
    # A width or height of 2**31 or more reads negative: treat it as the huge size it is.
    huge = (width < 0) | (height < 0)
    return dict(height=tf.where(huge, 65535, height), width=tf.where(huge, 65535, width),
                complete=_equal(reader.tail[:, :4], b"IEND"), exif=exif, end=reader.length, status=status)


def _colour_table_size(flags):
    return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(2, tf.bitwise.bitwise_and(flags, 7)), 0)


def _gif(reader, mine):
    """The logical screen's size; the byte count up to the end of the first frame (then a trailer is added)."""

    # States: 0 at a block's first byte, 1 in an extension's sub-blocks, 2 in the first image's sub-blocks.
    def walking(position, state, done, broken):
        return tf.logical_not(done | broken)

    def step(position, state, done, broken):
        read = reader.bytes_at(position, 10)
        introducer = read[:, 0]  # also a sub-block's size
        local_table = _colour_table_size(read[:, 9])
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

    def walk():
        start = (13 + _colour_table_size(reader.head[:, 10]), reader.fill(0), tf.zeros_like(mine), ~mine)
        end, _, done, _ = _walk(walking, step, start)
        return end, done

    end, done = _walked(mine, walk, (reader.length, tf.zeros_like(mine)))
    ends = tf.equal(reader.tail[:, 7], 0x3B)
    return dict(height=_little_endian(reader.head[:, 8:10]), width=_little_endian(reader.head[:, 6:8]),
                complete=ends, exif=NO_EXIF, end=tf.where(done, end, reader.length),
                status=tf.where(done, OK, tf.where(ends, CORRUPT, TRUNCATED)))


def _bmp(reader, mine):
    """The info header's size; complete when the pixel rows an uncompressed file announces are all there."""
    head = reader.head
    header_size = _little_endian(head[:, 14:18])
    core = tf.equal(header_size, 12)
    width = tf.where(core, _little_endian(head[:, 18:20]), _little_endian(head[:, 18:22]))
    height = tf.where(core, _little_endian(head[:, 20:22]), _little_endian(head[:, 22:26]))
    height = tf.abs(height)  # negative for rows stored top-down
    bits = tf.where(core, _little_endian(head[:, 24:26]), _little_endian(head[:, 28:30]))
    compression = tf.where(core, 0, _little_endian(head[:, 30:34]))
    pixel_offset = _little_endian(head[:, 10:14])
    row_bytes = tf.cast((tf.cast(bits, tf.int64) * tf.cast(width, tf.int64) + 31) // 32 * 4, tf.int64)
    needed = tf.cast(pixel_offset, tf.int64) + row_bytes * tf.cast(height, tf.int64)
    complete = tf.where(tf.equal(compression, 0), needed <= tf.cast(reader.length, tf.int64), True)
    known = (header_size >= 12) & (width >= 0)
    return dict(height=height, width=tf.where(width < 0, 0, width), complete=complete, exif=NO_EXIF,
                end=reader.length, status=tf.where(known & complete, OK, tf.where(known, TRUNCATED, CORRUPT)))


def _webp(reader, mine):
    """VP8 / VP8L / VP8X sizes; the EXIF chunk of an extended file; complete when RIFF's size is all there."""
    head = reader.head
    lossy = _equal(head[:, 12:16], b"VP8 ")
    lossless = _equal(head[:, 12:16], b"VP8L")
    extended = _equal(head[:, 12:16], b"VP8X")
    lossless_bits = _little_endian(head[:, 21:25])
    width = tf.where(lossy, tf.bitwise.bitwise_and(_little_endian(head[:, 26:28]), 0x3FFF),
                     tf.where(lossless, tf.bitwise.bitwise_and(lossless_bits, 0x3FFF) + 1,
                              _little_endian(head[:, 24:27]) + 1))
    height = tf.where(lossy, tf.bitwise.bitwise_and(_little_endian(head[:, 28:30]), 0x3FFF),
                      tf.where(lossless, tf.bitwise.bitwise_and(tf.bitwise.right_shift(lossless_bits, 14), 0x3FFF) + 1,
                               _little_endian(head[:, 27:30]) + 1))

    def walking(position, count, exif):
        return (count < _MAX_MARKERS) & tf.equal(exif, NO_EXIF) & reader.fits(position + 8)

    def step(position, count, exif):
        read = reader.bytes_at(position, 14)  # a chunk's type and size, then maybe Exif's JPEG prefix
        size = _little_endian(read[:, 4:8])
        # Some writers put Exif's JPEG prefix "Exif\0\0" before the TIFF header; Pillow accepts both.
        exif = tf.where(_equal(read[:, :4], b"EXIF"),
                        tf.where(_equal(read[:, 8:], b"Exif\0\0"), position + 14, position + 8), exif)
        return position + 8 + size + tf.bitwise.bitwise_and(size, 1), count + 1, exif

    walked = mine & extended  # only an extended file has chunks beyond its first
    exif = _walked(walked, lambda: _walk(walking, step, (reader.fill(12), tf.where(walked, 0, _MAX_MARKERS),
                                                         reader.fill(NO_EXIF)))[2], reader.fill(NO_EXIF))
    complete = reader.fits(_little_endian(head[:, 4:8]) + 8)
    known = lossy | lossless | extended
    status = tf.where(known & complete, OK, tf.where(known | ~reader.fits(30), TRUNCATED, CORRUPT))
    return dict(height=height, width=width, complete=complete, exif=tf.where(extended, exif, NO_EXIF),
                end=reader.length, status=status)


def _orientation(reader, tiff):
    """EXIF's orientation tag (0x0112) from the first image directory of the TIFF block at `tiff`."""
    return _walked(tf.not_equal(tiff, NO_EXIF), lambda: _orientation_tag(reader, tiff), reader.fill(1))


def _orientation_tag(reader, tiff):
    start = reader.bytes_at(tiff, 8)  # byte order, 42, the first directory's offset
    little = _equal(start[:, :4], b"II*\0")
    big = _equal(start[:, :4], b"MM\0*")

    def number(read):
        order = little if read.shape.rank == 2 else little[:, None]
        return tf.where(order, _little_endian(read), _big_endian(read))

    directory = tiff + number(start[:, 4:])
    count = tf.clip_by_value(number(reader.bytes_at(directory, 2)), 0, _MAX_MARKERS)
    slots = tf.range(tf.maximum(tf.reduce_max(count), 1))  # as many entries as the longest directory has
    entries = directory[:, None] + 2 + 12 * slots
    entry = reader.bytes_at(entries, 10)  # tag (2), type (2), count (4), value (2 of 4)
    tags, values = number(entry[..., :2]), number(entry[..., 8:])
    wanted = tf.equal(tags, 0x0112) & (slots < count[:, None]) & reader.fits(entries + 10)
    first = tf.gather(values, tf.argmax(tf.cast(wanted, tf.int32), -1, output_type=tf.int32), batch_dims=1)
    value = tf.where(tf.reduce_any(wanted, -1), first, 1)
    readable = (little | big) & tf.not_equal(tiff, NO_EXIF) & (directory > tiff)
    return tf.where(readable & (value >= 1) & (value <= 8), value, 1)
