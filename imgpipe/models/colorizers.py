"""The input side of a colorizer: only lightness reaches the network.

Any pixel-classifier builder (`unet`, `deeplabv3plus`) becomes a colorizer
behind this layer: the RGB input is reduced to its CIE L channel (so colour
can never leak in), replicated to three grey channels, and the builder
classifies every pixel into the Q quantised ab bins of `imgpipe.models.lab.ab_bins`
(see `imgpipe.tasks.colorize.task.ColorizationModel`).

Example:
    >>> GreyFromLightness()(keras.ops.ones((1, 4, 4, 3)) * 255.0)[0, 0, 0]   # white stays 255
"""

import keras
import tensorflow as tf

from imgpipe.models.lab import rgb_to_lab


@keras.saving.register_keras_serializable(package="imgpipe")
class GreyFromLightness(keras.layers.Layer):
    """0..255 RGB -> its CIE lightness as 0..255 grey in three channels."""

    def call(self, images):
        lightness = rgb_to_lab(images)[..., :1] * 2.55
        return tf.cast(tf.tile(lightness, [1, 1, 1, 3]), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape
