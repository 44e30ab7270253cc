"""CenterNet with prototype masks: every detected object also gets its own mask (instance segmentation).

Why this design: YOLACT's idea (Bolya et al. 2019) on CenterNet's heads. A
mask is a weighted sum of P prototype maps shared by the whole image, with
the weights (coefficients) read at the object's centre cell, where CenterNet
already reads its size. Everything is dense convolution, a gather and an
einsum, so the model exports as plain TF ops (and to LiteRT, ONNX, OpenVINO)
and trains in minutes on a CPU; Mask R-CNN needs RoIAlign and a second stage,
and CondInst generates a small network per object, neither of which exports
as cleanly.

The network outputs one float32 tensor [B, H/4, W/4, C + 4 + 5P]: CenterNet's
C heat-map logits and 4 box channels, then P mask coefficients, then P
prototypes at stride 2 packed four cells to a stride-4 cell (`SpaceToDepth`). Training targets are instance-ID maps [B, H, W, 2] (instance
number, class), from which boxes, centres and masks are derived in the loss.

Example:
    >>> model = build_centermask((256, 256, 3), num_classes=1)
    >>> boxes, scores, classes, count, mask_logits = decode_instances(model(images), num_classes=1)
"""

import keras
import tensorflow as tf
from keras import layers

from imgpipe.errors import RecipeError
from imgpipe.models import MODELS
from imgpipe.models.centernet import (MAX_DETECTIONS, MIN_SCORE, NMS_IOU, PRETRAINED_BACKBONES, STRIDE,
                                      centernet_loss, detection_heads, peak_candidates, pretrained_features,
                                      require_multiple_of_32, scratch_features, stride4_features)

PROTOTYPES = 16  # YOLACT uses 32 at 550 px; 16 held the demo's and membrane's shapes at 64-256 px
MASK_STRIDE = 2  # prototypes at half the input's resolution: at stride 4 a 64 px image's 16 px shape is 4 cells
MASK_THRESHOLD = 0.5
PAINT_CHUNK = 8  # masks resized at once when painting: 8 maps of a megapixel are 32 MB of floats
STRIDE2_TAPS = {"mobilenet_v2": "block_1_expand_relu", "resnet50": "conv1_relu"}  # beside PRETRAINED_BACKBONES'


@keras.saving.register_keras_serializable(package="imgpipe")
class SpaceToDepth(layers.Layer):
    """[B, 2h, 2w, P] -> [B, h, w, 4P]: the stride-2 prototypes ride in the stride-4 output tensor
    (`prototypes_at_stride2` undoes it), so the model keeps one output and the loss one y_pred."""

    def call(self, x):
        height, width, channels = x.shape[1] // 2, x.shape[2] // 2, x.shape[3]
        x = keras.ops.reshape(x, (-1, height, 2, width, 2, channels))
        x = keras.ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return keras.ops.reshape(x, (-1, height, width, 4 * channels))


def prototypes_at_stride2(packed):
    """[B, h, w, 4P] packed by `SpaceToDepth` -> the prototypes [B, 2h, 2w, P]."""
    batch, height, width = tf.shape(packed)[0], tf.shape(packed)[1], tf.shape(packed)[2]
    channels = packed.shape[-1] // 4
    x = tf.reshape(packed, [batch, height, width, 2, 2, channels])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, [batch, height * 2, width * 2, channels])


def _mask_heads(x, stride2, prototypes, width):
    """P coefficients per stride-4 cell (what each object reads at its centre) and P prototype maps at
    stride 2, from the stride-4 features upsampled and joined by the backbone's stride-2 features."""
    h = layers.Conv2D(width, 3, padding="same", activation="relu", name="coefficient_head_conv")(x)
    coefficients = layers.Conv2D(prototypes, 1, name="coefficient_head")(h)
    p = layers.UpSampling2D(2, interpolation="bilinear", name="prototype_up")(x)
    skip = layers.Conv2D(width, 1, use_bias=False, name="prototype_lateral")(stride2)
    p = layers.Add(name="prototype_merge")([p, skip])
    p = layers.Conv2D(width, 3, padding="same", activation="relu", name="prototype_conv_a")(p)
    p = layers.Conv2D(width, 3, padding="same", activation="relu", name="prototype_conv_b")(p)
    return [coefficients, SpaceToDepth(name="prototypes")(layers.Conv2D(prototypes, 1, name="prototype_maps")(p))]


def _instance_outputs(features, num_classes, prototypes, width=64):
    """`features`: maps at strides 2, 4, 8, 16 and 32."""
    x = stride4_features(features[1:], width)
    return layers.Concatenate(dtype="float32", name="instances")(
        detection_heads(x, num_classes, width) + _mask_heads(x, features[0], prototypes, width))


@MODELS.register("centermask", task="instances", family="from scratch")
def build_centermask(input_shape, num_classes, weights=None, dropout=0.0, prototypes=PROTOTYPES):
    """CenterNet's small from-scratch backbone with the prototype mask heads."""
    if weights not in (None, "none"):
        raise RecipeError("model.weights: centermask trains from scratch; use centermask_mobilenet_v2 for imagenet")
    require_multiple_of_32("centermask", input_shape)
    inputs = keras.Input(input_shape, name="image")
    features = scratch_features(inputs, with_stride2=True)
    return keras.Model(inputs, _instance_outputs(features, num_classes, prototypes), name="centermask")


def _pretrained_builder(name, backbone_name, taps):
    def build(input_shape, num_classes, weights=None, dropout=0.0, prototypes=PROTOTYPES):
        require_multiple_of_32(name, input_shape)
        inputs = keras.Input(input_shape, name="image")
        features = pretrained_features(inputs, backbone_name, (STRIDE2_TAPS[backbone_name],) + taps, weights)
        return keras.Model(inputs, _instance_outputs(features, num_classes, prototypes), name=name)

    build.__name__ = f"build_{name}"
    build.__doc__ = f"CenterNet and prototype mask heads on a keras.applications {backbone_name} backbone."
    MODELS.register(name, task="instances", family="pretrained", pretrained=True, backbone=backbone_name)(build)


for _backbone_name, _taps in PRETRAINED_BACKBONES.values():
    if _backbone_name in STRIDE2_TAPS:
        _pretrained_builder(f"centermask_{_backbone_name}", _backbone_name, _taps)


def instance_boxes(id_maps):
    """Instance-ID maps [B, H, W, 2] (instance number, class) -> (padded boxes [B, K, 5], numbers [B, K]).

    Each instance's tight box (x_min, y_min, x_max, y_max in pixels; x_max is the last column + 1) and
    class, the instances present first in each row (`centernet_loss` skips the padding behind them),
    class -1 padding. `numbers` are the instance numbers of the rows (0 on padding). K is the batch's
    highest instance number + 1, so a map with 140 cells costs 141 rows and one with 3 costs 4.
    """
    id_maps = tf.cast(id_maps, tf.int32)
    numbers, classes = id_maps[..., 0], id_maps[..., 1]
    batch, height, width = tf.shape(numbers)[0], tf.shape(numbers)[1], tf.shape(numbers)[2]
    rows = tf.reduce_max(numbers) + 1
    segment = tf.reshape(tf.range(batch)[:, None, None] * rows + numbers, [-1])
    xs = tf.reshape(tf.broadcast_to(tf.range(width)[None, None, :], tf.shape(numbers)), [-1])
    ys = tf.reshape(tf.broadcast_to(tf.range(height)[None, :, None], tf.shape(numbers)), [-1])
    count = batch * rows

    def per_row(values, reduce):
        return tf.reshape(reduce(values, segment, count), [batch, rows])

    area = per_row(tf.ones_like(xs), tf.math.unsorted_segment_sum)
    present = (area > 0) & (tf.range(rows)[None, :] > 0)
    order = tf.argsort(tf.cast(~present, tf.int32), axis=1, stable=True)
    boxes = tf.stack([per_row(xs, tf.math.unsorted_segment_min), per_row(ys, tf.math.unsorted_segment_min),
                      per_row(xs, tf.math.unsorted_segment_max) + 1, per_row(ys, tf.math.unsorted_segment_max) + 1],
                     axis=-1)
    row_class = tf.where(present, per_row(tf.reshape(classes, [-1]), tf.math.unsorted_segment_max), -1)
    padded = tf.concat([tf.cast(tf.where(present[..., None], boxes, 0), tf.float32),
                        tf.cast(row_class, tf.float32)[..., None]], axis=-1)
    row_numbers = tf.where(present, tf.broadcast_to(tf.range(rows)[None, :], [batch, rows]), 0)
    return tf.gather(padded, order, batch_dims=1), tf.gather(row_numbers, order, batch_dims=1)


def _inside_boxes(boxes, height, width, stride, margin):
    """[B, N, height, width] bool: which cells' centres ((i + 0.5) * stride) lie in each box, grown by `margin`."""
    xs = (tf.range(width, dtype=tf.float32) + 0.5) * stride
    ys = (tf.range(height, dtype=tf.float32) + 0.5) * stride
    inside_x = (xs[None, None, :] >= boxes[..., 0:1] - margin) & (xs[None, None, :] <= boxes[..., 2:3] + margin)
    inside_y = (ys[None, None, :] >= boxes[..., 1:2] - margin) & (ys[None, None, :] <= boxes[..., 3:4] + margin)
    return inside_y[..., :, None] & inside_x[..., None, :]


def _mask_logits(outputs, num_classes, cells):
    """[B, N, 2h, 2w]: each object's prototype combination (at stride 2), with the coefficients at its centre
    `cells` [B, N] of the stride-4 grid."""
    batch = tf.shape(outputs)[0]
    start = num_classes + 4
    prototypes = (outputs.shape[-1] - start) // 5
    coefficients = tf.gather(tf.reshape(outputs[..., start:start + prototypes], [batch, -1, prototypes]), cells,
                             batch_dims=1)
    return tf.einsum("bhwp,bnp->bnhw", prototypes_at_stride2(outputs[..., start + prototypes:]), coefficients)


@keras.saving.register_keras_serializable(package="imgpipe")
class InstanceLoss(keras.losses.Loss):
    """CenterNet's loss on the boxes the ID maps give, plus each instance's mask cross-entropy inside its box.

    The mask term is YOLACT's: binary cross-entropy of the instance's predicted mask against its own
    pixels, over the output cells of its box only (the box already says where the object is; the mask
    says which pixels in it are the object), averaged per box so small objects count as much as big ones.

    Args:
        num_classes: int, C.
        mask_weight: float, weight of the mask term.
    """

    def __init__(self, num_classes, mask_weight=1.0, name="instance_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.mask_weight = mask_weight

    def call(self, y_true, y_pred):
        y_pred = tf.cast(y_pred, tf.float32)
        padded, numbers = instance_boxes(y_true)
        detection_loss, cells, valid = centernet_loss(padded, y_pred, self.num_classes)
        used = tf.shape(cells)[1]
        logits = _mask_logits(y_pred, self.num_classes, cells)
        # truth at the mask cells' centres, the pixels the stride-2 masks stand for
        truth_numbers = tf.cast(y_true, tf.int32)[:, MASK_STRIDE // 2::MASK_STRIDE, MASK_STRIDE // 2::MASK_STRIDE, 0]
        truth = tf.cast(tf.equal(truth_numbers[:, None], numbers[:, :used, None, None]), tf.float32)
        height, width = tf.shape(logits)[2], tf.shape(logits)[3]
        # grown by half a cell, so an object narrower than a cell still covers one
        inside = tf.cast(_inside_boxes(padded[:, :used, :4], height, width, MASK_STRIDE, MASK_STRIDE / 2),
                         tf.float32)
        cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=truth, logits=logits) * inside
        per_instance = tf.reduce_sum(cross_entropy, axis=[2, 3]) / tf.maximum(tf.reduce_sum(inside, axis=[2, 3]), 1.0)
        valid = tf.cast(valid, tf.float32)
        mask_loss = tf.reduce_sum(per_instance * valid, axis=1) / tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)
        return detection_loss + self.mask_weight * mask_loss

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "mask_weight": self.mask_weight}


def decode_instances(outputs, num_classes, max_detections=MAX_DETECTIONS, iou=NMS_IOU, min_score=MIN_SCORE,
                     stride=STRIDE):
    """Raw outputs [B, h, w, C + 4 + 5P] -> (boxes [B, N, 4] x_min y_min x_max y_max in input pixels, scores
    [B, N], classes [B, N] int32, count [B] int32, mask logits [B, N, 2h, 2w]), zeros beyond `count`.

    Non-maximum suppression is per class (boxes of different classes are moved apart before one
    class-blind pass), and keeps the indices, which say where each object's coefficients are.
    """
    scores, classes, cells, corners = peak_candidates(outputs, num_classes, max_detections, stride)
    extent = tf.cast(tf.maximum(tf.shape(outputs)[1], tf.shape(outputs)[2]) * stride * 4, tf.float32)
    apart = corners + tf.cast(classes, tf.float32)[..., None] * extent
    selected, count = tf.image.non_max_suppression_padded(
        apart, scores, max_detections, iou_threshold=iou, score_threshold=min_score, pad_to_max_output_size=True,
        sorted_input=True)
    kept = tf.sequence_mask(count, max_detections)
    scores = tf.where(kept, tf.gather(scores, selected, batch_dims=1), 0.0)
    classes = tf.where(kept, tf.gather(classes, selected, batch_dims=1), 0)
    y1, x1, y2, x2 = tf.unstack(tf.gather(corners, selected, batch_dims=1), axis=-1)
    boxes = tf.where(kept[..., None], tf.stack([x1, y1, x2, y2], axis=-1), 0.0)
    logits = _mask_logits(tf.cast(outputs, tf.float32), num_classes, tf.gather(cells, selected, batch_dims=1))
    return boxes, scores, classes, count, logits


def paint_instances(mask_logits, boxes, scores, count, size):
    """One image's instance-ID map [H, W] int32 at `size` (H, W): 0 background, n + 1 for the n-th detection.

    Each detection's mask is its logits resized to `size` (bilinear), kept inside its box and above
    probability 0.5. Where masks overlap, the pixel goes to the higher-scoring detection (painting in
    score order, as panoptic merging does), so a faint duplicate cannot take a confident object's pixels.
    `PAINT_CHUNK` detections are resized at a time: memory is a few maps of `size`, whatever the count.

    Args:
        mask_logits: [N, h, w] (`decode_instances`' for one image); boxes: [N, 4] x_min y_min x_max y_max in
        pixels of `size`; scores: [N]; count: how many of the N are detections.
    """
    size = tf.cast(tf.convert_to_tensor(size), tf.int32)
    boxes = tf.cast(boxes, tf.float32)
    total = tf.shape(mask_logits)[0]

    def paint(index, best, winner):
        start = index * PAINT_CHUNK
        stop = tf.minimum(start + PAINT_CHUNK, total)
        probabilities = tf.sigmoid(tf.image.resize(tf.transpose(mask_logits[start:stop], [1, 2, 0]), size, "bilinear"))
        inside = tf.transpose(_inside_boxes(boxes[None, start:stop], size[0], size[1], 1, 0.0)[0], [1, 2, 0])
        present = tf.range(start, stop) < count
        # scores in 0..1 lifted by 1, so a covered pixel of a 0-score detection still beats "no instance"
        claim = tf.where(inside & present & (probabilities > MASK_THRESHOLD), 1.0 + scores[start:stop], 0.0)
        chunk_best = tf.reduce_max(claim, axis=-1)
        better = chunk_best > best
        chunk_winner = tf.argmax(claim, axis=-1, output_type=tf.int32) + start + 1
        return index + 1, tf.where(better, chunk_best, best), tf.where(better, chunk_winner, winner)

    chunks = (tf.minimum(tf.cast(count, tf.int32), total) + PAINT_CHUNK - 1) // PAINT_CHUNK
    _, _, winner = tf.while_loop(lambda index, *_: index < chunks, paint,
                                 [tf.constant(0), tf.zeros(size, tf.float32), tf.zeros(size, tf.int32)])
    return winner


def instance_id_map(mask_logits, boxes, scores, count, size):
    """`paint_instances` for each image of a batch, all at `size` (H, W) with boxes in its pixels: [B, H, W]."""
    return tf.map_fn(lambda args: paint_instances(*args, size), (mask_logits, tf.cast(boxes, tf.float32),
                                                                 tf.cast(scores, tf.float32), count),
                     fn_output_signature=tf.TensorSpec([None, None], tf.int32))
