"""Keras' progress bar, told how many steps an epoch has before the first one ends.

imgpipe's pipeline drops files that fail to decode (`ignore_errors`) and
filters, so `tf.data` cannot know its length and Keras shows `1/Unknown`
through the whole first epoch, the one a new user watches. Asserting a
cardinality would fail the run when a corrupt file is dropped; instead the bar
takes the step count the trainer computed from the files whose headers were
read. If a file is dropped after all, an epoch's bar jumps over the missing
step at its end.

Example:
    >>> model.fit(train_ds, epochs=5, callbacks=[KnownStepsProgbarLogger(steps=13)])
"""

import keras


class KnownStepsProgbarLogger(keras.callbacks.ProgbarLogger):
    """`keras.callbacks.ProgbarLogger` whose first epoch counts to `steps` when the dataset has no length.

    Args:
        steps: int, training batches per epoch, or None to keep Keras' behaviour.
    """

    def __init__(self, steps=None):
        super().__init__()
        self.steps = steps

    def set_params(self, params):
        super().set_params(params)
        if self.target is None and self.steps:
            self.target = int(self.steps)
