"""Perceptual losses for style transfer: a VGG loss network, Gram matrices, content, style and TV terms.

The losses (Gatys et al. 2016; Johnson et al. 2016), each made relative so the
three weights mean the same thing whatever the loss network's feature scale
(ImageNet or random weights):

- content: mean over the content layers of mean((φ(y) - φ(x))²) / mean(φ(x)²);
- style: mean over the style layers of ||G(y) - G(s)||²_F / ||G(s)||²_F, with
  the Gram matrix G(φ) = φᵀφ / (H·W·C) of a layer's [H·W, C] features;
- total variation: mean |y[i+1, j] - y[i, j]| + mean |y[i, j+1] - y[i, j]| of
  the image in 0..1 (anisotropic L1), which keeps the result smooth.

`StyleTransferModel` wraps a transformation network and the frozen loss
network so that plain `model.fit` trains it (the loss model overrides
`compute_loss`); its call is the transformation network alone.

Example:
    >>> features = loss_network("vgg16", "random", seed=0)
    >>> grams = style_grams(features, style_image)
    >>> model = StyleTransferModel(transformer, features, grams, LossWeights(1.0, 10.0, 1.0))
"""

import dataclasses
import pathlib

import keras
import numpy as np
import tensorflow as tf

from imgpipe.engine.weights import resolve_weights
from imgpipe.errors import RecipeError
from imgpipe.models.backbones import build_backbone
from imgpipe.models.layers import ImagenetPreprocessing

# (content layers, style layers) of each loss network.
LAYERS = {
    "vgg16": (("block3_conv3",), ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3")),
    "vgg19": (("block4_conv2",), ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")),
}
APPLICATIONS = {"vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19}


@dataclasses.dataclass(frozen=True)
class LossWeights:
    content: float
    style: float
    tv: float


def _randomise(network, seed):
    """He-normal kernels from a seeded generator and zero biases: a fixed random-feature VGG.

    He scaling keeps the feature variance roughly constant through the ReLU
    stack, so deep layers still carry texture statistics.
    """
    rng = np.random.default_rng(seed)
    for layer in network.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            fan_in = np.prod(kernel.shape[:3])
            layer.set_weights([rng.normal(0.0, np.sqrt(2.0 / fan_in), kernel.shape).astype("float32"),
                               np.zeros_like(bias)])


def loss_network(name="vgg16", weights="imagenet", seed=1337, weights_dir=None):
    """A frozen model: 0..255 RGB images -> [content features..., style features...] (float32).

    Args:
        name: 'vgg16' or 'vgg19' (`keras.applications`).
        weights: 'imagenet' (found as every backbone's are: the weights folder, then Keras;
            `imgpipe.engine.weights`), 'random' (fixed He-normal weights drawn from `seed`;
            lower quality, needs no download), or the path of a VGG weights file without the top.
        seed: the random weights' seed.
        weights_dir: the weights folder (default: IMGPIPE_WEIGHTS_DIR).
    """
    if name not in LAYERS:
        raise RecipeError(f"stylize.loss_network: expected one of {', '.join(LAYERS)}, got {name!r}")
    content_layers, style_layers = LAYERS[name]
    if weights == "random":
        network = APPLICATIONS[name](include_top=False, weights=None)
        _randomise(network, seed)
    elif weights == "imagenet" or pathlib.Path(str(weights)).is_file():
        try:
            path = resolve_weights(name, weights, weights_dir).path if weights == "imagenet" else str(weights)
            network = build_backbone(name, None, path)
        except RecipeError as error:
            reason = str(error).removeprefix("model.weights: ").split("; put ")[0]
            raise RecipeError(f"stylize.loss_weights: cannot load {weights} weights for the {name} loss network "
                              f"({reason}); pass --loss-weights random to train against a fixed random-feature "
                              "VGG (lower quality), or give --weights-dir") from None
    else:
        raise RecipeError(f"stylize.loss_weights: expected imagenet, random or a weights file, got {weights!r}")
    network.trainable = False
    inputs = keras.Input((None, None, 3), name="image")
    x = ImagenetPreprocessing("caffe", dtype="float32", name="preprocess")(inputs)
    # Only the layers up to the deepest tap are kept, so block 5 of VGG16 costs nothing.
    tapped = keras.Model(network.input, [network.get_layer(n).output for n in content_layers + style_layers])
    outputs = tapped(x)
    model = keras.Model(inputs, outputs, name=f"{name}_loss_network")
    model.trainable = False
    model.content_count = len(content_layers)
    return model


def gram_matrix(features):
    """[B, H, W, C] features -> [B, C, C] Gram matrices, divided by H·W·C."""
    features = tf.cast(features, tf.float32)
    shape = tf.shape(features)
    flat = tf.reshape(features, [shape[0], -1, shape[3]])
    size = tf.cast(shape[1] * shape[2] * shape[3], tf.float32)
    return tf.matmul(flat, flat, transpose_a=True) / size


def style_grams(features, style_image):
    """Gram matrices [1, C, C] of the style layers for one uint8 or float style image [H, W, 3]."""
    outputs = features(tf.cast(style_image, tf.float32)[None])
    return [tf.constant(gram_matrix(f)) for f in outputs[features.content_count:]]


def content_loss(generated, original):
    """Relative squared error of content features, per image: [B]."""
    generated, original = tf.cast(generated, tf.float32), tf.cast(original, tf.float32)
    error = tf.reduce_mean(tf.square(generated - original), axis=[1, 2, 3])
    return error / (tf.reduce_mean(tf.square(original), axis=[1, 2, 3]) + 1e-8)


def style_loss(generated_features, grams):
    """Relative squared Frobenius error of Gram matrices, per image: [B]."""
    g = gram_matrix(generated_features)
    return tf.reduce_sum(tf.square(g - grams), axis=[1, 2]) / (tf.reduce_sum(tf.square(grams)) + 1e-12)


def total_variation(images):
    """Anisotropic L1 total variation of 0..255 images, measured in 0..1 units, per image: [B]."""
    images = tf.cast(images, tf.float32) / 255.0
    down = tf.reduce_mean(tf.abs(images[:, 1:] - images[:, :-1]), axis=[1, 2, 3])
    right = tf.reduce_mean(tf.abs(images[:, :, 1:] - images[:, :, :-1]), axis=[1, 2, 3])
    return down + right


def content_targets(features, content):
    """The content-layer features of `content` images, fixed (no gradient): what `perceptual_terms` compares."""
    outputs = features(tf.cast(content, tf.float32))
    return [tf.stop_gradient(output) for output in outputs[: features.content_count]]


def identity_style_loss(features, images, grams):
    """Per-image style loss of the images as they are: the baseline a stylised result is compared with."""
    outputs = features(tf.cast(images, tf.float32))[features.content_count:]
    return tf.add_n([style_loss(g, s) for g, s in zip(outputs, grams)]) / len(grams)


def perceptual_terms(features, generated, targets, grams):
    """Per-image (content, style, tv) losses [B] of `generated` images.

    Args:
        features: the loss network.
        generated: images being judged, 0..255 [B, H, W, 3].
        targets: `content_targets` of the content images (computed once where they do not change).
        grams: the style's Gram matrices (`style_grams`).
    """
    generated_features = features(tf.cast(generated, tf.float32))
    count = features.content_count
    content_term = tf.add_n([content_loss(g, c) for g, c in zip(generated_features[:count], targets)]) / count
    style_term = tf.add_n([style_loss(g, s) for g, s in zip(generated_features[count:], grams)]) / len(grams)
    return content_term, style_term, total_variation(generated)


class StyleTransferModel(keras.Model):
    """`transformer` trained by `model.fit` against `features` (frozen) and the style's `grams`.

    Reports `content_loss`, `style_loss` and `tv_loss` besides the weighted `loss`.
    """

    def __init__(self, transformer, features, grams, weights, **kwargs):
        super().__init__(name=kwargs.pop("name", "style_transfer"), **kwargs)
        self.transformer = transformer
        self.features = features
        self.grams = grams
        self.loss_weights_ = weights
        self.content_tracker = keras.metrics.Mean(name="content_loss")
        self.style_tracker = keras.metrics.Mean(name="style_loss")
        self.tv_tracker = keras.metrics.Mean(name="tv_loss")

    def call(self, images, training=False):
        return self.transformer(images, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        content, style, tv = perceptual_terms(self.features, y_pred, content_targets(self.features, x), self.grams)
        self.content_tracker.update_state(content)
        self.style_tracker.update_state(style)
        self.tv_tracker.update_state(tv)
        weights = self.loss_weights_
        total = tf.reduce_mean(weights.content * content + weights.style * style + weights.tv * tv)
        # Each replica's mean is averaged over replicas by summing scaled gradients.
        return total / tf.distribute.get_strategy().num_replicas_in_sync
