"""Image transformation networks for fast style transfer (Johnson, Alahi, Fei-Fei 2016).

A residual encoder-decoder: a 9x9 convolution, two stride-2 convolutions,
five residual blocks, two nearest-neighbour upsample + convolution steps
(instead of transposed convolutions, which leave checkerboard artefacts;
Odena et al. 2016) and a 9x9 convolution back to RGB. Every convolution
reflect-pads its input (zero padding leaves frames around the result) and all
but the last are followed by instance normalisation (Ulyanov et al. 2016),
which is what lets one network restyle images of any contrast.

One departure from the paper: the network's output is a change added to the
photo (`AddToImage`), not an image drawn from nothing. Johnson et al. trained
for 40,000 steps; a CPU run has a few hundred, in which a network that has to
redraw the photo learns only a colour wash, and turning the style weight up
paints the style over everything (raccoon photos, 320 steps, ImageNet VGG16:
style loss 0.50x the photos' with the structure's SSIM at 0.36, then 0.34x at
0.18). Starting from the photo, the same steps reach 0.29x at 0.37 with the
default style weight (benchmarks/README.md, "Style transfer ... photo plus
change").

The network is fully convolutional and takes any height and width: the input
is reflect-padded to a multiple of 4 and the output cropped back, so the
output always has the input's size. Pixels in and out are float 0..255.

Example:
    >>> net = build_johnson((None, None, 3), num_classes=0)
    >>> net(keras.ops.zeros((1, 50, 37, 3))).shape
    TensorShape([1, 50, 37, 3])
"""

import keras
import tensorflow as tf
from keras import layers

from imgpipe.models import MODELS

DOWNSAMPLING = 4  # two stride-2 convolutions


@keras.saving.register_keras_serializable(package="imgpipe")
class ReflectPadToMultiple(layers.Layer):
    """Reflect-pads height and width at the bottom/right up to a multiple of `multiple`."""

    def __init__(self, multiple, **kwargs):
        super().__init__(**kwargs)
        self.multiple = multiple

    def call(self, images):
        shape = tf.shape(images)
        pad_h = (-shape[1]) % self.multiple
        pad_w = (-shape[2]) % self.multiple
        return tf.pad(images, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="SYMMETRIC")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, None, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


@keras.saving.register_keras_serializable(package="imgpipe")
class CropToReference(layers.Layer):
    """Crops `images` to the height and width of `reference` (undoes `ReflectPadToMultiple`)."""

    def call(self, images, reference):
        shape = tf.shape(reference)
        return images[:, : shape[1], : shape[2], :]

    def compute_output_shape(self, images_shape, reference_shape):
        return (images_shape[0], reference_shape[1], reference_shape[2], images_shape[3])


@keras.saving.register_keras_serializable(package="imgpipe")
class AddToImage(layers.Layer):
    """`image + change`, clipped to 0..255: the network's output is a change to the photo it was given."""

    def call(self, change, image):
        return tf.clip_by_value(tf.cast(image, change.dtype) + change, 0.0, 255.0)

    def compute_output_shape(self, change_shape, image_shape):
        return image_shape


@keras.saving.register_keras_serializable(package="imgpipe")
class ReflectPad(layers.Layer):
    """Reflect-pads `amount` pixels on every side, so convolutions see no dark zero border (as in the paper)."""

    def __init__(self, amount, **kwargs):
        super().__init__(**kwargs)
        self.amount = amount

    def call(self, images):
        a = self.amount
        return tf.pad(images, [[0, 0], [a, a], [a, a], [0, 0]], mode="REFLECT")

    def compute_output_shape(self, input_shape):
        grow = lambda side: None if side is None else side + 2 * self.amount  # noqa: E731
        return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "amount": self.amount}


def _conv(x, filters, kernel, name, strides=1, relu=True):
    x = ReflectPad(kernel // 2, name=f"{name}_pad")(x)
    x = layers.Conv2D(filters, kernel, strides=strides, padding="valid", name=f"{name}_conv")(x)
    x = layers.GroupNormalization(groups=-1, name=f"{name}_instance_norm")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _residual(x, filters, name):
    y = _conv(x, filters, 3, f"{name}_a")
    y = _conv(y, filters, 3, f"{name}_b", relu=False)
    return layers.Add(name=f"{name}_add")([x, y])


def transformer_net(input_shape, width=32, residual_blocks=5, name="johnson"):
    """The transformation network with `width` filters in the first layer (32 in the paper).

    Its output is the input plus the network's change (up to ±127.5), clipped to 0..255.
    """
    inputs = keras.Input((None, None, 3) if input_shape is None else (None, None, input_shape[-1]), name="image")
    x = ReflectPadToMultiple(DOWNSAMPLING, name="pad")(inputs)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(x)
    x = _conv(x, width, 9, "encode1")
    x = _conv(x, width * 2, 3, "encode2", strides=2)
    x = _conv(x, width * 4, 3, "encode3", strides=2)
    for block in range(1, residual_blocks + 1):
        x = _residual(x, width * 4, f"residual{block}")
    x = layers.UpSampling2D(2, interpolation="nearest", name="up1")(x)
    x = _conv(x, width * 2, 3, "decode1")
    x = layers.UpSampling2D(2, interpolation="nearest", name="up2")(x)
    x = _conv(x, width, 3, "decode2")
    x = ReflectPad(4, name="to_rgb_pad")(x)
    x = layers.Conv2D(3, 9, padding="valid", activation="tanh", name="to_rgb")(x)
    change = CropToReference(dtype="float32", name="crop")(layers.Rescaling(127.5, dtype="float32", name="change")(x),
                                                           inputs)
    return keras.Model(inputs, AddToImage(dtype="float32", name="photo_plus_change")(change, inputs), name=name)


@MODELS.register("johnson", task="stylize", family="from scratch")
def build_johnson(input_shape, num_classes=0, weights=None, dropout=0.0):
    """Johnson et al.'s width: 32-64-128 filters, five residual blocks."""
    return transformer_net(input_shape, width=32, name="johnson")


@MODELS.register("johnson_light", task="stylize", family="from scratch")
def build_johnson_light(input_shape, num_classes=0, weights=None, dropout=0.0):
    """Half the width (16-32-64 filters, a quarter of the compute) for CPU training and serving."""
    return transformer_net(input_shape, width=16, name="johnson_light")
