"""Semantic segmentation: a class for every pixel, from images paired with masks.

What is special here: masks as targets (moved by geometric augmentation),
per-pixel cross-entropy that skips the ignore value (plus an optional soft
Dice term and class weights), mean IoU and pixel accuracy every epoch,
per-class IoU at the end, and serving that answers with a mask at the
original image resolution.

Example:
    >>> result = imgpipe.run("segment", data="../shared/data/membrane")
    >>> result.metrics["val_mean_iou"]
"""

import io
import pathlib

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from PIL import Image

from imgpipe.engine import plots
from imgpipe.data.masks import (MaskEncoding, count_mask_values, list_pairs, load_mask, read_mask_array,
                                 read_mask_folders)
from imgpipe.data.sources import LabelledFiles
from imgpipe.errors import DataError
from imgpipe.engine.scoring import first_images
from imgpipe.models import MODELS
from imgpipe.engine.serving import decode_batch, resize_float, status_strings
from imgpipe.tasks.base import Task
from imgpipe.understand.calibration import calibration_record

PREDICTION_SAMPLES = 6
# Per-pixel calibration: pixels drawn per validation image (all of a split, at most about this many rows in
# all), and the fewest images it is fitted on: each image gives thousands of pixels, but pixels of one image
# are not independent, so the halves split images and each half needs two.
CALIBRATION_PIXELS = 200_000
CALIBRATION_MIN_IMAGES = 4


@keras.saving.register_keras_serializable(package="imgpipe")
class SegmentationLoss(keras.losses.Loss):
    """Per-pixel cross-entropy over valid pixels, plus `dice_weight` x soft Dice loss.

    Args:
        num_classes: int, C.
        ignore_index: int or None, label value left out of the loss.
        dice_weight: float, weight of the soft Dice term (0 turns it off).
        class_weights: optional list of C per-class weights for the cross-entropy.

    Example:
        >>> loss = SegmentationLoss(2, ignore_index=255, dice_weight=0.5)
    """

    def __init__(self, num_classes, ignore_index=None, dice_weight=0.0, class_weights=None,
                 name="segmentation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.dice_weight = dice_weight
        self.class_weights = list(class_weights) if class_weights is not None else None

    def call(self, y_true, y_pred):
        labels = ops.cast(y_true, "int32")
        valid = ops.ones_like(labels, dtype=y_pred.dtype) if self.ignore_index is None else \
            ops.cast(ops.not_equal(labels, self.ignore_index), y_pred.dtype)
        safe_labels = ops.where(valid > 0, labels, ops.zeros_like(labels))
        one_hot = ops.one_hot(safe_labels, self.num_classes, dtype=y_pred.dtype)
        probabilities = ops.clip(y_pred, 1e-7, 1.0)
        pixel_loss = -ops.sum(one_hot * ops.log(probabilities), axis=-1)
        weights = valid
        if self.class_weights is not None:
            weights = weights * ops.take(ops.convert_to_tensor(self.class_weights, y_pred.dtype), safe_labels)
        spatial = (1, 2)
        loss = ops.sum(pixel_loss * weights, axis=spatial) / ops.maximum(ops.sum(valid, axis=spatial), 1.0)
        if self.dice_weight:
            masked = valid[..., None]
            intersection = ops.sum(y_pred * one_hot * masked, axis=spatial)
            totals = ops.sum(y_pred * masked, axis=spatial) + ops.sum(one_hot * masked, axis=spatial)
            dice = (2.0 * intersection + 1.0) / (totals + 1.0)
            loss = loss + self.dice_weight * (1.0 - ops.mean(dice, axis=-1))
        return loss

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_index": self.ignore_index,
                "dice_weight": self.dice_weight, "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="imgpipe")
class PixelAccuracy(keras.metrics.Metric):
    """Fraction of valid pixels whose predicted class is right (the ignore value is skipped)."""

    def __init__(self, ignore_index=None, name="pixel_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_index = ignore_index
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.cast(y_true, "int32")
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        valid = ops.ones_like(labels, dtype="bool") if self.ignore_index is None else \
            ops.not_equal(labels, self.ignore_index)
        self.correct.assign_add(ops.sum(ops.cast(ops.logical_and(valid, ops.equal(labels, predicted)), "float32")))
        self.total.assign_add(ops.sum(ops.cast(valid, "float32")))

    def result(self):
        return self.correct / ops.maximum(self.total, 1.0)

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "ignore_index": self.ignore_index}


def confusion_matrix(labels, predicted, num_classes, ignore_index=None):
    """[C, C] pixel counts, rows = true class; ignored and out-of-range labels are skipped."""
    labels = np.asarray(labels).reshape(-1)
    predicted = np.asarray(predicted).reshape(-1)
    valid = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        valid &= labels != ignore_index
    return np.bincount(labels[valid] * num_classes + predicted[valid],
                       minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_report(matrix, class_names):
    """Mean IoU (over classes present in labels or predictions), pixel accuracy and IoU per class."""
    matrix = np.asarray(matrix, dtype=np.float64)
    intersection = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - intersection
    iou = np.divide(intersection, union, out=np.full(len(class_names), np.nan), where=union > 0)
    metrics = {
        "mean_iou": float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
        "pixel_accuracy": float(intersection.sum() / max(matrix.sum(), 1.0)),
    }
    for name, value in zip(class_names, iou):
        metrics[f"iou/{name}"] = None if np.isnan(value) else float(value)
    return metrics


def predicted_mask(answer, shape):
    """A model answer's mask, or a served answer's PNG decoded (what a client gets), checked against its truth's `shape`.

    A served answer's size differing from the truth's is an image the model saw rotated (EXIF) against its mask.
    """
    if "mask_png_bytes" not in answer:
        return answer["mask"]
    if (int(answer["height"]), int(answer["width"])) != tuple(shape):
        raise DataError(f"a mask is {shape[1]}x{shape[0]} but the model saw {int(answer['width'])}x"
                        f"{int(answer['height'])} (an EXIF-rotated image?)")
    return np.asarray(Image.open(io.BytesIO(answer["mask_png_bytes"])), dtype=np.int32)


def sampled_pixels(model, dataset, ignore_index, per_image, seed=0):
    """Class probabilities of up to `per_image` scored pixels of each image (seeded), with their true class
    and their image's number: the rows per-pixel calibration is fitted and reported on.

    Returns:
        (float [N, C], int [N], int [N])
    """
    rng = np.random.default_rng(seed)
    probabilities, labels, image_of_row = [], [], []
    for images, masks in dataset:
        predicted = np.asarray(model(images, training=False), np.float32)
        classes = predicted.shape[-1]
        for image_probabilities, mask in zip(predicted, np.asarray(masks)):
            scored = np.flatnonzero(((mask >= 0) & (mask < classes) & (mask != ignore_index)).ravel())
            chosen = rng.choice(scored, min(per_image, len(scored)), replace=False)
            probabilities.append(image_probabilities.reshape(-1, image_probabilities.shape[-1])[chosen])
            labels.append(mask.ravel()[chosen])
            image_of_row.append(np.full(len(chosen), len(image_of_row)))
    return np.concatenate(probabilities), np.concatenate(labels).astype(np.int64), np.concatenate(image_of_row)


def pixel_class_counts(mask_paths, encoding, size):
    """Pixels of each class in the masks at model size (ignored pixels left out)."""
    counts = np.zeros(encoding.num_classes, np.int64)
    for path in mask_paths:
        mask = load_mask(path, size, encoding)
        valid = (mask >= 0) & (mask < encoding.num_classes)
        counts += np.bincount(mask[valid], minlength=encoding.num_classes)
    return counts


def pixel_class_weights(mask_paths, encoding, size):
    """Inverse pixel-frequency weights n / (C * n_c) from the training masks (at model size)."""
    counts = pixel_class_counts(mask_paths, encoding, size)
    total = counts.sum()
    return [float(total / (len(counts) * count)) if count else 0.0 for count in counts]


class SegmentationTask(Task):
    name = "segment"
    target_kind = "mask"
    monitor = ("val_mean_iou", "max")
    monitor_ceiling = 1.0
    main_metric = "val_mean_iou"
    state_class = MaskEncoding
    explain_target = "region"
    pretrained_model = "unet_mobilenet_v2"
    scratch_model = "unet"

    # === Data ===
    def read_data(self, recipe):
        settings = recipe.data
        if settings.path is None:
            raise DataError("data.path: segmentation needs --data DIR (images/ + masks/)")
        return read_mask_folders(settings.path, settings.val_split, settings.seed, settings.max_pixels,
                                 settings.image_size, recipe.options.ignore_index, settings.split_groups)

    def describe_data(self, recipe, data):
        encoding = data.state
        masks = list(data.train.targets) + list(data.val.targets)
        counts = pixel_class_counts(data.train.targets, encoding, data.image_size)
        weights = pixel_class_weights(data.train.targets, encoding, data.image_size)
        values = []
        for value, pixels in sorted(count_mask_values(masks).pixels.items()):
            index = int(encoding.encode(np.array([[value]]))[0, 0])
            ignored = encoding.ignore_index is not None and index == encoding.ignore_index
            meaning = "ignored" if ignored or not 0 <= index < data.num_classes else data.class_names[index]
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            values.append({"stored value": shown, "pixels": pixels, "read as": meaning})
        return {
            "mask encoding": f"{encoding.kind}, {data.num_classes} classes, ignore index {encoding.ignore_index}",
            "mask values found": values,
            "classes (training pixels at model size)": [
                {"class": name, "pixel share": round(float(counts[i] / max(counts.sum(), 1)), 4),
                 "weight (class_weight: auto)": round(weights[i], 4)} for i, name in enumerate(data.class_names)],
        }

    def target_signature(self, data):
        return tf.int32, tuple(data.image_size)

    def load_target(self, data):
        encoding = data.state

        def load(mask_path, size):
            return load_mask(mask_path.decode() if isinstance(mask_path, bytes) else str(mask_path), size, encoding)

        return load

    # === Model ===
    def build_model(self, recipe, data):
        build = MODELS.get(recipe.model.name, key="model.name")
        return build(tuple(data.image_size) + (3,), data.num_classes, weights=recipe.model.weights,
                     dropout=recipe.model.dropout)

    def compile_settings(self, recipe, data):
        encoding = data.state
        class_weights = None
        if recipe.train.class_weight == "auto":
            class_weights = pixel_class_weights(data.train.targets, encoding, data.image_size)
        return {
            "loss": SegmentationLoss(data.num_classes, encoding.ignore_index, recipe.options.dice_weight,
                                     class_weights),
            "metrics": [
                keras.metrics.MeanIoU(data.num_classes, ignore_class=encoding.ignore_index, sparse_y_pred=False,
                                      name="mean_iou"),
                PixelAccuracy(encoding.ignore_index),
            ],
        }

    # === Scoring ===
    def answers(self, model, images, metadata):
        return {"mask": np.argmax(np.asarray(model(images, training=False)), axis=-1)}

    def score(self, answers, truths, metadata):
        class_names = metadata["class_names"]
        encoding = MaskEncoding(**metadata["encoding"])
        matrix = np.zeros((len(class_names), len(class_names)), np.int64)
        for answer, truth in zip(answers, truths):
            # Pixels a perturbation brought in from outside the image have mask value -1: not scored.
            matrix += confusion_matrix(truth, predicted_mask(answer, truth.shape), len(class_names),
                                       encoding.ignore_index)
        return iou_report(matrix, class_names)

    def report_validation(self, model, val_ds, answers, truths, data, metadata, run_dir):
        samples = [(image, truth, answer["mask"])
                   for image, truth, answer in zip(first_images(val_ds, PREDICTION_SAMPLES), truths, answers)]
        self.plot_predictions(samples, data, pathlib.Path(run_dir) / "predictions.png")
        probabilities, labels, image_of_row = sampled_pixels(model, val_ds, data.state.ignore_index,
                                                             max(64, CALIBRATION_PIXELS // max(data.val.count, 1)))
        return {"calibration": calibration_record(probabilities, labels, run_dir, image_of_row,
                                                  unit="validation pixels", min_images=CALIBRATION_MIN_IMAGES)}

    def plot_predictions(self, samples, data, path, title="validation: image | truth | prediction"):
        """A grid of (image, true mask, predicted mask) triples, the masks drawn over their image."""
        encoding = data.state
        palette = plots.class_palette(data.num_classes, encoding.colours)
        images, titles = [], []
        for image, mask, guess in samples:
            images += [image, plots.overlay_mask(image, mask, palette, ignore_index=encoding.ignore_index),
                       plots.overlay_mask(image, guess, palette)]
            titles += ["image", "ground truth", "prediction"]
        plots.plot_image_grid(images, titles, path, columns=6, title=title)

    def preview(self, samples, data, path):
        encoding = data.state
        palette = plots.class_palette(data.num_classes, encoding.colours)
        images = [plots.overlay_mask(image, mask, palette, ignore_index=encoding.ignore_index)
                  for image, mask in samples]
        return plots.plot_image_grid(images, [""] * len(images), path, title="augmented training samples + masks")

    # === Robustness ===
    robustness_metric_name = "mean_iou"

    # === Suspect labels ===
    suspect_labels = "pixels"

    # === Serving ===
    def serving_functions(self, model, data, recipe):
        size = list(data.image_size)
        num_classes = data.num_classes
        max_pixels = recipe.export.max_pixels

        def masks_at(probabilities, size):
            """Masks [B, H, W] at `size` (the model's probabilities resized, then argmax) and class fractions [B, C]."""
            masks = tf.argmax(tf.image.resize(probabilities, size, method="bilinear"), axis=-1, output_type=tf.int32)
            flat = tf.reshape(masks, [tf.shape(masks)[0], -1])
            counts = tf.math.bincount(flat, minlength=num_classes, maxlength=num_classes, dtype=tf.float32, axis=-1)
            return masks, counts / tf.cast(tf.shape(flat)[1], tf.float32)

        png_dtype = tf.uint8 if num_classes <= 256 else tf.uint16

        def mask_pngs_at(probabilities, sizes):
            """PNG masks at each image's own size, one image at a time: a mask padded to the batch's largest
            height and width is not an answer (no budget bounds it), nor are several full-size resizes at once."""
            def one(args):
                probs, original = args

                def answer():
                    masks, fractions = masks_at(probs[None], original)
                    return tf.io.encode_png(tf.cast(masks[0, ..., None], png_dtype)), fractions[0]

                def refused():  # an image serving_default did not decode (its size is 0 x 0): no mask
                    return tf.constant(b""), tf.zeros([num_classes], tf.float32)

                return tf.cond(tf.reduce_all(original > 0), answer, refused)

            png, fractions = tf.map_fn(one, (probabilities, sizes), parallel_iterations=1, fn_output_signature=(
                tf.TensorSpec([], tf.string), tf.TensorSpec([num_classes], tf.float32)))
            return {"mask_png_bytes": png, "height": sizes[:, 0], "width": sizes[:, 1], "class_fraction": fractions}

        def serve_image_bytes(image_bytes):
            batch = decode_batch(image_bytes, size, max_pixels)
            answer = mask_pngs_at(model(batch.images, training=False), batch.sizes)
            return {**answer, "status": status_strings(batch.status, max_pixels)}

        def serve_images(images):
            probabilities = model(resize_float(images, size), training=False)
            masks, fractions = masks_at(probabilities, tf.shape(images)[1:3])
            return {"mask": masks, "class_fraction": fractions}

        return serve_image_bytes, serve_images

    def export_metadata(self, data, recipe):
        return {"class_names": list(data.class_names), "encoding": data.state.to_dict()}

    def raw_output_contract(self, metadata):
        return {"meaning": "per-pixel class probabilities [N, H, W, C] at the model's input size, in the order "
                           "of class_names",
                "to_answers": ["resize the probabilities to the image's own size (bilinear)",
                               "the mask is the argmax over the last axis: a class index per pixel",
                               "encoding says which mask values the training masks used for each class"]}

    # === Using an export ===
    def evaluation_files(self, folder, metadata, max_pixels):
        encoding = MaskEncoding(**metadata["encoding"])
        pairs = list_pairs(folder)
        return LabelledFiles([image for image, _ in pairs],
                             [encoding.encode(read_mask_array(mask_path)) for _, mask_path in pairs])

    def predict_answer(self, path, answer, metadata, top_k, out_dir):
        result = {"file": path, "height": int(answer["height"]), "width": int(answer["width"]),
                  "class_fraction": {name: round(float(f), 4)
                                     for name, f in zip(metadata["class_names"], answer["class_fraction"]) if f}}
        if out_dir is not None:
            target = pathlib.Path(out_dir) / (pathlib.Path(path).stem + "_mask.png")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(answer["mask_png_bytes"])
            result["mask_png"] = str(target)
        return result

