"""Graph-side image decoding for the exported serving signatures.

TF Serving clients send encoded files; the SavedModel decodes JPEG, PNG, BMP,
GIF (first frame) and WebP itself and resizes the way the training pipeline
does (bilinear, antialiased), so the client needs no image library.

Example:
    >>> images, sizes = decode_batch(tf.constant([png_bytes]), [64, 64])
"""

import tensorflow as tf


def decode_one(image_bytes):
    """Encoded bytes -> uint8 [H, W, 3]; grey becomes RGB, alpha is dropped."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def resize_float(image, size):
    """uint8 or float image -> float32 [size, 3] in 0..255, resized like the training pipeline."""
    resized = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def decode_batch(image_bytes, size):
    """A batch of encoded images -> (float32 [B, H, W, 3] at `size`, int32 [B, 2] original heights/widths)."""

    def decode(single):
        image = decode_one(single)
        return resize_float(image, size), tf.shape(image)[:2]

    return tf.map_fn(
        decode,
        image_bytes,
        fn_output_signature=(tf.TensorSpec(list(size) + [3], tf.float32), tf.TensorSpec([2], tf.int32)),
    )
