"""The compiled forward pass that scoring and the robustness card use: same answers, traced once, not per batch."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from imgpipe.engine.inference import compiled_forward
from imgpipe.engine.scoring import model_answers
from imgpipe.tasks.classify.task import ClassificationTask


class CountingLayer(keras.layers.Layer):
    """Counts how often its Python `call` runs: once per eager call, once per trace when compiled."""

    calls = 0

    def call(self, images):
        CountingLayer.calls += 1
        return images


def counting_classifier(classes=3):
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.GlobalAveragePooling2D()(CountingLayer()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(features))
    CountingLayer.calls = 0
    return model


def test_compiled_forward_answers_like_the_model_and_traces_at_most_twice():
    model = counting_classifier()
    forward = compiled_forward(model)
    batches = [np.random.default_rng(size).uniform(0, 255, (size, 8, 8, 3)).astype(np.float32)
               for size in (4, 4, 3, 2, 5, 4)]
    answers = [forward(batch, training=False).numpy() for batch in batches]
    assert CountingLayer.calls <= 2  # a first trace, then one with a free batch size
    for batch, answer in zip(batches, answers):
        np.testing.assert_allclose(answer, model(batch, training=False).numpy(), rtol=1e-6, atol=1e-7)
    assert forward.input_shape == model.input_shape and compiled_forward(forward) is forward
    with pytest.raises(ValueError, match="inference"):
        forward(batches[0], training=True)


def test_scoring_calls_the_model_compiled_not_once_per_batch():
    model = counting_classifier()
    images = np.random.default_rng(0).uniform(0, 255, (20, 8, 8, 3)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(20) % 3)).batch(3)
    answers, truths = model_answers(ClassificationTask(), model, dataset, {"class_names": ["a", "b", "c"]})
    assert len(answers) == 20 and truths[:4] == [0, 1, 2, 0]
    assert CountingLayer.calls <= 2  # 7 batches
    np.testing.assert_allclose(np.stack([answer["probabilities"] for answer in answers]),
                               model(images, training=False).numpy(), rtol=1e-5, atol=1e-6)
