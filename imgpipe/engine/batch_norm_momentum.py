"""Batch-norm momentum fitted to the epoch, so validation is scored with statistics of the trained network.

A batch-norm layer normalises by the batch's own statistics in training and by
its moving averages in inference, which start at mean 0 and variance 1 and move
towards the batch's by `1 - momentum` a step. With momentum 0.9 the start
still weighs 0.9^9 = 39 % after an epoch of 9 steps (288 images in batches of
32), and 6 % after three: on the 288 raccoon crops the training accuracy rose
from the first epoch while validation stayed at chance for three (issue 20).
Here every batch norm that learns from this run gets at most the momentum that
leaves `START_WEIGHT` of the start after the first epoch, so the first epoch's
validation already normalises as training did. Longer epochs keep the
builders' momentum (0.9 from 44 steps on), which averages over more batches.

Example:
    >>> fit_batch_norm_momentum(model, steps_per_epoch=9)
    {'layers': 7, 'momentum': 0.599}
"""

import keras

from imgpipe.models.layer_tree import nested_layers

# What is left of the initial statistics (mean 0, variance 1) in the moving averages after the first epoch.
START_WEIGHT = 0.01


def epoch_momentum(steps_per_epoch, momentum):
    """The lower of `momentum` and the momentum leaving `START_WEIGHT` of the start after `steps_per_epoch` steps."""
    return min(momentum, START_WEIGHT ** (1 / max(1, steps_per_epoch)))


def fit_batch_norm_momentum(model, steps_per_epoch):
    """Lowers the momentum of `model`'s trainable batch norms to `epoch_momentum`; returns what it changed.

    A frozen backbone's batch norms are left alone: they run in inference mode and never update.
    """
    changed = {}
    for layer in nested_layers(model):
        if not isinstance(layer, keras.layers.BatchNormalization) or not layer.trainable:
            continue
        momentum = epoch_momentum(steps_per_epoch, layer.momentum)
        if momentum < layer.momentum:
            layer.momentum = momentum
            changed[layer.name] = momentum
    return {"layers": len(changed), "momentum": round(min(changed.values()), 3) if changed else None}
