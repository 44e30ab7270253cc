"""Colorization networks: a segmentation encoder-decoder that sees only lightness and answers ab bins.

Any pixel-classifier builder (`unet`, `deeplabv3plus`) becomes a colorizer:
the RGB input is reduced to its CIE L channel (so colour can never leak in),
replicated to three grey channels for the builder, which then classifies
every pixel into the Q quantised ab bins of `imgpipe.color.ab_bins`.

Example:
    >>> model = build_colorizer(MODELS.get("unet"), (64, 64, 3), num_bins=313)
    >>> model(keras.ops.zeros((1, 64, 64, 3))).shape
    TensorShape([1, 64, 64, 313])
"""

import keras
import tensorflow as tf

from imgpipe.color import rgb_to_lab


@keras.saving.register_keras_serializable(package="imgpipe")
class GreyFromLightness(keras.layers.Layer):
    """0..255 RGB -> its CIE lightness as 0..255 grey in three channels."""

    def call(self, images):
        lightness = rgb_to_lab(images)[..., :1] * 2.55
        return tf.cast(tf.tile(lightness, [1, 1, 1, 3]), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


def build_colorizer(build_segmenter, input_shape, num_bins, weights=None):
    """`build_segmenter(input_shape, num_bins, weights)` behind a lightness-only input; outputs [B, H, W, Q]."""
    inputs = keras.Input(input_shape, name="image")
    segmenter = build_segmenter(input_shape, num_bins, weights=weights)
    outputs = segmenter(GreyFromLightness(dtype="float32", name="lightness")(inputs))
    return keras.Model(inputs, outputs, name=f"colorize_{segmenter.name}")
