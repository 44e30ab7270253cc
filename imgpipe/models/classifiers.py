"""Image classifiers, from LeNet to EfficientNet, registered for the classify task.

`strided_cnn` is the from-scratch default (auto's choice without ImageNet weights, or below
64 px): `small_cnn`, a compact VGG-style network with batch norm, with a strided stem in front
of it above 64 px, so it trains on small data sets on a CPU at any image size. The classic lineage
(`lenet`, `alexnet`) is built from Keras layers; the others are
`keras.applications` backbones under a pooled softmax head, and accept
`weights="imagenet"` or a local backbone weights file (.h5 / .weights.h5).

Example:
    >>> model = build_strided_cnn((64, 64, 3), num_classes=5)
    >>> model.output_shape
    (None, 5)
"""

import keras
from keras import layers

from imgpipe.errors import RecipeError
from imgpipe.models import MODELS
from imgpipe.models.backbones import BACKBONES, build_backbone, preprocessing, set_trainable
from imgpipe.models.layers import ImagenetPreprocessing

BACKBONE_LAYER = "backbone"
# Keras' default 0.99 needs thousands of steps before the moving statistics
# forget their initial values; small data sets give a few hundred.
BATCH_NORM_MOMENTUM = 0.9


def classification_head(features, num_classes, dropout, normalise=False):
    """Global average pooling, dropout and a float32 softmax (safe under mixed precision).

    `normalise` puts batch normalisation on the pooled features (fastai's head does too): an ImageNet
    backbone's features are on its own scale (VGG16's pooled features have a standard deviation of 19,
    up to 289, measured on raccoon crops), and a freshly initialised softmax on them starts saturated:
    the frozen-backbone warm-up then stayed at chance (training loss 15.5 on two classes).
    """
    if len(features.shape) == 4:
        features = layers.GlobalAveragePooling2D(name="pool")(features)
    if normalise:
        features = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name="head_norm")(features)
    if dropout:
        features = layers.Dropout(dropout, name="head_dropout")(features)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(features)


def _conv_bn_relu(x, filters, kernel=3, strides=1, name=None):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _small_cnn_stages(x):
    """small_cnn's three stages of two 3x3 conv+BN+ReLU and a max-pool (32-64-128 filters)."""
    for stage, filters in enumerate((32, 64, 128), start=1):
        x = _conv_bn_relu(x, filters, name=f"stage{stage}_a")
        x = _conv_bn_relu(x, filters, name=f"stage{stage}_b")
        x = layers.MaxPooling2D(2, padding="same", name=f"stage{stage}_pool")(x)
    return x


def _no_weights(name, weights):
    if weights not in (None, "none"):
        raise RecipeError(f"model.weights: {name} has no pretrained weights; use none or a keras.applications model")


@MODELS.register("small_cnn", task="classify", family="from scratch")
def build_small_cnn(input_shape, num_classes, weights=None, dropout=0.2):
    """Three stages of two 3x3 conv+BN+ReLU and max-pooling (32-64-128 filters), then GAP."""
    _no_weights("small_cnn", weights)
    inputs = keras.Input(input_shape, name="image")
    x = _small_cnn_stages(layers.Rescaling(1.0 / 255, name="scale")(inputs))
    return keras.Model(inputs, classification_head(x, num_classes, dropout), name="small_cnn")


STRIDED_STAGE_MAX_SIDE = 64


@MODELS.register("strided_cnn", task="classify", family="from scratch")
def build_strided_cnn(input_shape, num_classes, weights=None, dropout=0.2):
    """small_cnn's three stages behind a stem that brings a large image's shorter side down to at most 64 px.

    small_cnn runs its first 32-channel stage at the full input size: about 1.5 G multiply-adds an
    image at 200 px, where it trained at 10 images/s on 2 cores. Above `STRIDED_STAGE_MAX_SIDE`,
    a 16-channel stride-2 3x3 convolution sees the full image and 32-channel stride-2 ones follow
    until the shorter side is at most that; the stages then see what a ResNet's see after its
    stem (a tenth of small_cnn's multiply-adds at 200 px), and Grad-CAM's last feature map is as
    coarse (13x13 at 200 px). Up to 64 px it is small_cnn: a stem there (a convolution and a
    max-pool) cost the built-in 32 px demo its 0.98 validation accuracy in one run (0.970 after
    30 epochs, where small_cnn reaches 1.000 in about 15). A dynamic size (None) gets no stem.

    Example:
        >>> build_strided_cnn((200, 200, 3), num_classes=2).get_layer("stage1_a_conv").input.shape
        (None, 50, 50, 32)
    """
    _no_weights("strided_cnn", weights)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
    side, stem = min((s for s in input_shape[:2] if s), default=0), 1
    while side > STRIDED_STAGE_MAX_SIDE:
        x = _conv_bn_relu(x, 16 if stem == 1 else 32, strides=2, name=f"stem{stem}")
        side, stem = -(-side // 2), stem + 1
    return keras.Model(inputs, classification_head(_small_cnn_stages(x), num_classes, dropout), name="strided_cnn")


@MODELS.register("lenet", task="classify", family="classic")
def build_lenet(input_shape, num_classes, weights=None, dropout=0.0):
    """LeNet-5 (LeCun et al. 1998): 5x5 convs of 6 and 16 filters, average pooling, 120-84 dense."""
    _no_weights("lenet", weights)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
    x = layers.Conv2D(6, 5, padding="same", activation="tanh", name="c1")(x)
    x = layers.AveragePooling2D(2, padding="same", name="s2")(x)
    x = layers.Conv2D(16, 5, padding="same", activation="tanh", name="c3")(x)
    x = layers.AveragePooling2D(2, padding="same", name="s4")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, activation="tanh", name="f5")(x)
    x = layers.Dense(84, activation="tanh", name="f6")(x)
    return keras.Model(inputs, classification_head(x, num_classes, dropout), name="lenet")


@MODELS.register("alexnet", task="classify", family="classic")
def build_alexnet(input_shape, num_classes, weights=None, dropout=0.5):
    """AlexNet-style (Krizhevsky et al. 2012): 11-5-3-3-3 convs, overlapping max-pooling,
    two 4096-unit dense layers with dropout; batch norm replaces local response normalisation,
    and the first stride adapts to small inputs."""
    _no_weights("alexnet", weights)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
    first_stride = 4 if min(input_shape[:2]) >= 128 else 1
    for index, (filters, kernel, strides, pool) in enumerate(
        [(96, 11, first_stride, True), (256, 5, 1, True), (384, 3, 1, False), (384, 3, 1, False), (256, 3, 1, True)],
        start=1,
    ):
        x = _conv_bn_relu(x, filters, kernel, strides, name=f"conv{index}")
        if pool:
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{index}")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    for index in (6, 7):
        x = layers.Dense(4096, activation="relu", name=f"fc{index}")(x)
        x = layers.Dropout(dropout, name=f"dropout{index}")(x)
    return keras.Model(inputs, classification_head(x, num_classes, 0.0), name="alexnet")


def _application_builder(name, min_side, family):
    def build(input_shape, num_classes, weights=None, dropout=0.2):
        if min(input_shape[:2]) < min_side:
            raise RecipeError(
                f"data.image_size: {name} needs inputs of at least {min_side}x{min_side}, got "
                f"{input_shape[0]}x{input_shape[1]}"
            )
        kwargs = {"include_preprocessing": True} if name == "mobilenet_v3_small" else {}
        inputs = keras.Input(input_shape, name="image")
        x = ImagenetPreprocessing(preprocessing(name), name="preprocess")(inputs)
        # pooling=None: pooled in the head, so the backbone's feature map stays visible (Grad-CAM)
        backbone = build_backbone(name, input_shape, weights, pooling=None, **kwargs)
        backbone.name = BACKBONE_LAYER
        if weights not in (None, "none"):
            set_trainable(backbone, True)  # batch norm keeps its ImageNet statistics, frozen or fine-tuned
        features = backbone(x)
        return keras.Model(inputs, classification_head(features, num_classes, dropout, normalise=True), name=name)

    build.__name__ = f"build_{name}"
    build.__doc__ = f"keras.applications {BACKBONES[name][0].__name__} backbone under a pooled softmax head."
    MODELS.register(name, task="classify", family=family, pretrained=True, backbone=name)(build)
    return build


APPLICATIONS = {  # name: (smallest input side, family)
    "mobilenet_v2": (32, "efficient"),
    "vgg16": (32, "classic"),
    "vgg19": (32, "classic"),
    "inception_v3": (75, "classic"),
    "resnet50": (32, "classic"),
    "resnet152": (32, "classic"),
    "mobilenet_v3_small": (32, "efficient"),
    "efficientnet_b0": (32, "efficient"),
}

for _name, (_min_side, _family) in APPLICATIONS.items():
    _application_builder(_name, _min_side, _family)
