"""Batch norm folded into the convolution before it: every model answers as trained, and only exact pairs fold."""

import logging

import keras
import numpy as np
import pytest

from imgpipe.models import MODELS
from imgpipe.models import fold_batch_norm as folding
from imgpipe.models.fold_batch_norm import FoldedBatchNorm, fold_batch_norm, foldable_pairs
from imgpipe.models.layer_tree import nested_layers


def trained_statistics(model, seed=0):
    """Batch norm statistics far from their initial values, so a wrong fold cannot pass for an identity."""
    rng = np.random.default_rng(seed)
    for layer in nested_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) if name in ("gamma", "moving_variance")
                               else rng.normal(0, 0.5, w.shape)
                               for name, w in zip((v.name for v in layer.weights), layer.get_weights())])
    return model


def answers(model, images):
    return [keras.ops.convert_to_numpy(value) for value in keras.tree.flatten(model(images, training=False))]


def assert_answers_alike(model, folded, images):
    for expected, answer in zip(answers(model, images), answers(folded, images)):
        np.testing.assert_allclose(answer, expected, atol=1e-4 * max(1.0, float(np.abs(expected).max())), rtol=1e-4)


def batch_norms_after_linear_convolutions(model):
    """Every batch norm reading a linear convolution's output, found without `foldable_pairs`."""
    return [layer for layer in nested_layers(model) if isinstance(layer, keras.layers.BatchNormalization)
            and isinstance(layer.input._keras_history.operation, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
            and layer.input._keras_history.operation.activation is keras.activations.linear]


@pytest.mark.parametrize("name, size, folds", [
    ("small_cnn", 32, 6), ("strided_cnn", 96, 7), ("unet", 32, 22), ("centernet", 64, None), ("centermask", 64, None),
    ("mobilenet_v2", 64, 52), ("unet_mobilenet_v2", 64, None), ("centernet_mobilenet_v2", 64, None),
    ("efficientnet_b0", 64, None),
])
def test_every_batch_norm_after_a_convolution_folds_and_the_answers_stay(name, size, folds):
    model = trained_statistics(MODELS.get(name)((size, size, 3), 3, weights=None))
    expected = batch_norms_after_linear_convolutions(model)
    folded = fold_batch_norm(model)
    assert expected and folded is not model
    assert folds is None or len(expected) == folds
    assert len([layer for layer in nested_layers(folded) if isinstance(layer, FoldedBatchNorm)]) == len(expected)
    assert batch_norms_after_linear_convolutions(folded) == []
    images = np.random.default_rng(1).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    assert_answers_alike(model, folded, images)


def test_only_exact_pairs_fold():
    inputs = keras.Input((8, 8, 3))
    shared = keras.layers.Conv2D(4, 3, padding="same", name="shared")(inputs)
    side = keras.layers.ReLU(name="side")(shared)  # a second reader of the convolution's output
    shared_norm = keras.layers.BatchNormalization(name="shared_norm")(shared)
    activated = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="activated")(inputs)
    activated_norm = keras.layers.BatchNormalization(name="activated_norm")(activated)
    tapped = keras.layers.Conv2D(4, 1, name="tapped")(inputs)  # its own output is also a model output
    tapped_norm = keras.layers.BatchNormalization(name="tapped_norm")(tapped)
    depthwise = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=True,
                                             name="depthwise")(inputs)
    depthwise_norm = keras.layers.BatchNormalization(name="depthwise_norm")(depthwise)
    merged = keras.layers.Concatenate()([side, shared_norm, activated_norm, tapped_norm, depthwise_norm])
    model = trained_statistics(keras.Model(inputs, [merged, tapped]))
    assert [(conv.name, norm.name) for conv, norm in foldable_pairs(model)] == [("depthwise", "depthwise_norm")]
    folded = fold_batch_norm(model)
    assert isinstance(folded.get_layer("depthwise_norm"), FoldedBatchNorm)
    assert isinstance(folded.get_layer("shared_norm"), keras.layers.BatchNormalization)
    assert_answers_alike(model, folded, np.random.default_rng(2).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32))


def test_a_compiled_model_folds_into_an_uncompiled_one_and_is_left_as_it_was():
    model = trained_statistics(MODELS.get("small_cnn")((16, 16, 3), 2, weights=None))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    folded = fold_batch_norm(model)
    assert not folded.compiled and model.compiled
    for old, now in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, now)


def test_a_fold_that_changes_the_answers_is_not_used(monkeypatch, caplog):
    model = trained_statistics(MODELS.get("small_cnn")((16, 16, 3), 2, weights=None))

    def without_shift(conv, norm):
        folded = original(conv, norm)
        folded.bias.assign(np.zeros(folded.bias.shape, np.float32))
        return folded

    original = folding._folded_convolution
    monkeypatch.setattr(folding, "_folded_convolution", without_shift)
    with caplog.at_level(logging.WARNING, logger="imgpipe.models.fold_batch_norm"):
        assert fold_batch_norm(model) is model
    assert "not folded" in caplog.text


def test_a_sequential_model_folds():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv"),
                              keras.layers.BatchNormalization(name="norm"), keras.layers.ReLU()])
    model = trained_statistics(model)
    folded = fold_batch_norm(model)
    assert isinstance(folded.get_layer("norm"), FoldedBatchNorm)
    assert_answers_alike(model, folded, np.random.default_rng(3).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32))


def test_under_mixed_precision_the_folded_pair_keeps_the_float32_it_computed_in():
    previous = keras.config.dtype_policy()
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, dtype="float32", name="conv")(inputs)
    model = trained_statistics(keras.Model(inputs, keras.layers.BatchNormalization(dtype="float32")(conv)))
    keras.config.set_dtype_policy("mixed_float16")
    try:
        folded = fold_batch_norm(model)
    finally:
        keras.config.set_dtype_policy(previous)
    assert [layer.dtype_policy.compute_dtype for layer in folded.layers[1:]] == ["float32", "float32"]
    images = np.random.default_rng(4).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    assert folded(images).dtype == "float32"
    np.testing.assert_allclose(answers(folded, images)[0], answers(model, images)[0], atol=1e-3, rtol=1e-5)


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3, padding="same")

    def call(self, images):
        return self.conv(images)


def test_a_model_holding_a_subclassed_model_is_left_as_it_is():
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3, padding="same")(inputs))
    model = keras.Model(inputs, Subclassed()(features))
    assert fold_batch_norm(model) is model


def test_a_fold_that_fails_costs_a_warning_not_the_run(monkeypatch, caplog):
    model = trained_statistics(MODELS.get("small_cnn")((16, 16, 3), 2, weights=None))

    def broken(conv, norm):
        raise ValueError("a quantized kernel")

    monkeypatch.setattr(folding, "_folded_convolution", broken)
    with caplog.at_level(logging.WARNING, logger="imgpipe.models.fold_batch_norm"):
        assert fold_batch_norm(model) is model
    assert "a quantized kernel" in caplog.text
