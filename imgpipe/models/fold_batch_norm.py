"""Batch normalisation folded into the convolution before it: the same answers, computed faster.

At inference a batch-norm layer is a fixed scale and shift per channel, and Keras 3 runs it as two
elementwise passes over the whole feature map. After a convolution with no activation, that
scale and shift can go into the convolution's kernel and bias instead:
`kernel * s` and `(bias - mean) * s + beta`, with `s = gamma / sqrt(variance + epsilon)`.
TF Serving and `tf.function` run a SavedModel's graph as written, and grappler does not fold
Keras 3's batch norm. Measured in a `tf.function`
on 2 cores, batches of 16: MobileNetV2 at 200 px 4.4 ms an image as trained, 2.4 ms folded;
small_cnn at 224 px 11.5-11.8 and 9.2-9.3 ms.

Only pairs whose folding is exact are folded: a `Conv2D` or `DepthwiseConv2D` with no
activation, computing in float32, whose output is not a model's output and goes only to a
channels-last `BatchNormalization`. Anything else stays as it was, and a model that holds a
subclassed model (whose insides a fold cannot see, and which the folded graph would call a second
time) is returned as it is. The folded model reuses every other layer (and its weights) of the
trained one, so it costs only the new kernels. It is a model for inference only: training it would
train the folded kernels.

Example:
    >>> served = fold_batch_norm(model)
    >>> np.allclose(served(images), model(images, training=False), atol=1e-4)
    True
"""

import contextlib
import logging

import keras
import numpy as np
from keras.src.models.functional import Functional

from imgpipe.models.layer_tree import nested_layers

log = logging.getLogger(__name__)

FOLDABLE = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
CHECK_TOLERANCE = 1e-3  # of the largest answer; float32 rounding in MobileNetV2 is about 1e-6 of it


@keras.saving.register_keras_serializable(package="imgpipe")
class FoldedBatchNorm(keras.layers.Layer):
    """Where a batch norm was: it passes its input on, since the convolution before it now does its work.

    Example:
        >>> FoldedBatchNorm(name="bn_Conv1", dtype="float32")(features) is features
        True
    """

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def fold_batch_norm(model):
    """`model` with each foldable batch norm folded into its convolution (see the module docstring).

    Returns `model` itself when nothing can be folded, when it is not a functional or sequential
    model or holds a subclassed one, or (with a warning) when folding fails or the folded model's
    answers to a random batch differ from the trained model's: a fold only saves time, so it never
    costs a run.

    Example:
        >>> served = fold_batch_norm(model)
        >>> foldable_pairs(served)
        []
    """
    if not isinstance(model, (Functional, keras.Sequential)) or _holds_subclassed_model(model):
        return model
    pairs = foldable_pairs(model)
    if not pairs:
        return model
    folded_convs = {id(conv): norm for conv, norm in pairs}
    folded_norms = {id(norm) for _, norm in pairs}

    def clone(layer):
        if id(layer) in folded_convs:
            return _folded_convolution(layer, folded_convs[id(layer)])
        if id(layer) in folded_norms:
            return FoldedBatchNorm(name=layer.name, dtype=layer.dtype_policy)
        return layer

    strategy = getattr(model, "distribute_strategy", None)
    try:
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            folded = keras.models.clone_model(_uncompiled_view(model), clone_function=clone, recursive=True)
        difference = _largest_difference(model, folded)
    except Exception as error:  # noqa: BLE001 - any model the fold does not understand is used as trained
        log.warning("batch norm not folded into the convolutions (%s: %s); the model is used as trained",
                    type(error).__name__, str(error).splitlines()[0][:160] if str(error) else "")
        return model
    if difference is None:
        return folded
    log.warning("batch norm not folded into the convolutions: the folded model's answers differed by %.3g; "
                "the model is used as trained", difference)
    return model


def _uncompiled_view(model):
    """A functional model over the same graph, not compiled: `clone_model` compiles its clone like the model.

    A Sequential's `output` is undefined in Keras 3.15 even once called; its `outputs` list is not.
    """
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs[0], model.outputs[0], name=model.name)
    return keras.Model(model.input, model.output, name=model.name)


def _holds_subclassed_model(model):
    return any(isinstance(layer, keras.Model) and not isinstance(layer, (Functional, keras.Sequential))
               for layer in nested_layers(model))


def foldable_pairs(model):
    """(convolution, batch norm) pairs of `model` and of the functional models inside it that fold exactly.

    Example:
        >>> len(foldable_pairs(keras.applications.MobileNetV2(include_top=False, weights=None)))
        52
    """
    models = list(_functional_models(model))
    outputs = {id(tensor) for network in models for tensor in keras.tree.flatten(network.outputs)}
    pairs = []
    for network in models:
        for layer in network.layers:
            conv = _foldable_convolution(layer, outputs)
            if conv is not None:
                pairs.append((conv, layer))
    return pairs


def _functional_models(model):
    if isinstance(model, (Functional, keras.Sequential)):
        yield model
        for layer in model.layers:
            yield from _functional_models(layer)


def _foldable_convolution(norm, model_outputs):
    """The convolution `norm` can fold into, or None."""
    if not isinstance(norm, keras.layers.BatchNormalization) or len(norm._inbound_nodes) != 1:
        return None
    if norm.axis not in (-1, len(norm.input.shape) - 1) or norm.compute_dtype != "float32":
        return None
    inputs = norm._inbound_nodes[0].input_tensors
    if len(inputs) != 1:
        return None
    conv = inputs[0]._keras_history.operation
    if type(conv) not in FOLDABLE:  # not isinstance: a subclass may compute differently
        return None
    if (len(conv._inbound_nodes) != 1 or len(conv._outbound_nodes) != 1 or conv.data_format != "channels_last"
            or conv.activation is not keras.activations.linear or conv.compute_dtype != "float32"
            or id(inputs[0]) in model_outputs):
        return None
    return conv


def _folded_convolution(conv, norm):
    """A new convolution like `conv`, with a bias, computing `norm(conv(x))` in one layer."""
    config = {**conv.get_config(), "use_bias": True, "bias_initializer": "zeros"}
    folded = type(conv).from_config(config)
    folded.build(conv.input.shape)
    kernel = keras.ops.convert_to_numpy(conv.kernel).astype(np.float64)
    bias = keras.ops.convert_to_numpy(conv.bias).astype(np.float64) if conv.use_bias else 0.0
    mean = keras.ops.convert_to_numpy(norm.moving_mean).astype(np.float64)
    variance = keras.ops.convert_to_numpy(norm.moving_variance).astype(np.float64)
    gamma = keras.ops.convert_to_numpy(norm.gamma).astype(np.float64) if norm.scale else 1.0
    beta = keras.ops.convert_to_numpy(norm.beta).astype(np.float64) if norm.center else 0.0
    scale = gamma / np.sqrt(variance + norm.epsilon)  # per output channel
    # Conv2D's kernel is (h, w, in, out); DepthwiseConv2D's (h, w, in, multiplier), output channel in*m + k.
    folded_kernel = kernel * scale.reshape(kernel.shape[2:]) if isinstance(conv, keras.layers.DepthwiseConv2D) \
        else kernel * scale
    folded.set_weights([folded_kernel.astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)])
    return folded


def _largest_difference(model, folded):
    """None when both models answer a random batch alike; else their largest difference."""
    _, *image_shape = model.input_shape
    shape = [2] + [64 if size is None else size for size in image_shape]
    images = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    expected = [keras.ops.convert_to_numpy(value) for value in keras.tree.flatten(model(images, training=False))]
    answers = [keras.ops.convert_to_numpy(value) for value in keras.tree.flatten(folded(images, training=False))]
    largest = max(1.0, max(float(np.abs(value).max()) for value in expected))
    difference = max(float(np.abs(a - e).max()) for a, e in zip(answers, expected))
    return None if difference <= CHECK_TOLERANCE * largest else difference
