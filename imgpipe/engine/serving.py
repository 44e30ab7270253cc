"""Graph-side image decoding for the exported serving signatures, safe on bytes from anyone.

TF Serving clients send encoded files; the SavedModel decodes JPEG, PNG, BMP,
GIF (first frame) and WebP itself, so the client needs no image library, and
prepares them exactly as the training reader (`imgpipe.data.images.load_image`)
does: EXIF orientation applied, alpha composited on white, a JPEG decoded at
the same reduced DCT scale, and every image shrunk by the same area average
(`imgpipe.engine.pipeline.resize_uint8`), so the model sees the pixels it was
trained on.

Every image's header is read first (`imgpipe.engine.image_header`), and only
those that pass are decoded: an empty file, a file that is not an image, or
one whose header announces more pixels than the budget is refused before a
byte of it is decoded. A JPEG's size is read by libjpeg's own header parser
in the decode step (`image_header.jpeg_size`), and its budget checked there,
before its pixels are decoded. A graph cannot catch an op's error, but a
tf.data pipeline can drop the elements whose decode failed
(`ignore_errors`), so the decodes run as a small dataset inside the
signature, and a truncated or corrupt file costs only its own answer. Each
image gets a status code (`image_header.OK` or a reason), and
`status_strings` turns them into the `status` output every signature
returns.

Example:
    >>> batch = decode_batch(tf.constant([png_bytes, b"junk"]), [64, 64], max_pixels=25_000_000)
    >>> batch.status.numpy().tolist()
    [0, 2]
"""

import collections
import functools

import tensorflow as tf

from imgpipe.engine import image_header
from imgpipe.engine.image_header import GIF, JPEG, OK, OVER_MAX_PIXELS, jpeg_size, read_headers, status_reasons
from imgpipe.engine.pipeline import DCT_SCALES, decode_jpeg_scaled, resize_uint8

DecodedBatch = collections.namedtuple("DecodedBatch", ["images", "sizes", "status"])
DecodedBatch.__doc__ = """Decoded images: `images` (uint8 or float32 [B, H, W, 3] at a size; at each image's
own size, uint8 [B, N] with each image's H * W * 3 pixels first), zeros where refused; `sizes` (int32 [B, 2]
upright original height and width; 0 where refused); `status` (int32 [B] codes)."""


def _dataset_options():
    """No tf.data graph rewrites or autotuning for a pipeline of one batch that is built at every request.

    Measured once by hand: the first call of a new signature went from 1.8 s to 1.3 s with them off.
    """
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False
    return options


_DATASET_OPTIONS = _dataset_options()
NOT_DECODED = -1  # the decode step's code for an image whose decode failed (the tf.data map dropped it)
_PACKED = ("position", "format", "height", "width", "orientation", "end")  # header fields the decode step needs


def status_strings(status, max_pixels):
    """int32 status codes -> the `status` output's strings ("ok", "truncated", "over max_pixels N", ...)."""
    return tf.gather(tf.constant(status_reasons(max_pixels)), status)


def with_status(answers, status, max_pixels, neutral=None):
    """A signature's answers with a `status` output, and a neutral answer wherever an image was refused.

    Args:
        answers: {output: tensor [B, ...]} computed for the whole batch (refused images were zeros).
        status: int32 [B] codes from `decode_batch`.
        neutral: {output: value} for refused images; default 0, or "" for strings.
    """
    neutral = neutral or {}
    answered = tf.equal(status, OK)
    result = {}
    for key, value in answers.items():
        fill = neutral.get(key, "" if value.dtype == tf.string else 0)
        where = tf.reshape(answered, tf.concat([tf.shape(answered), tf.ones([tf.rank(value) - 1], tf.int32)], 0))
        result[key] = tf.where(where, value, tf.cast(fill, value.dtype) if value.dtype != tf.string else fill)
    result["status"] = status_strings(status, max_pixels)
    return result


def decode_batch(image_bytes, size, max_pixels):
    """A batch of encoded images -> `DecodedBatch` with float32 images at `size`, as training prepares them."""
    batch = decode_checked(image_bytes, max_pixels, size)
    return batch._replace(images=tf.cast(batch.images, tf.float32))


def decode_checked(image_bytes, max_pixels, size=None):
    """Validates, decodes and orients a batch of encoded images; refused or undecodable ones stay zero.

    It runs as one graph function, traced once per process for each `size` and
    shared by every signature that calls it (the header walks are a few hundred
    ops; tracing them for every export, or running them op by op when called
    eagerly, would take seconds).

    Args:
        image_bytes: string [B] of encoded files.
        max_pixels: images whose header announces more pixels are not decoded.
        size: [height, width] to resize to (a JPEG decoded at the DCT scale training
            uses for it), or None to keep each image's own size: each image is then
            flattened and padded to the batch's largest pixel count, which the pixel
            budget bounds (padding to the largest height and the largest width would
            not be: a 1 x 8000 and an 8000 x 1 image would take 64 million pixels each).

    Returns:
        `DecodedBatch` with uint8 images.
    """
    graph = _decode_checked_graph(None if size is None else tuple(int(side) for side in size))
    images, sizes, status = graph(tf.convert_to_tensor(image_bytes, tf.string), tf.constant(max_pixels, tf.int64))
    return DecodedBatch(images, sizes, status)


@functools.lru_cache(maxsize=None)
def _decode_checked_graph(size):
    """`_decode_checked` at one `size` as a graph function of any batch and pixel budget."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int64)])
    def decode(image_bytes, max_pixels):
        return tuple(_decode_checked(image_bytes, max_pixels, None if size is None else list(size)))

    return decode


def _decode_checked(image_bytes, max_pixels, size):
    headers = read_headers(image_bytes, max_pixels)
    count = tf.shape(image_bytes)[0]
    # Only the images whose header passed go into the dataset: a graph gather costs less than a filter function.
    # Their header fields travel packed in one int32 row: each component of a dataset element costs a
    # one-image request about 30 microseconds (slicing, the map's arguments, batching).
    passed = tf.where(tf.equal(headers["status"], OK))[:, 0]
    fields = tf.gather(tf.stack([tf.range(count)] + [headers[key] for key in _PACKED[1:]], axis=1), passed)
    image_shape = [None] if size is None else list(size) + [3]

    def decode(encoded, packed):
        header = dict(zip(_PACKED, tf.unstack(packed)))
        answer = _decode_jpeg if size is not None else _decode_jpeg_whole
        code, image, upright = tf.cond(tf.equal(header["format"], JPEG),
                                       lambda: answer(encoded, header, max_pixels, size),
                                       lambda: _decode_other(encoded, header, size))
        return tf.reshape(image, [-1]) if size is None else image, tf.concat([[header["position"], code], upright], 0)

    # One placeholder past the batch's end, so the batch below is never empty; images that were not decoded
    # (their decode failed) read its row, whose code NOT_DECODED says so.
    placeholder = tf.data.Dataset.from_tensors((tf.zeros([3] if size is None else image_shape, tf.uint8),
                                                tf.stack([count, NOT_DECODED, 0, 0])))

    def decoded(parallel_calls):
        images = tf.data.Dataset.from_tensor_slices((tf.gather(image_bytes, passed), fields))
        answered = images.map(decode, num_parallel_calls=parallel_calls).ignore_errors().concatenate(placeholder)
        return answered.padded_batch(tf.cast(count + 1, tf.int64), padded_shapes=(image_shape, [4])).with_options(
            _DATASET_OPTIONS).get_single_element()

    # A parallel map starts its threads at every request: 1.3 ms, a third of a one-image request's decode.
    images, answers = tf.cond(tf.size(passed) > 1, lambda: decoded(tf.data.AUTOTUNE), lambda: decoded(None))

    # Each image's row in the decoded batch, or the placeholder's (the last): a gather, not a scatter of the
    # pixels (a uint8 scatter_nd took 0.35 ms for one 224 x 224 image).
    decoded_rows = tf.shape(answers)[0]
    rows = tf.tensor_scatter_nd_update(tf.fill([count + 1], decoded_rows - 1), answers[:, :1],
                                       tf.range(decoded_rows))[:count]
    answers = tf.gather(answers, rows)
    failed = tf.where(tf.equal(headers["complete"], 1), image_header.CORRUPT, image_header.TRUNCATED)
    status = tf.where(tf.equal(headers["status"], OK),
                      tf.where(tf.equal(answers[:, 1], NOT_DECODED), failed, answers[:, 1]), headers["status"])
    images = tf.gather(images, rows)
    if size is not None:
        images.set_shape([None] + list(size) + [3])
    sizes = tf.where(tf.equal(status, OK)[:, None], answers[:, 2:], 0)
    return DecodedBatch(images, sizes, status)


def _within(stored, max_pixels, decode, size):
    """(code, image, upright size): `decode()` if a JPEG's `stored` [height, width] is within the budget, else a
    refusal (the other formats' sizes are the header's, held to the budget before the decode step)."""
    over = tf.cast(stored[0], tf.int64) * tf.cast(stored[1], tf.int64) > max_pixels

    def refused():
        image = tf.zeros([0, 0, 3] if size is None else list(size) + [3], tf.uint8)
        return OVER_MAX_PIXELS, image, tf.zeros([2], tf.int32)

    return tf.cond(over, refused, decode)


def _decode_jpeg(encoded, header, max_pixels, size):
    """A JPEG at `size`, decoded at the DCT scale Pillow's `draft` picks in training, from the upright size."""
    stored = jpeg_size(encoded)  # fails on a malformed header: the map drops this image

    def decode():
        upright = _upright(stored, header["orientation"])
        shrink = tf.minimum(upright[0] // size[0], upright[1] // size[1])
        image = decode_jpeg_scaled(encoded, tf.reduce_sum(tf.cast(shrink >= tf.constant(DCT_SCALES[1:]), tf.int32)))
        return OK, resize_uint8(orient(image, header["orientation"]), size), upright

    return _within(stored, max_pixels, decode, size)


def _decode_jpeg_whole(encoded, header, max_pixels, size):
    """A JPEG at its own size, upright."""
    def decode():
        image = orient(tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"), header["orientation"])
        return OK, image, tf.shape(image)[:2]

    return _within(jpeg_size(encoded), max_pixels, decode, size)


def _decode_other(encoded, header, size):
    """A PNG, GIF (its first frame), BMP or WebP, upright, at `size` if given. Its size is the header's, which
    `read_headers` already held to the pixel budget."""
    first_frame = tf.cond(tf.equal(header["format"], GIF),
                          lambda: tf.strings.substr(encoded, 0, header["end"]) + b";", lambda: encoded)
    image = _to_rgb(tf.io.decode_image(first_frame, channels=0, expand_animations=False, dtype=tf.uint8))
    image = orient(image, header["orientation"])
    if size is None:
        return OK, image, tf.shape(image)[:2]
    stored = tf.stack([header["height"], header["width"]])
    return OK, resize_uint8(image, size), _upright(stored, header["orientation"])


def _upright(stored, orientation):
    """[height, width] as stored -> upright, after EXIF `orientation` (5 to 8 turn the image on its side)."""
    return tf.where(orientation >= 5, tf.reverse(stored, [0]), stored)


def _to_rgb(image):
    """uint8 [H, W, 1 to 4] -> [H, W, 3] as `imgpipe.data.images.to_rgb`: grey spread, alpha composited on white."""
    channels = tf.shape(image)[-1]
    colour = tf.cond(channels >= 3, lambda: image[..., :3], lambda: tf.tile(image[..., :1], [1, 1, 3]))

    def on_white():
        # Pillow's alpha_composite over opaque white, in its integer arithmetic (7 extra bits, rounded /255).
        alpha = tf.cast(image[..., -1:], tf.int32)
        scaled = (tf.cast(colour, tf.int32) * alpha + 255 * (255 - alpha) + 128) * 128
        shift = tf.bitwise.right_shift
        return tf.cast(shift(shift(scaled, 8) + scaled, 15), tf.uint8)

    # Only an image with alpha pays for the int32 arithmetic (12 bytes a pixel while it runs).
    return tf.cond(tf.equal(channels, 2) | tf.equal(channels, 4), on_white, lambda: colour)


def orient(image, orientation):
    """Turns an image [H, W, C] stored with EXIF `orientation` (1 to 8) upright, as Pillow's `exif_transpose`."""
    transposed = lambda: tf.transpose(image, [1, 0, 2])  # noqa: E731
    return tf.switch_case(orientation - 1, [
        lambda: image,
        lambda: tf.reverse(image, [1]),
        lambda: tf.reverse(image, [0, 1]),
        lambda: tf.reverse(image, [0]),
        transposed,
        lambda: tf.reverse(transposed(), [1]),
        lambda: tf.reverse(transposed(), [0, 1]),
        lambda: tf.reverse(transposed(), [0]),
    ])


def resize_float(image, size):
    """uint8 or float image(s) -> float32 at `size` in 0..255, resized like the training pipeline."""
    image = tf.cast(image, tf.float32)
    shrinking = tf.reduce_all(tf.shape(image)[-3:-1] >= size)
    resized = tf.cond(shrinking, lambda: tf.image.resize(image, size, method="area"),
                      lambda: tf.image.resize(image, size, method="bilinear", antialias=True))
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def images_at_original_size(image_bytes, transform, max_pixels):
    """Runs `transform` (uint8 [H, W, 3] -> float 0..255 [H, W, 3]) on each encoded image at its own size.

    Returns the answer of image-producing signatures: `image_png_bytes` (PNG bytes at
    each image's size; empty where refused), `height`, `width` (0 where refused)
    and `status`. The images are transformed one after the other, so a request
    holds its decoded pixels (3 bytes a pixel, each image padded to the
    largest one's pixel count, twice while `decode_checked` puts them in order)
    and one image's transform at a time. Floats padded to the batch's largest
    height and width are not an answer: no budget bounds them.
    """
    batch = decode_checked(image_bytes, max_pixels)

    def one(args):
        packed, original, status = args

        def answer():
            pixels = tf.cast(original[0], tf.int64) * tf.cast(original[1], tf.int64) * 3
            image = tf.reshape(packed[:pixels], tf.concat([original, [3]], axis=0))
            result = tf.clip_by_value(transform(image), 0.0, 255.0)
            return tf.io.encode_png(tf.cast(tf.round(result), tf.uint8))

        return tf.cond(tf.equal(status, OK), answer, lambda: tf.constant(b""))

    png = tf.map_fn(one, (batch.images, batch.sizes, batch.status), fn_output_signature=tf.TensorSpec([], tf.string),
                    parallel_iterations=1)
    return {"image_png_bytes": png, "height": batch.sizes[:, 0], "width": batch.sizes[:, 1],
            "status": status_strings(batch.status, max_pixels)}
