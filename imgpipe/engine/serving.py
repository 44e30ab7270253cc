"""Graph-side image decoding for the exported serving signatures, safe on bytes from anyone.

TF Serving clients send encoded files; the SavedModel decodes JPEG, PNG, BMP,
GIF (first frame) and WebP itself, so the client needs no image library, and
prepares them exactly as the training reader (`imgpipe.data.images.load_image`)
does: EXIF orientation applied, alpha composited on white, a JPEG decoded at
the same reduced DCT scale, and every image shrunk by the same area average
(`imgpipe.engine.pipeline.resize_uint8`), so the model sees the pixels it was
trained on.

Every image's header is read first (`imgpipe.engine.image_header`), and only
those that pass are decoded: an empty file, a file that is not an image, a
truncated one or one over the pixel budget is refused before a byte of it is
decoded. A graph cannot catch an op's error, but a tf.data pipeline can drop
the elements whose decode failed (`ignore_errors`), so the decodes run as a
small dataset inside the signature and a corrupt image costs only its own
answer. Each image gets a status code (`image_header.OK` or a reason), and
`status_strings` turns them into the `status` output every signature returns.

Example:
    >>> batch = decode_batch(tf.constant([png_bytes, b"junk"]), [64, 64], max_pixels=25_000_000)
    >>> batch.status.numpy().tolist()
    [0, 2]
"""

import collections
import functools

import tensorflow as tf

from imgpipe.engine import image_header
from imgpipe.engine.image_header import GIF, JPEG, OK, read_headers, status_reasons
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
    passed = tf.where(tf.equal(headers["status"], OK))[:, 0]
    needed = {key: tf.gather(headers[key], passed) for key in ("format", "height", "width", "orientation", "end")}

    def decode(position, encoded, header):
        image = _decode_upright(encoded, header, size)
        return position, image if size is not None else tf.reshape(image, [-1]), tf.shape(image)[:2]

    # One placeholder past the batch's end, so the batch below is never empty (and at each image's own size
    # never zero bytes long: scatter_nd refuses an empty output); it is dropped afterwards.
    image_shape = [None] if size is None else list(size) + [3]
    placeholder = tf.data.Dataset.from_tensors((count, tf.zeros([3] if size is None else image_shape, tf.uint8),
                                                tf.zeros([2], tf.int32)))

    def decoded(parallel_calls):
        images = tf.data.Dataset.from_tensor_slices((tf.cast(passed, tf.int32), tf.gather(image_bytes, passed), needed))
        answered = images.map(decode, num_parallel_calls=parallel_calls).ignore_errors().concatenate(placeholder)
        return answered.padded_batch(tf.cast(count + 1, tf.int64), padded_shapes=([], image_shape, [2])).with_options(
            _DATASET_OPTIONS).get_single_element()

    # A parallel map starts its threads at every request: 1.3 ms, a third of a one-image request's decode.
    positions, images, decoded_sizes = tf.cond(tf.size(passed) > 1, lambda: decoded(tf.data.AUTOTUNE),
                                               lambda: decoded(None))

    where = positions[:, None]
    images = tf.scatter_nd(where, images, tf.concat([[count + 1], tf.shape(images)[1:]], axis=0))[:count]
    done = tf.scatter_nd(where, tf.ones_like(positions), [count + 1])[:count] > 0
    failed = tf.where(tf.equal(headers["complete"], 1), image_header.CORRUPT, image_header.TRUNCATED)
    status = tf.where(tf.equal(headers["status"], OK) & ~done, failed, headers["status"])
    if size is None:  # each image's decoded size, by which its pixels are read back
        upright = tf.scatter_nd(where, decoded_sizes, [count + 1, 2])[:count]
    else:
        upright = tf.where((headers["orientation"] >= 5)[:, None],
                           tf.stack([headers["width"], headers["height"]], axis=1),
                           tf.stack([headers["height"], headers["width"]], axis=1))
    sizes = tf.where(tf.equal(status, OK)[:, None], upright, 0)
    if size is not None:
        images.set_shape([None] + list(size) + [3])
    return DecodedBatch(images, sizes, status)


def _decode_upright(encoded, header, size):
    """One image that passed its header check -> uint8 [H, W, 3] upright (and at `size` if given)."""
    sideways = header["orientation"] >= 5
    upright_height = tf.where(sideways, header["width"], header["height"])
    upright_width = tf.where(sideways, header["height"], header["width"])

    def jpeg():
        if size is None:
            return tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
        # The scale Pillow's `draft` picks in training, from the upright size.
        shrink = tf.minimum(upright_height // size[0], upright_width // size[1])
        return decode_jpeg_scaled(encoded, tf.reduce_sum(tf.cast(shrink >= tf.constant(DCT_SCALES[1:]), tf.int32)))

    def other():
        first_frame = tf.cond(tf.equal(header["format"], GIF),
                              lambda: tf.strings.substr(encoded, 0, header["end"]) + b";", lambda: encoded)
        return _to_rgb(tf.io.decode_image(first_frame, channels=0, expand_animations=False, dtype=tf.uint8))

    image = tf.cond(tf.equal(header["format"], JPEG), jpeg, other)
    image = orient(image, header["orientation"])
    return image if size is None else resize_uint8(image, size)


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
