"""The `keras.applications` backbones the builders share, and loading their pretrained weights.

Each backbone has a name (the one its weights file is called by:
`<name>_imagenet_notop.weights.h5`), its `keras.applications` constructor and
the input scaling its ImageNet weights expect. `build_backbone` builds it
headless and loads weights: a file (what `imgpipe.engine.weights` resolves
`model.weights` to), `imagenet` (Keras' own download), or none.

Example:
    >>> network = build_backbone("mobilenet_v2", (160, 160, 3), "weights/mobilenet_v2_imagenet_notop.weights.h5")
    >>> network.output_shape
    (None, 5, 5, 1280)
"""

import os
import re

import keras

from imgpipe.errors import RecipeError
from imgpipe.models.layer_tree import nested_layers

# name: (keras.applications constructor, input scaling of its ImageNet weights (ImagenetPreprocessing mode))
BACKBONES = {
    "mobilenet_v2": (keras.applications.MobileNetV2, "tf"),
    "vgg16": (keras.applications.VGG16, "caffe"),
    "vgg19": (keras.applications.VGG19, "caffe"),
    "inception_v3": (keras.applications.InceptionV3, "tf"),
    "resnet50": (keras.applications.ResNet50, "caffe"),
    "resnet152": (keras.applications.ResNet152, "caffe"),
    "mobilenet_v3_small": (keras.applications.MobileNetV3Small, "none"),
    "efficientnet_b0": (keras.applications.EfficientNetB0, "none"),
}


def weights_file_name(backbone):
    """The file a weights folder holds for `backbone` (as in ../shared/weights)."""
    return f"{backbone}_imagenet_notop.weights.h5"


def preprocessing(backbone):
    """The `ImagenetPreprocessing` mode the backbone's ImageNet weights expect."""
    return BACKBONES[backbone][1]


def build_backbone(backbone, input_shape, weights=None, **kwargs):
    """The headless `keras.applications` network, with `weights` (None/'none', 'imagenet' or a weights file).

    A file that does not fit the network is a `RecipeError` naming the file
    and the first layer that did not take its weights.
    """
    application = BACKBONES[backbone][0]
    if weights in (None, "none") or weights == "imagenet":
        return application(include_top=False, weights=None if weights in (None, "none") else weights,
                           input_shape=input_shape, **kwargs)
    network = application(include_top=False, weights=None, input_shape=input_shape, **kwargs)
    load_weights_file(network, weights, backbone)
    return network


def tapped_backbone(backbone, input_shape, weights, taps, name="backbone"):
    """The backbone as one layer whose outputs are its feature maps `taps` (for decoders and detection heads).

    A pretrained one keeps its batch norm frozen from the start (`set_trainable`).
    """
    network = build_backbone(backbone, input_shape, weights)
    tapped = keras.Model(network.input, [network.get_layer(tap).output for tap in taps], name=name)
    if weights not in (None, "none"):
        set_trainable(tapped, True)
    return tapped


def set_trainable(backbone, trainable, top_fraction=1.0):
    """Freezes or unfreezes a pretrained backbone; its batch norm layers stay frozen either way.

    Frozen, a Keras 3 `BatchNormalization` runs in inference mode, so the
    ImageNet statistics are kept while the rest fine-tunes (Keras' transfer-
    learning guide). The guide's `backbone(x, training=False)` does not do it
    here: in Keras 3.15 an outer `training=True` overrides the `training=False`
    given when the functional graph was built (seen on a plain layer too), and
    a few hundred images then overwrite the statistics.

    With `top_fraction` below 1, only that share of the backbone's layers,
    counted from its output, is unfrozen (TensorFlow's transfer-learning
    tutorial fine-tunes MobileNetV2 from layer 100 of 154 on): the early, generic
    layers keep their ImageNet weights, and no gradient is computed for them.

    Example:
        >>> set_trainable(model.get_layer("backbone"), True)
        >>> set_trainable(model.get_layer("backbone"), True, top_fraction=0.35)
    """
    backbone.trainable = trainable
    layers = list(getattr(backbone, "layers", []))
    frozen_below = round(len(layers) * (1.0 - top_fraction)) if trainable else 0
    for layer in layers[:frozen_below]:
        layer.trainable = False
    for layer in nested_layers(backbone):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def load_weights_file(network, path, backbone):
    """`network.load_weights(path)`, with a one-line error naming the file and the first mismatched layer."""
    if not os.path.isfile(path):
        raise RecipeError(f"model.weights: {path}: no such weights file")
    try:
        network.load_weights(path)
    except OSError as error:  # h5py: not an HDF5 file at all
        raise RecipeError(f"model.weights: {path}: not a Keras weights file ({str(error).splitlines()[0][:120]})") \
            from None
    except (ValueError, KeyError) as error:
        text = str(error)
        layer = re.search(r"name=([^,>]+)", text)
        reason = next((line for line in text.splitlines()[1:] if line.strip()), text.splitlines()[0])
        raise RecipeError(f"model.weights: {path} does not fit the {backbone} backbone (first layer that does "
                          f"not match: {layer.group(1) if layer else '?'}; {reason.strip()[:160]})") from None
