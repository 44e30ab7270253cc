"""The instance model's parts on hand-made tensors: targets from ID maps, the loss's mask term, decoding."""

import math

import keras
import numpy as np
import tensorflow as tf

from imgpipe.models.centermask import (InstanceLoss, SpaceToDepth, build_centermask, decode_instances, instance_boxes,
                                      instance_id_map, prototypes_at_stride2)


def id_map(size, *objects):
    """int32 [size, size, 2] with (number, class, y0, y1, x0, x1) rectangles painted in order."""
    target = np.zeros((size, size, 2), np.int32)
    for number, cls, y0, y1, x0, x1 in objects:
        target[y0:y1, x0:x1] = (number, cls)
    return target


def test_boxes_classes_and_numbers_come_from_the_id_map_present_ones_first():
    first = id_map(16, (3, 1, 2, 6, 4, 12), (1, 0, 8, 16, 0, 3))  # number 2 is missing: cut by augmentation
    second = id_map(16, (2, 1, 0, 1, 0, 1))
    padded, numbers = instance_boxes(tf.constant(np.stack([first, second])))
    assert numbers.numpy().tolist() == [[1, 3, 0, 0], [2, 0, 0, 0]]
    np.testing.assert_array_equal(padded.numpy()[0, :2], [[0, 8, 3, 16, 0], [4, 2, 12, 6, 1]])
    np.testing.assert_array_equal(padded.numpy()[1, 0], [0, 0, 1, 1, 1])
    assert padded.numpy()[0, 2:, 4].tolist() == [-1, -1] and padded.numpy()[1, 1:, 4].tolist() == [-1, -1, -1]


def hand_made_outputs(size, objects, prototype_masks, coefficients, num_classes=1):
    """Raw outputs [1, size/4, size/4, C + 4 + 5P]: a heat peak, exact box and the given coefficients at each
    object's centre cell, and the given prototypes (masks at stride 2, +10 inside and -5 outside), packed."""
    cells = size // 4
    prototypes = len(prototype_masks)
    outputs = np.zeros((1, cells, cells, num_classes + 4 + prototypes), np.float32)
    outputs[..., :num_classes] = -10.0
    for (cls, x0, y0, x1, y1), weights in zip(objects, coefficients):
        cx, cy = (x0 + x1) / 2 / 4, (y0 + y1) / 2 / 4
        col, row = int(cx), int(cy)
        outputs[0, row, col, cls] = 10.0
        outputs[0, row, col, num_classes:num_classes + 4] = [math.log((x1 - x0) / 4), math.log((y1 - y0) / 4),
                                                              cx - col, cy - row]
        outputs[0, row, col, num_classes + 4:] = weights
    maps = np.stack([np.where(mask, 10.0, -5.0) for mask in prototype_masks], axis=-1)[None].astype(np.float32)
    packed = SpaceToDepth()(maps)
    np.testing.assert_array_equal(prototypes_at_stride2(packed), maps)  # the packing round-trips
    return np.concatenate([outputs, np.asarray(packed)], axis=-1)


def test_the_mask_term_rewards_the_true_masks_and_nothing_else_moves():
    # two touching 8x8 squares in a 16x16 image: mask cells (2 px) 0-3 and 4-7 of rows 0-3
    target = id_map(16, (1, 0, 0, 8, 0, 8), (2, 0, 0, 8, 8, 16))[None]
    left, right = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    left[:4, :4], right[:4, 4:] = True, True
    objects = [(0, 0, 0, 8, 8), (0, 8, 0, 16, 8)]
    right_way = hand_made_outputs(16, objects, [left, right], [[1.0, 0.0], [0.0, 1.0]])
    swapped = hand_made_outputs(16, objects, [left, right], [[0.0, 1.0], [1.0, 0.0]])
    loss, no_masks = InstanceLoss(1), InstanceLoss(1, mask_weight=0.0)
    assert float(loss(target, right_way)) < 0.05 < 1.0 < float(loss(target, swapped))
    assert float(no_masks(target, right_way)) == float(no_masks(target, swapped))


def test_decoding_gives_each_object_its_own_pixels_even_when_they_touch():
    left, right = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    left[:4, :4], right[:4, 4:] = True, True
    outputs = hand_made_outputs(16, [(0, 0, 0, 8, 8), (0, 8, 0, 16, 8)], [left, right], [[1.0, 0.0], [0.0, 1.0]])
    boxes, scores, classes, count, logits = decode_instances(tf.constant(outputs), 1, max_detections=5)
    assert int(count[0]) == 2
    order = np.argsort(boxes.numpy()[0, :2, 0])  # left object first
    np.testing.assert_allclose(boxes.numpy()[0, order], [[0, 0, 8, 8], [8, 0, 16, 8]], atol=1e-4)
    numbers = instance_id_map(logits, boxes, scores, count, (16, 16)).numpy()[0]
    expected = np.zeros((16, 16), np.int32)
    expected[:8, :8], expected[:8, 8:] = order[0] + 1, order[1] + 1
    np.testing.assert_array_equal(numbers, expected)


def test_overlapping_masks_go_to_the_higher_score():
    everywhere = np.ones((16, 16), bool)
    outputs = hand_made_outputs(32, [(0, 0, 0, 20, 20), (0, 12, 12, 32, 32)], [everywhere], [[1.0], [1.0]])
    outputs[0, 2, 2, 0] = 1.0  # the first object's peak is fainter than the second's (10)
    boxes, scores, _, count, logits = decode_instances(tf.constant(outputs), 1, max_detections=5, iou=0.9)
    numbers = instance_id_map(logits, boxes, scores, count, (32, 32)).numpy()[0]
    stronger = int(np.argmax(scores.numpy()[0])) + 1
    assert int(count[0]) == 2
    assert np.all(numbers[12:20, 12:20] == stronger) and np.all(numbers[:12, :12] == 3 - stronger)


def test_a_few_steps_of_training_lower_the_loss_on_a_tiny_batch():
    keras.utils.set_random_seed(0)  # the start would otherwise depend on the tests run before in the process
    rng = np.random.default_rng(0)
    targets = np.stack([id_map(32, (1, 0, 4, 14, 4, 14), (2, 0, 4, 14, 14, 26)),
                        id_map(32, (1, 0, 16, 30, 2, 12))])
    images = rng.uniform(0, 40, (2, 32, 32, 3)).astype(np.float32)
    images[targets[..., 0] > 0] += 180
    model = build_centermask((32, 32, 3), 1)
    model.compile(optimizer="adam", loss=InstanceLoss(1))
    losses = model.fit(images, targets, epochs=30, verbose=0).history["loss"]
    assert losses[-1] < 0.5 * losses[0]
