"""Semantic segmentation networks, registered for the segment task.

`unet` (Ronneberger et al. 2015) is the default: four down and up stages with
skip connections, batch norm and a modest width, so it trains from scratch on
a few dozen images on a CPU. `deeplabv3plus` (Chen et al. 2018) puts atrous
spatial pyramid pooling and a light decoder on a `keras.applications` ResNet50
and is the choice with `weights="imagenet"`. Both output per-pixel softmax
probabilities at the input size; inputs are float32 RGB in 0..255.

Example:
    >>> model = build_unet((128, 128, 3), num_classes=3)
    >>> model.output_shape
    (None, 128, 128, 3)
"""

import keras
from keras import layers

from imgpipe.errors import RecipeError
from imgpipe.models import MODELS
from imgpipe.models.backbones import preprocessing, tapped_backbone
from imgpipe.models.classifiers import BACKBONE_LAYER, BATCH_NORM_MOMENTUM
from imgpipe.models.layers import ImagenetPreprocessing


def _conv_block(x, filters, name, dilation=1, kernel=3):
    x = layers.Conv2D(filters, kernel, padding="same", dilation_rate=dilation, use_bias=False,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _pixel_classifier(x, num_classes):
    return layers.Conv2D(num_classes, 1, activation="softmax", dtype="float32", name="probabilities")(x)


def _require_multiple(name, input_shape, factor):
    if input_shape[0] % factor or input_shape[1] % factor:
        raise RecipeError(f"data.image_size: {name} needs a height and width divisible by {factor}, got "
                          f"{input_shape[0]}x{input_shape[1]}")


@MODELS.register("unet", task=("segment", "colorize"), family="from scratch")
def build_unet(input_shape, num_classes, weights=None, dropout=0.1, base_filters=16, depth=4):
    """U-Net with `depth` pooling stages of doubling width (16-32-64-128, 256 at the bottom)."""
    if weights not in (None, "none"):
        raise RecipeError("model.weights: unet trains from scratch; use deeplabv3plus for imagenet weights")
    _require_multiple("unet", input_shape, 2**depth)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
    skips = []
    for level in range(depth):
        filters = base_filters * 2**level
        x = _conv_block(x, filters, f"down{level}_a")
        x = _conv_block(x, filters, f"down{level}_b")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = _conv_block(x, base_filters * 2**depth, "bottom_a")
    x = layers.Dropout(dropout, name="bottom_dropout")(x) if dropout else x
    x = _conv_block(x, base_filters * 2**depth, "bottom_b")
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}_resize")(x)
        x = _conv_block(x, filters, f"up{level}_reduce", kernel=1)
        x = layers.Concatenate(name=f"up{level}_skip")([x, skips[level]])
        x = _conv_block(x, filters, f"up{level}_a")
        x = _conv_block(x, filters, f"up{level}_b")
    return keras.Model(inputs, _pixel_classifier(x, num_classes), name="unet")


# MobileNetV2's feature maps at strides 2, 4, 8, 16 and 32 (the TensorFlow segmentation tutorial's taps).
MOBILENET_V2_TAPS = ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu",
                     "block_16_project")


@MODELS.register("unet_mobilenet_v2", task=("segment", "colorize"), family="pretrained", pretrained=True,
                 backbone="mobilenet_v2")
def build_unet_mobilenet_v2(input_shape, num_classes, weights=None, dropout=0.1):
    """A U-Net decoder on a MobileNetV2 encoder: upsample x2, concatenate the skip, two 3x3 convs, five times."""
    _require_multiple("unet_mobilenet_v2", input_shape, 32)
    inputs = keras.Input(input_shape, name="image")
    x = ImagenetPreprocessing(preprocessing("mobilenet_v2"), name="preprocess")(inputs)
    *skips, x = tapped_backbone("mobilenet_v2", input_shape, weights, MOBILENET_V2_TAPS, BACKBONE_LAYER)(x)
    x = layers.Dropout(dropout, name="bottleneck_dropout")(x) if dropout else x
    for level, (skip, filters) in reversed(list(enumerate(zip(skips, (32, 48, 64, 96))))):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}_resize")(x)
        x = layers.Concatenate(name=f"up{level}_skip")([_conv_block(x, filters, f"up{level}_reduce", kernel=1), skip])
        x = _conv_block(x, filters, f"up{level}_a")
        x = _conv_block(x, filters, f"up{level}_b")
    x = layers.UpSampling2D(2, interpolation="bilinear", name="output_resize")(x)
    x = _conv_block(x, 16, "output_conv")
    return keras.Model(inputs, _pixel_classifier(x, num_classes), name="unet_mobilenet_v2")


@MODELS.register("deeplabv3plus", task=("segment", "colorize"), family="pretrained", pretrained=True,
                 backbone="resnet50")
def build_deeplabv3plus(input_shape, num_classes, weights=None, dropout=0.1):
    """DeepLabV3+ on ResNet50: ASPP (rates 6, 12, 18) on stride-16 features, decoder on stride-4 features."""
    _require_multiple("deeplabv3plus", input_shape, 16)
    inputs = keras.Input(input_shape, name="image")
    x = ImagenetPreprocessing(preprocessing("resnet50"), name="preprocess")(inputs)
    backbone = tapped_backbone("resnet50", input_shape, weights, ("conv4_block6_2_relu", "conv2_block3_2_relu"),
                               BACKBONE_LAYER)
    high, low = backbone(x)
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(high)
    pooled = _conv_block(pooled, 256, "aspp_image", kernel=1)
    pooled = layers.UpSampling2D((input_shape[0] // 16, input_shape[1] // 16), interpolation="bilinear",
                                 name="aspp_image_resize")(pooled)
    branches = [pooled, _conv_block(high, 256, "aspp_1x1", kernel=1)]
    branches += [_conv_block(high, 256, f"aspp_rate{rate}", dilation=rate) for rate in (6, 12, 18)]
    x = _conv_block(layers.Concatenate(name="aspp_concat")(branches), 256, "aspp_project", kernel=1)
    x = layers.Dropout(dropout, name="aspp_dropout")(x) if dropout else x
    x = layers.UpSampling2D(4, interpolation="bilinear", name="decoder_resize")(x)
    low = _conv_block(low, 48, "decoder_low", kernel=1)
    x = layers.Concatenate(name="decoder_concat")([x, low])
    x = _conv_block(x, 256, "decoder_a")
    x = _conv_block(x, 256, "decoder_b")
    x = layers.UpSampling2D(4, interpolation="bilinear", name="output_resize")(x)
    return keras.Model(inputs, _pixel_classifier(x, num_classes), name="deeplabv3plus")
