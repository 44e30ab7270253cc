"""Image classification: one class name per image, from a folder of class sub-folders.

What is special here: integer labels, a softmax head, cross-entropy with label
smoothing, accuracy and top-5 accuracy, a confusion matrix, and a serving
signature that answers with class names and scores.

Example:
    >>> result = imgpipe.run("classify", data="./images", epochs=5)
    >>> result.metrics["val_accuracy"]
"""

import logging
import pathlib

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from imgpipe.engine import plots
from imgpipe.data.demo import demo_classification_folder
from imgpipe.data.folders import read_class_folders, scan_class_folders
from imgpipe.data.sources import LabelledFiles
from imgpipe.data.tfds import read_tfds
from imgpipe.errors import DataError
from imgpipe.understand.explain.visualise import write_grad_cam_grid
from imgpipe.models import MODELS
from imgpipe.engine.serving import decode_batch, resize_float, with_status
from imgpipe.tasks.base import Task
from imgpipe.understand.calibration import calibration_errors, calibration_record

log = logging.getLogger(__name__)

TOP5_MIN_CLASSES = 5
GRAD_CAM_IMAGES = 8  # validation images in the run folder's gradcam.png


@keras.saving.register_keras_serializable(package="imgpipe")
class SparseCrossentropyWithSmoothing(keras.losses.Loss):
    """Cross-entropy on integer labels with label smoothing (Keras' sparse loss has none).

    Example:
        >>> loss = SparseCrossentropyWithSmoothing(num_classes=3, label_smoothing=0.1)
        >>> loss(np.array([2]), np.array([[0.1, 0.1, 0.8]]))
    """

    def __init__(self, num_classes, label_smoothing=0.0, name="sparse_crossentropy_smoothed", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        one_hot = ops.one_hot(labels, self.num_classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "label_smoothing": self.label_smoothing}


def inverse_frequency_weights(labels, num_classes):
    """`train.class_weight: auto`: weight n / (C * n_c), so every class adds the same total loss.

    Example:
        >>> inverse_frequency_weights([0, 0, 0, 1], 2)
        {0: 0.6667, 1: 2.0}
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    total = counts.sum()
    return {index: round(float(total / (num_classes * count)), 4) if count else 0.0
            for index, count in enumerate(counts)}


def images_across_classes(dataset, count, num_classes):
    """Up to `count` (image, label) pairs from a batched dataset, taking the classes in turn.

    The validation pipeline is in folder order, so its first images are often all one class.
    """
    per_class = {label: [] for label in range(num_classes)}
    wanted = -(-count // num_classes)
    for images, labels in dataset:
        for image, label in zip(images.numpy(), labels.numpy()):
            if len(per_class[int(label)]) < wanted:
                per_class[int(label)].append(image.copy())  # not a view holding the whole batch
        if all(len(found) >= wanted for found in per_class.values()):
            break
    chosen = [(found[rank], label) for rank in range(wanted) for label, found in per_class.items() if rank < len(found)]
    chosen = chosen[:count]
    return np.stack([image for image, _ in chosen]), np.array([label for _, label in chosen])


def classification_report(labels, probabilities, class_names):
    """Accuracy, top-5 accuracy, calibration errors (ECE, MCE, NLL), per-class precision/recall/F1 and the
    confusion matrix.

    Args:
        labels: int array [N] of true class indices.
        probabilities: float array [N, C].
        class_names: list of C names.

    Returns:
        (flat dict of metrics, confusion matrix [C, C] with rows = true class)
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities)
    predicted = probabilities.argmax(axis=1)
    count = len(class_names)
    matrix = np.zeros((count, count), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    metrics = {"accuracy": float((predicted == labels).mean()) if len(labels) else 0.0}
    if len(labels):
        metrics.update(calibration_errors(probabilities, labels))
    if count >= TOP5_MIN_CLASSES:
        top5 = np.argsort(-probabilities, axis=1)[:, :5]
        metrics["top5_accuracy"] = float((top5 == labels[:, None]).any(axis=1).mean())
    true_positives = np.diag(matrix).astype(float)
    predicted_totals = matrix.sum(axis=0)
    true_totals = matrix.sum(axis=1)
    precision = np.divide(true_positives, predicted_totals, out=np.zeros(count), where=predicted_totals > 0)
    recall = np.divide(true_positives, true_totals, out=np.zeros(count), where=true_totals > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(count), where=(precision + recall) > 0)
    for index, name in enumerate(class_names):
        metrics[f"precision/{name}"] = float(precision[index])
        metrics[f"recall/{name}"] = float(recall[index])
        metrics[f"f1/{name}"] = float(f1[index])
        metrics[f"support/{name}"] = int(true_totals[index])
    return metrics, matrix


class ClassificationTask(Task):
    name = "classify"
    target_kind = "label"
    monitor = ("val_accuracy", "max")
    monitor_ceiling = 1.0
    main_metric = "val_accuracy"
    explain_target = "class"
    pretrained_model = "mobilenet_v2"
    scratch_model = "strided_cnn"
    # Raccoon crops at 64 px, 3 seeds: pretrained 1.000 [0.984-1.000] against from scratch 0.969 [0.922-0.984];
    # 8x8 digits at 32 px: from scratch 0.997 against 0.992 (benchmarks/README.md, 2026-12-07).
    pretrained_min_side = 64

    # === Data ===
    def read_data(self, recipe):
        settings = recipe.data
        path = settings.path
        if path is None:
            path = str(demo_classification_folder())
        if settings.format == "tfds" or str(path).startswith("tfds:"):
            return read_tfds(path if str(path).startswith("tfds:") else f"tfds:{path}",
                             settings.val_split, settings.image_size)
        return read_class_folders(path, settings.val_split, settings.seed, settings.max_pixels, settings.image_size,
                                  settings.split_groups)

    def describe_data(self, recipe, data):
        if not data.train.is_files:
            return {}
        train = np.bincount(np.asarray(data.train.targets, np.int64), minlength=data.num_classes)
        val = np.bincount(np.asarray(data.val.targets, np.int64), minlength=data.num_classes)
        weights = inverse_frequency_weights(data.train.targets, data.num_classes)
        totals = train + val
        return {
            "classes": [{"class": name, "training": int(train[i]), "validation": int(val[i]),
                         "weight (class_weight: auto)": weights[i]} for i, name in enumerate(data.class_names)],
            "imbalance ratio (largest / smallest class)": round(float(totals.max() / max(totals.min(), 1)), 2),
        }

    def target_signature(self, data):
        return tf.int32, ()

    # === Model ===
    def build_model(self, recipe, data):
        build = MODELS.get(recipe.model.name, key="model.name")
        return build(tuple(data.image_size) + (3,), data.num_classes, weights=recipe.model.weights,
                     dropout=recipe.model.dropout)

    def compile_settings(self, recipe, data):
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        if data.num_classes >= TOP5_MIN_CLASSES:
            metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5_accuracy"))
        return {
            "loss": SparseCrossentropyWithSmoothing(data.num_classes, recipe.options.label_smoothing),
            "metrics": metrics,
        }

    def class_weight(self, recipe, data):
        if recipe.train.class_weight != "auto" or not data.train.is_files:
            return None
        return inverse_frequency_weights(data.train.targets, data.num_classes)

    # === Scoring ===
    def answers(self, model, images, metadata):
        return {"probabilities": np.asarray(model(images, training=False))}

    def truth(self, image, target):
        return int(target)

    def score(self, answers, truths, metadata):
        metrics, _ = classification_report(truths, [a["probabilities"] for a in answers], metadata["class_names"])
        return metrics

    def plot_scores(self, answers, truths, metadata, folder):
        _, matrix = classification_report(truths, [a["probabilities"] for a in answers], metadata["class_names"])
        plots.plot_confusion_matrix(matrix, metadata["class_names"], pathlib.Path(folder) / "confusion_matrix.png")

    def report_validation(self, model, val_ds, answers, truths, data, metadata, run_dir):
        images, labels = images_across_classes(val_ds, GRAD_CAM_IMAGES, data.num_classes)
        write_grad_cam_grid(model, images, data.class_names, pathlib.Path(run_dir) / "gradcam.png", labels=labels)
        return {"calibration": calibration_record([a["probabilities"] for a in answers], truths, run_dir)}

    def preview(self, samples, data, path):
        images = [image for image, _ in samples]
        titles = [data.class_names[int(label)] for _, label in samples]
        return plots.plot_image_grid(images, titles, path, title="augmented training samples")

    # === Robustness ===
    robustness_metric_name = "accuracy"

    # === Suspect labels ===
    suspect_labels = "class"

    # === Serving ===
    def serving_functions(self, model, data, recipe):
        size = list(data.image_size)
        class_names = tf.constant(data.class_names)
        top_k = min(recipe.options.top_k, data.num_classes)
        max_pixels = recipe.export.max_pixels

        def answer(probabilities):
            top = tf.math.top_k(probabilities, k=top_k)
            names = tf.gather(class_names, top.indices)
            return {
                "class_name": names[:, 0],
                "score": top.values[:, 0],
                "probabilities": probabilities,
                "top_k_names": names,
                "top_k_scores": top.values,
            }

        def serve_image_bytes(image_bytes):
            batch = decode_batch(image_bytes, size, max_pixels)
            return with_status(answer(model(batch.images, training=False)), batch.status, max_pixels)

        def serve_images(images):
            resized = resize_float(images, size)
            return answer(model(resized, training=False))

        return serve_image_bytes, serve_images

    def export_metadata(self, data, recipe):
        return {"class_names": list(data.class_names), "top_k": min(recipe.options.top_k, data.num_classes)}

    def raw_output_contract(self, metadata):
        return {"meaning": "class probabilities [N, C] (softmax), in the order of class_names",
                "to_answers": ["the class is class_names[argmax]; sort the probabilities for the top k"]}

    # === Using an export ===
    def evaluation_files(self, folder, metadata, max_pixels):
        root = pathlib.Path(folder)
        if not root.is_dir():
            raise DataError(f"{root}: data folder not found")
        paths, labels, _, _, skipped = scan_class_folders(root, max_pixels, metadata["class_names"])
        return LabelledFiles(paths, [int(label) for label in labels], skipped)

    def predict_answer(self, path, answer, metadata, top_k, out_dir):
        class_names = metadata["class_names"]
        row = answer["probabilities"]
        best = np.argsort(-row)[:min(top_k or 1, len(class_names))]
        return {"file": path, "predictions": [
            {"class_name": class_names[i], "score": round(float(row[i]), 4)} for i in best]}
