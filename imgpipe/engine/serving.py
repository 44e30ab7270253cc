"""Graph-side image decoding for the exported serving signatures.

TF Serving clients send encoded files; the SavedModel decodes JPEG, PNG, BMP,
GIF (first frame) and WebP itself, so the client needs no image library, and
prepares them exactly as the training pipeline does: a JPEG is decoded at the
same reduced DCT scale, and every image is shrunk by the same area average
(`imgpipe.engine.pipeline.resize_uint8`), so the model sees the pixels it was trained
on (EXIF rotation is the exception: serving does not read EXIF).

Example:
    >>> images, sizes = decode_batch(tf.constant([png_bytes]), [64, 64])
"""

import tensorflow as tf

from imgpipe.engine.pipeline import decode_jpeg_for_size, resize_uint8


def decode_one(image_bytes):
    """Encoded bytes -> uint8 [H, W, 3]; grey becomes RGB, alpha is dropped."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def resize_float(image, size):
    """uint8 or float image(s) -> float32 at `size` in 0..255, resized like the training pipeline."""
    image = tf.cast(image, tf.float32)
    shrinking = tf.reduce_all(tf.shape(image)[-3:-1] >= size)
    resized = tf.cond(shrinking, lambda: tf.image.resize(image, size, method="area"),
                      lambda: tf.image.resize(image, size, method="bilinear", antialias=True))
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def decode_for_model(image_bytes, size):
    """One encoded image -> (uint8 [size, 3], int32 [2] original height and width), as training prepares it.

    A JPEG is decoded at the largest DCT scale (1/2, 1/4, 1/8) that keeps it at
    least `size`, as `imgpipe.data.images.plain_jpeg_scale` chooses for training.
    """
    def jpeg():
        return decode_jpeg_for_size(image_bytes, size), tf.io.extract_jpeg_shape(image_bytes)[:2]

    def other():
        image = decode_one(image_bytes)
        return image, tf.shape(image)[:2]

    image, original = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    image.set_shape([None, None, 3])
    return resize_uint8(image, size), original


def decode_batch(image_bytes, size):
    """A batch of encoded images -> (float32 [B, H, W, 3] at `size`, int32 [B, 2] original heights/widths)."""

    def decode(single):
        image, original = decode_for_model(single, size)
        return tf.cast(image, tf.float32), original

    return tf.map_fn(
        decode,
        image_bytes,
        fn_output_signature=(tf.TensorSpec(list(size) + [3], tf.float32), tf.TensorSpec([2], tf.int32)),
    )


def images_at_original_size(image_bytes, transform):
    """Runs `transform` (uint8 [H, W, 3] -> float 0..255 [H, W, 3]) on each encoded image at its own size.

    Returns the answer of image-producing signatures: `image_png` (PNG bytes at
    each image's size), `image` (float, padded with zeros to the largest image
    of the batch), `height` and `width`.
    """
    sizes = tf.map_fn(lambda one: tf.shape(decode_one(one))[:2], image_bytes,
                      fn_output_signature=tf.TensorSpec([2], tf.int32))
    largest = tf.reduce_max(sizes, axis=0)

    def one(encoded):
        image = decode_one(encoded)
        result = tf.clip_by_value(transform(image), 0.0, 255.0)
        png = tf.io.encode_png(tf.cast(tf.round(result), tf.uint8))
        padding = [[0, largest[0] - tf.shape(image)[0]], [0, largest[1] - tf.shape(image)[1]], [0, 0]]
        return png, tf.pad(result, padding)

    png, images = tf.map_fn(one, image_bytes, fn_output_signature=(
        tf.TensorSpec([], tf.string), tf.TensorSpec([None, None, 3], tf.float32)))
    return {"image_png": png, "image": images, "height": sizes[:, 0], "width": sizes[:, 1]}
