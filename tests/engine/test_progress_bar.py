"""The first epoch's progress bar counts to the trainer's step count, not `1/Unknown`."""

import keras
import numpy as np
import tensorflow as tf

from imgpipe.engine.progress_bar import KnownStepsProgbarLogger


def fit_output(capsys, callbacks):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    # A filter hides the length from tf.data, as the pipeline's dropped files do.
    dataset = tf.data.Dataset.from_tensor_slices((np.ones((12, 2), np.float32), np.ones((12, 1), np.float32)))
    dataset = dataset.filter(lambda x, y: True).batch(4)
    assert dataset.cardinality() == tf.data.UNKNOWN_CARDINALITY
    model.fit(dataset, epochs=1, verbose=1, callbacks=callbacks, shuffle=False)
    return capsys.readouterr().out


def test_the_first_epoch_counts_to_the_known_steps(capsys):
    assert "1/Unknown" in fit_output(capsys, [])  # what Keras shows without it
    shown = fit_output(capsys, [KnownStepsProgbarLogger(steps=3)])
    assert "1/3" in shown and "3/3" in shown and "Unknown" not in shown
