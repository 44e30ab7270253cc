"""After the warm-up, the backbone moves at a tenth of the rate, the layers built on it at the full rate."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from imgpipe.engine.backbone_rate import BackboneRateAdamW
from imgpipe.engine.trainer import select_strategy


def first_step_moves(strategy):
    """How far one AdamW step moves each weight of (backbone Dense, head Dense), gradients all ones.

    Adam's first step moves every weight by the rate itself (m / sqrt(v) = 1), whatever the gradient's size.
    """
    with strategy.scope():
        backbone, head = keras.layers.Dense(3, name="backbone"), keras.layers.Dense(2, name="head")
        model = keras.Sequential([keras.Input((4,)), backbone, head])
        optimizer = BackboneRateAdamW(backbone.trainable_variables, 0.1, learning_rate=0.01, weight_decay=0.0)
        optimizer.build(model.trainable_variables)
    before = [variable.numpy().copy() for variable in model.trainable_variables]

    @tf.function
    def step():
        def one_replica():
            optimizer.apply_gradients([(tf.ones_like(variable), variable) for variable in model.trainable_variables])
        strategy.run(one_replica)

    step()
    moved = [np.abs(variable.numpy() - start) for variable, start in zip(model.trainable_variables, before)]
    return moved[:2], moved[2:]  # backbone kernel and bias, head kernel and bias


@pytest.mark.parametrize("devices", ["auto", 2])
def test_the_backbone_steps_at_a_tenth_of_the_rate_of_the_head(devices):
    # The trainer's own strategy: a second MirroredStrategy over the same devices in one process
    # would collide with the first one's collectives (see trainer._mirrored).
    strategy = select_strategy(devices)
    assert strategy.num_replicas_in_sync == (2 if devices == 2 else 1)
    backbone_moves, head_moves = first_step_moves(strategy)
    for moved in head_moves:
        np.testing.assert_allclose(moved, 0.01, rtol=1e-4)
    for moved in backbone_moves:
        np.testing.assert_allclose(moved, 0.001, rtol=1e-4)
