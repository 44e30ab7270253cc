"""Small Keras layers shared by the model builders."""

import keras
from keras import ops

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="imgpipe")
class ImagenetPreprocessing(keras.layers.Layer):
    """Scales 0..255 RGB pixels the way a `keras.applications` backbone was trained.

    Args:
        mode: 'caffe' (BGR, ImageNet mean subtracted: VGG, ResNet), 'tf' (-1..1:
            Inception) or 'none' (the backbone scales its own input:
            EfficientNet, MobileNetV3).

    Example:
        >>> ImagenetPreprocessing("tf")(keras.ops.ones((1, 8, 8, 3)) * 255.0)
    """

    MODES = ("caffe", "tf", "none")

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"Expected 'mode' to be one of {self.MODES}, received mode={mode!r}")
        self.mode = mode

    def call(self, inputs):
        inputs = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            return ops.flip(inputs, axis=-1) - ops.convert_to_tensor(CAFFE_BGR_MEAN, self.compute_dtype)
        if self.mode == "tf":
            return inputs / 127.5 - 1.0
        return inputs

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
