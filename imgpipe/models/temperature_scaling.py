"""A softmax output with its temperature applied inside the network, so every export serves calibrated scores.

Putting the scaling in the graph (rather than in each caller) means the
SavedModel, the LiteRT, ONNX and OpenVINO files and `imgpipe predict` all
answer with the same calibrated probabilities; see
`imgpipe.understand.calibration` for how the temperature is fitted.

Example:
    >>> served = with_temperature(model, 1.8)
    >>> served(images)  # softmax(log(model(images)) / 1.8)
"""

import keras
from keras import ops

SMALLEST_PROBABILITY = 1e-12  # the same log(0) guard as imgpipe.understand.calibration.scale


@keras.saving.register_keras_serializable(package="imgpipe")
class TemperatureScaling(keras.layers.Layer):
    """softmax(log(probabilities) / temperature) over the last axis; no weights to train."""

    def __init__(self, temperature, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, probabilities):
        probabilities = ops.cast(probabilities, "float32")
        return ops.softmax(ops.log(ops.maximum(probabilities, SMALLEST_PROBABILITY)) / self.temperature, axis=-1)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def with_temperature(model, temperature):
    """The model followed by `TemperatureScaling(temperature)`, as one functional model of the same input."""
    inputs = keras.Input(shape=model.input_shape[1:], dtype="float32", name="image")
    return keras.Model(inputs, TemperatureScaling(temperature, name="temperature_scaling")(model(inputs)),
                       name=f"{model.name}_calibrated")
