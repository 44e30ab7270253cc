"""Early stopping that also stops when the monitored metric reaches the best value it can take,
and that waits through epochs whose metric was not scored (NaN).

Keras' `EarlyStopping` waits `patience` epochs for an improvement. Once the
validation accuracy (or mean IoU) is 1.0 no later epoch can beat it, and with
`restore_best_weights` the model it returns is that epoch's whatever follows:
the waiting epochs are paid for and thrown away. The built-in demo reached 1.0
at epoch 12 and trained on to epoch 22 (85 s, issue 20). Stopping at the
ceiling returns the same weights sooner.

A metric scored every few epochs (detection's mAP, `PeriodicScores`) is NaN
until its first scoring. Keras takes the first value it sees as the best when
it has none, and nothing compares better than NaN: monitored as is, such a
metric would stop training `patience` epochs in and restore the first epoch.
Here a NaN before the first value is no value, as a missing metric is; a NaN
after it counts as no improvement, as in Keras (a diverged loss still stops).

Example:
    >>> stop = CeilingEarlyStopping(monitor="val_accuracy", mode="max", patience=10, ceiling=1.0,
    ...                             restore_best_weights=True)
"""

import math

import keras


class CeilingEarlyStopping(keras.callbacks.EarlyStopping):
    """`keras.callbacks.EarlyStopping`, plus: stop at the end of the epoch whose `monitor` reaches `ceiling`.

    Args:
        ceiling: the best value the monitored metric can take (1.0 for an accuracy), or None for none.
        **kwargs: as `keras.callbacks.EarlyStopping` takes them.
    """

    def __init__(self, ceiling=None, **kwargs):
        super().__init__(**kwargs)
        self.ceiling = ceiling

    def get_monitor_value(self, logs):
        value = super().get_monitor_value(logs)
        return None if self.best is None and is_unscored(value) else value

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        current = self.get_monitor_value(logs)
        if self.ceiling is None or current is None or epoch < self.start_from_epoch:
            return
        if at_least_as_good(current, self.ceiling, self.mode):
            self.stopped_epoch = epoch
            self.model.stop_training = True


def is_unscored(value):
    """True for the NaN a metric scored every few epochs holds before its first scoring (`PeriodicScores`)."""
    return value is not None and math.isnan(float(value))


def at_least_as_good(value, other, mode):
    """True where `value` is as good as `other` or better, for a metric whose best is its `mode` ('min', 'max')."""
    return value <= other if mode == "min" else value >= other
