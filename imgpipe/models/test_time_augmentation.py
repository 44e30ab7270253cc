"""Test-time augmentation inside the network: each answer averaged over mirrored and zoomed views of its image.

`export.tta` wraps the served network with it, so the SavedModel's signatures (and TF Serving),
the LiteRT, ONNX and OpenVINO files and `imgpipe evaluate` all answer with the same averaged
probabilities. The views of one batch go through the network as one batch of V x B images.

Every view has the model's own input size. A Keras 3 functional model refuses any other input
size (and lenet's Flatten and deeplabv3plus's image pooling depend on theirs), so a scale is a
zoom within the input: 1.17 enlarges the image about its centre and crops it back to the input
size; 0.83 shrinks it and fills the border by reflection, as training's augmentation does
(BORDER_REFLECT_101). A per-pixel output (segmentation) is taken back to the input's geometry
before averaging: a mirrored view's map is mirrored back, a zoom is undone (pixels a zoom-in
cut off get no vote from that view).

Example:
    >>> served = with_test_time_augmentation(model, "flip")
    >>> served(images)  # (model(images) + flip(model(flip(images)))) / 2
"""

import keras
from keras import ops

MODES = ("none", "flip", "flip+scales")
SCALES = (0.83, 1.17)  # within training's `medium` viewpoint range (0.8 to 1.2), so the network has seen them


def views(mode):
    """The (scale, mirrored) views a mode averages over; the image itself first.

    Example:
        >>> views("flip")
        [(1.0, False), (1.0, True)]
    """
    if mode not in MODES:
        raise ValueError(f"Expected 'mode' to be one of {MODES}, received mode={mode!r}")
    scales = (1.0,) + (SCALES if mode == "flip+scales" else ())
    mirrors = (False,) if mode == "none" else (False, True)
    return [(scale, mirrored) for scale in scales for mirrored in mirrors]


def _margins(inner, outer):
    """(before, after) that centre `inner` pixels in `outer`."""
    before = (outer - inner) // 2
    return before, outer - inner - before


@keras.saving.register_keras_serializable(package="imgpipe")
class TestTimeAugmentation(keras.layers.Layer):
    """The mean of `network`'s probabilities over the views of `mode` (see `views`); no weights of its own.

    Args:
        network: keras.Model taking float32 [B, H, W, 3] at a fixed H, W and answering probabilities:
            [B, C] (one answer per image), or [B, H, W, C] with `per_pixel`.
        mode: str, 'flip' or 'flip+scales' ('none' is the network's own answer).
        per_pixel: bool, the output is a map at the input's size (segmentation).

    Example:
        >>> layer = TestTimeAugmentation(model, "flip+scales", per_pixel=True)
        >>> layer(images).shape == model(images).shape
        True
    """

    def __init__(self, network, mode, per_pixel=False, **kwargs):
        super().__init__(**kwargs)
        self.views = views(mode)
        self.network = network
        self.mode = mode
        self.per_pixel = bool(per_pixel)

    def call(self, images):
        images = ops.cast(images, "float32")
        size = tuple(images.shape[1:3])
        batch = ops.concatenate([self._view(images, scale, mirrored) for scale, mirrored in self.views], axis=0)
        outputs = ops.cast(self.network(batch, training=False), "float32")
        outputs = ops.reshape(outputs, (len(self.views), -1) + tuple(outputs.shape[1:]))
        if not self.per_pixel:
            return ops.mean(outputs, axis=0)
        total, weight = 0.0, 0.0
        for index, (scale, mirrored) in enumerate(self.views):
            probabilities = ops.flip(outputs[index], axis=2) if mirrored else outputs[index]
            probabilities, counted = self._unzoom(probabilities, scale, size)
            total, weight = total + probabilities, weight + counted
        return total / weight

    def _view(self, images, scale, mirrored):
        images = ops.flip(images, axis=2) if mirrored else images
        if scale == 1.0:
            return images
        height, width = images.shape[1:3]
        zoomed = (round(height * scale), round(width * scale))
        resized = ops.image.resize(images, zoomed, interpolation="bilinear")
        if scale > 1.0:
            (top, _), (left, _) = _margins(height, zoomed[0]), _margins(width, zoomed[1])
            return resized[:, top:top + height, left:left + width]
        padding = [[0, 0], list(_margins(zoomed[0], height)), list(_margins(zoomed[1], width)), [0, 0]]
        return ops.pad(resized, padding, mode="reflect")

    @staticmethod
    def _unzoom(probabilities, scale, size):
        """A view's map in the input's geometry, and the weight [1, H, W, 1] of its vote at each pixel."""
        height, width = size
        full = ops.ones((1, height, width, 1), "float32")
        if scale == 1.0:
            return probabilities, full
        zoomed = (round(height * scale), round(width * scale))
        if scale < 1.0:  # the image sat in the centre; the reflected border around it is not the image
            (top, _), (left, _) = _margins(zoomed[0], height), _margins(zoomed[1], width)
            inner = probabilities[:, top:top + zoomed[0], left:left + zoomed[1]]
            return ops.image.resize(inner, size, interpolation="bilinear"), full
        # The view saw the centre of the enlarged image: its map goes back there, with no vote around it.
        padding = [[0, 0], list(_margins(height, zoomed[0])), list(_margins(width, zoomed[1])), [0, 0]]
        return (ops.image.resize(ops.pad(probabilities, padding), size, interpolation="bilinear"),
                ops.image.resize(ops.pad(full, padding), size, interpolation="bilinear"))

    def compute_output_shape(self, input_shape):
        return self.network.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "network": keras.saving.serialize_keras_object(self.network),
                "mode": self.mode, "per_pixel": self.per_pixel}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)


def with_test_time_augmentation(model, mode, per_pixel=False):
    """The model wrapped in `TestTimeAugmentation(mode)`, as one functional model of the same input; 'none': the model.

    Example:
        >>> served = with_test_time_augmentation(model, "flip+scales", per_pixel=True)
    """
    if views(mode) == [(1.0, False)]:
        return model
    inputs = keras.Input(shape=model.input_shape[1:], dtype="float32", name="image")
    return keras.Model(inputs, TestTimeAugmentation(model, mode, per_pixel, name="test_time_augmentation")(inputs),
                       name=f"{model.name}_tta")
