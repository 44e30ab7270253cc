"""The best epoch's weights on disk, also for a metric that is scored only every few epochs.

`keras.callbacks.ModelCheckpoint(save_best_only=True)` takes the first value it
sees as the best when it has none. Detection's mAP (`PeriodicScores`) is NaN
until its first scoring, nothing compares better than NaN, so the checkpoint
would keep the first epoch's weights for ever. `BestWeightsCheckpoint` treats a
NaN epoch as one without a value and passes over it, as `CeilingEarlyStopping`
does, so the file on disk and the weights early stopping restores are the same
epoch's.

Example:
    >>> BestWeightsCheckpoint("checkpoints/best.weights.h5", monitor="val_map50", mode="max",
    ...                       save_weights_only=True, save_best_only=True)
"""

import keras

from imgpipe.engine.early_stopping import is_unscored


class BestWeightsCheckpoint(keras.callbacks.ModelCheckpoint):
    """`keras.callbacks.ModelCheckpoint` that skips the epochs whose monitored value is NaN."""

    def on_epoch_end(self, epoch, logs=None):
        if is_unscored((logs or {}).get(self.monitor)):  # a NaN best would never be beaten
            return
        super().on_epoch_end(epoch, logs)
