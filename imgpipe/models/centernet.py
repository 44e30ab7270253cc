"""CenterNet-style one-stage detectors (Zhou et al. 2019, "Objects as Points"), loss and decoding.

Why this head: it is anchor-free (nothing to tune per data set), predicts at
a single stride-4 scale (no feature-pyramid level assignment), and decodes by
picking heat-map peaks, which is cheap on a CPU and exports as plain TF ops.
Each object is a Gaussian peak at its centre in a per-class heat map, plus a
(log) size and a sub-pixel offset read at that peak.

The network outputs one float32 tensor [B, H/4, W/4, C + 4]: C heat-map
logits, log width, log height, x offset, y offset (in output cells).
`decode_detections` turns it into boxes in input pixels, followed by per-class
non-maximum suppression, so an exported model answers with final detections.

Example:
    >>> model = build_centernet((256, 256, 3), num_classes=3)
    >>> boxes, scores, classes, count = decode_detections(model(images), input_size=(256, 256))
"""

import math

import keras
import tensorflow as tf
from keras import layers

from imgpipe.errors import RecipeError
from imgpipe.models import MODELS
from imgpipe.models.backbones import preprocessing, tapped_backbone
from imgpipe.models.classifiers import BACKBONE_LAYER, BATCH_NORM_MOMENTUM
from imgpipe.models.layers import ImagenetPreprocessing

STRIDE = 4
PRIOR_PROBABILITY = 0.1
GAUSSIAN_ALPHA = 0.54  # TTFNet's elliptical Gaussian: sigma = alpha * side / 6
MAX_DETECTIONS = 100
NMS_IOU = 0.5
MIN_SCORE = 0.05


def _conv(x, filters, name, strides=1, kernel=3):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def stride4_features(features, width=64):
    """Upsamples the deepest features to stride 4 with skip connections (what every head reads).

    `features`: feature maps at strides 4, 8, 16, 32 (shallow to deep).
    """
    x = _conv(features[-1], width * 2, "lateral32", kernel=1)
    for stride, skip in zip((16, 8, 4), reversed(features[:-1])):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{stride}")(x)
        x = layers.Add(name=f"merge{stride}")([x, _conv(skip, x.shape[-1], f"lateral{stride}", kernel=1)])
        x = _conv(x, width if stride == 4 else width * 2, f"smooth{stride}")
    return x


def detection_heads(x, num_classes, width=64):
    """The three CenterNet heads on stride-4 features: heat-map logits, log size, offset ([.., C + 4])."""
    bias = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
    heads = []
    for name, channels, initial in (("heatmap", num_classes, bias), ("size", 2, 0.0), ("offset", 2, 0.0)):
        h = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"{name}_head_conv")(x)
        heads.append(layers.Conv2D(channels, 1, bias_initializer=keras.initializers.Constant(initial),
                                   name=f"{name}_head")(h))
    return heads


def _decoder_and_heads(features, num_classes, width=64):
    return layers.Concatenate(dtype="float32", name="detections")(
        detection_heads(stride4_features(features, width), num_classes, width))


def require_multiple_of_32(name, input_shape):
    if input_shape[0] % 32 or input_shape[1] % 32:
        raise RecipeError(f"data.image_size: {name} needs a height and width divisible by 32, got "
                          f"{input_shape[0]}x{input_shape[1]}")


def scratch_features(inputs, with_stride2=False):
    """Feature maps at strides 4, 8, 16 and 32 of a small residual-free backbone (32-64-128-256 filters),
    after its stride-2 stem's when `with_stride2`."""
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
    x = _conv(x, 24, "stem", strides=2)
    features = [x] if with_stride2 else []
    for stage, filters in enumerate((32, 64, 128, 256), start=1):
        x = _conv(x, filters, f"stage{stage}_down", strides=2)
        x = _conv(x, filters, f"stage{stage}_a")
        x = _conv(x, filters, f"stage{stage}_b")
        features.append(x)
    return features


def pretrained_features(inputs, backbone_name, taps, weights):
    """The feature maps `taps` of a keras.applications backbone, fed ImageNet-preprocessed pixels."""
    x = ImagenetPreprocessing(preprocessing(backbone_name), name="preprocess")(inputs)
    return tapped_backbone(backbone_name, tuple(inputs.shape[1:]), weights, taps, BACKBONE_LAYER)(x)


@MODELS.register("centernet", task="detect", family="from scratch")
def build_centernet(input_shape, num_classes, weights=None, dropout=0.0):
    """A small residual-free backbone (32-64-128-256 filters, strides 4..32) for CPU training from scratch."""
    if weights not in (None, "none"):
        raise RecipeError("model.weights: centernet trains from scratch; use centernet_resnet50 for imagenet")
    require_multiple_of_32("centernet", input_shape)
    inputs = keras.Input(input_shape, name="image")
    return keras.Model(inputs, _decoder_and_heads(scratch_features(inputs), num_classes), name="centernet")


PRETRAINED_BACKBONES = {  # name: (backbone, its feature maps at strides 4, 8, 16 and 32)
    "centernet_mobilenet_v2": ("mobilenet_v2", ("block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu",
                                                "out_relu")),
    "centernet_resnet50": ("resnet50", ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out",
                                        "conv5_block3_out")),
    "centernet_efficientnet_b0": ("efficientnet_b0", ("block2b_add", "block3b_add", "block5c_add",
                                                      "top_activation")),
}


def _pretrained_builder(name, backbone_name, taps):
    def build(input_shape, num_classes, weights=None, dropout=0.0):
        require_multiple_of_32(name, input_shape)
        inputs = keras.Input(input_shape, name="image")
        features = pretrained_features(inputs, backbone_name, taps, weights)
        return keras.Model(inputs, _decoder_and_heads(features, num_classes), name=name)

    build.__name__ = f"build_{name}"
    build.__doc__ = f"CenterNet heads on a keras.applications {backbone_name} backbone."
    MODELS.register(name, task="detect", family="pretrained", pretrained=True, backbone=backbone_name)(build)


for _name, _spec in PRETRAINED_BACKBONES.items():
    _pretrained_builder(_name, *_spec)


def render_targets(padded_boxes, num_classes, output_size, stride=STRIDE):
    """Heat maps [B, h, w, C], centre cell indices [B, M], size/offset targets [B, M, 4], valid [B, M].

    `padded_boxes`: [B, M, 5] of x_min, y_min, x_max, y_max (input pixels), class (-1 pads).
    """
    height, width = output_size
    boxes = padded_boxes[..., :4] / stride
    classes = tf.cast(padded_boxes[..., 4], tf.int32)
    valid = classes >= 0
    sizes = tf.maximum(boxes[..., 2:] - boxes[..., :2], 1e-2)
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2.0
    cell = tf.clip_by_value(tf.floor(centres), 0.0, tf.cast([width - 1, height - 1], tf.float32))
    sigma = tf.maximum(GAUSSIAN_ALPHA * sizes / 6.0, 0.5)
    xs = tf.range(width, dtype=tf.float32)
    ys = tf.range(height, dtype=tf.float32)
    gauss_x = tf.exp(-tf.square(xs[None, None, :] - cell[..., 0:1]) / (2 * tf.square(sigma[..., 0:1])))
    gauss_y = tf.exp(-tf.square(ys[None, None, :] - cell[..., 1:2]) / (2 * tf.square(sigma[..., 1:2])))
    gaussians = gauss_y[..., :, None] * gauss_x[..., None, :]  # [B, M, h, w]
    batch, boxes_per_image = tf.shape(classes)[0], tf.shape(classes)[1]
    segment = tf.where(valid, tf.range(batch)[:, None] * num_classes + classes, batch * num_classes)
    flat = tf.reshape(gaussians, [batch * boxes_per_image, height * width])
    heat = tf.math.unsorted_segment_max(flat, tf.reshape(segment, [-1]), batch * num_classes + 1)[:-1]
    heat = tf.maximum(heat, 0.0)  # segments without boxes come back as the lowest float
    heat = tf.transpose(tf.reshape(heat, [batch, num_classes, height, width]), [0, 2, 3, 1])
    index = tf.cast(cell[..., 1] * tf.cast(width, tf.float32) + cell[..., 0], tf.int32)
    regression = tf.concat([tf.math.log(sizes), centres - cell], axis=-1)
    return heat, index, regression, valid


def centernet_loss(padded_boxes, outputs, num_classes, size_weight=1.0, offset_weight=1.0):
    """Per-image CenterNet loss of `outputs` [B, h, w, C + 4 + ...] against `padded_boxes` [B, M, 5].

    Returns (loss [B], centre cell index [B, M'], valid [B, M']) where M' <= M is the batch's largest box
    count: heads beyond the first C + 4 channels (a mask head's) read their targets at the same cells.
    """
    outputs = tf.cast(outputs, tf.float32)
    padded_boxes = tf.cast(padded_boxes, tf.float32)
    # Real boxes come first in each padded row, so the padding beyond the
    # batch's largest box count can be skipped before rendering Gaussians.
    used = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(padded_boxes[..., 4] >= 0, tf.int32), axis=1)), 1)
    output_size = (tf.shape(outputs)[1], tf.shape(outputs)[2])
    heat, index, regression, valid = render_targets(padded_boxes[:, :used], num_classes, output_size)
    logits = outputs[..., :num_classes]
    probability = tf.clip_by_value(tf.sigmoid(logits), 1e-4, 1 - 1e-4)
    positive = tf.cast(heat >= 1.0 - 1e-6, tf.float32)
    positive_loss = tf.math.log(probability) * tf.square(1 - probability) * positive
    negative_loss = tf.math.log(1 - probability) * tf.square(probability) * tf.pow(1 - heat, 4) * (1 - positive)
    count = tf.maximum(tf.reduce_sum(positive, axis=[1, 2, 3]), 1.0)
    focal = -tf.reduce_sum(positive_loss + negative_loss, axis=[1, 2, 3]) / count
    flat = tf.reshape(outputs[..., num_classes:num_classes + 4], [tf.shape(outputs)[0], -1, 4])
    predicted = tf.gather(flat, index, batch_dims=1)
    mask = tf.cast(valid, tf.float32)[..., None]
    error = tf.abs(predicted - regression) * mask
    boxes = tf.maximum(tf.reduce_sum(mask, axis=[1, 2]), 1.0)
    size_loss = tf.reduce_sum(error[..., :2], axis=[1, 2]) / boxes
    offset_loss = tf.reduce_sum(error[..., 2:], axis=[1, 2]) / boxes
    return focal + size_weight * size_loss + offset_weight * offset_loss, index, valid


@keras.saving.register_keras_serializable(package="imgpipe")
class CenterNetLoss(keras.losses.Loss):
    """Penalty-reduced focal loss on the heat maps + L1 on log size and offset at object centres.

    Args:
        num_classes: int, C.
        size_weight, offset_weight: floats weighting the two regression terms.
    """

    def __init__(self, num_classes, size_weight=1.0, offset_weight=1.0, name="centernet_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.size_weight = size_weight
        self.offset_weight = offset_weight

    def call(self, y_true, y_pred):
        loss, _, _ = centernet_loss(y_true, y_pred, self.num_classes, self.size_weight, self.offset_weight)
        return loss

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "size_weight": self.size_weight,
                "offset_weight": self.offset_weight}


def peak_candidates(outputs, num_classes, max_detections=MAX_DETECTIONS, stride=STRIDE):
    """The 2 x `max_detections` highest heat-map peaks of raw outputs [B, h, w, C + 4 + ...]: (scores [B, K],
    classes [B, K] int32, cells [B, K] int32 (flat h*w index), corners [B, K, 4] y_min x_min y_max x_max)."""
    outputs = tf.cast(outputs, tf.float32)
    batch, height, width = tf.shape(outputs)[0], tf.shape(outputs)[1], tf.shape(outputs)[2]
    heat = tf.sigmoid(outputs[..., :num_classes])
    peaks = heat * tf.cast(tf.equal(tf.nn.max_pool2d(heat, 3, 1, "SAME"), heat), tf.float32)
    candidates = tf.minimum(max_detections * 2, height * width * num_classes)
    scores, flat_index = tf.math.top_k(tf.reshape(peaks, [batch, -1]), k=candidates)
    classes = flat_index % num_classes
    cell = flat_index // num_classes
    regression = tf.gather(tf.reshape(outputs[..., num_classes:num_classes + 4], [batch, -1, 4]), cell,
                           batch_dims=1)
    cx = (tf.cast(cell % width, tf.float32) + regression[..., 2]) * stride
    cy = (tf.cast(cell // width, tf.float32) + regression[..., 3]) * stride
    half_w = tf.exp(tf.minimum(regression[..., 0], 10.0)) * stride / 2
    half_h = tf.exp(tf.minimum(regression[..., 1], 10.0)) * stride / 2
    corners = tf.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1)
    return scores, classes, cell, corners


def decode_detections(outputs, num_classes, max_detections=MAX_DETECTIONS, iou=NMS_IOU, min_score=MIN_SCORE,
                      stride=STRIDE):
    """Raw outputs [B, h, w, C + 4] -> (boxes [B, K, 4] x_min y_min x_max y_max in input pixels,
    scores [B, K], classes [B, K] int32, count [B] int32), padded with zeros beyond `count`."""
    scores, classes, _, corners = peak_candidates(outputs, num_classes, max_detections, stride)
    per_class = scores[..., None] * tf.one_hot(classes, num_classes)
    nms = tf.image.combined_non_max_suppression(
        corners[:, :, None, :], per_class, max_output_size_per_class=max_detections,
        max_total_size=max_detections, iou_threshold=iou, score_threshold=min_score, clip_boxes=False)
    y1, x1, y2, x2 = tf.unstack(nms.nmsed_boxes, axis=-1)
    return (tf.stack([x1, y1, x2, y2], axis=-1), nms.nmsed_scores, tf.cast(nms.nmsed_classes, tf.int32),
            nms.valid_detections)
