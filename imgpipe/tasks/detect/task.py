"""Object detection: boxes and class names for every object, from VOC, COCO or YOLO annotations.

What is special here: targets are padded box arrays moved by box-aware
augmentation, a CenterNet-style head with its own loss, COCO mAP computed by
pycocotools on the validation split (at the end, and every
`detect.map_every` epochs), and serving that decodes, suppresses and answers
with boxes in the original image's pixels and class names.

Example:
    >>> result = imgpipe.run("detect", data="../shared/data/raccoon")
    >>> result.metrics["val_map50"]
"""

import pathlib

import keras
import numpy as np
import tensorflow as tf

from imgpipe.engine import plots
from imgpipe.tasks.detect.coco_eval import coco_map
from imgpipe.data.boxes import pad_boxes, unpad_boxes
from imgpipe.data.demo import demo_detection_folder
from imgpipe.data.detection import clean_split, read_annotations, read_detection
from imgpipe.data.images import DEFAULT_MAX_PIXELS, load_image
from imgpipe.errors import DataError
from imgpipe.engine.client import run_signature
from imgpipe.models import MODELS
from imgpipe.models.centernet import CenterNetLoss, decode_detections
from imgpipe.engine.serving import decode_batch, resize_float
from imgpipe.tasks.base import Task

DRAW_SCORE = 0.1  # the default detect.score_threshold
PREDICTION_SAMPLES = 8


def scale_boxes(boxes, from_size, to_size):
    """Boxes [.., 4] (x_min, y_min, x_max, y_max) from an image of `from_size` (h, w) to `to_size`."""
    scale = np.array([to_size[1] / from_size[1], to_size[0] / from_size[0]] * 2, np.float32)
    return np.asarray(boxes, np.float32) * scale


class MeanAveragePrecisionCallback(keras.callbacks.Callback):
    """Adds `val_map` and `val_map50` to the epoch logs, computed every `every` epochs.

    Every epoch gets the two keys (NaN until the first computation) because
    Keras' CSV logger fixes its columns at the first epoch.
    """

    def __init__(self, task, val_ds, data, every):
        super().__init__()
        self.task, self.val_ds, self.data, self.every = task, val_ds, data, every
        self.latest = {"map": float("nan"), "map50": float("nan")}

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            self.latest, _ = self.task.validation_map(self.model, self.val_ds, self.data)
        if logs is not None:
            logs["val_map"], logs["val_map50"] = self.latest["map"], self.latest["map50"]


class DetectionTask(Task):
    name = "detect"
    target_kind = "boxes"
    monitor = ("val_loss", "min")
    main_metric = "val_map50"

    # === Data ===
    def read_data(self, recipe):
        settings = recipe.data
        path = settings.path if settings.path is not None else str(demo_detection_folder())
        data_format = settings.format if settings.format in ("voc", "coco", "yolo") else "auto"
        data = read_detection(path, data_format, settings.val_split, settings.seed, settings.max_pixels,
                              settings.image_size)
        data.extras["max_boxes"] = recipe.options.max_boxes
        return data

    def describe_data(self, recipe, data):
        annotations = data.extras["annotations"]
        rows = {name: {"class": name, "training objects": 0, "validation objects": 0, "images": 0}
                for name in data.class_names}
        empty = {"training": 0, "validation": 0}
        for split, image_set in (("training", data.train), ("validation", data.val)):
            for index in image_set.targets:
                classes = annotations[int(index)].classes
                if len(classes) == 0:
                    empty[split] += 1
                for class_index in classes.tolist():
                    rows[data.class_names[class_index]][f"{split} objects"] += 1
                for class_index in set(classes.tolist()):
                    rows[data.class_names[class_index]]["images"] += 1
        return {
            "annotation format": data.extras["format"],
            "class names found": ", ".join(data.class_names),
            "images without objects": f"{empty['training']} training, {empty['validation']} validation "
                                      "(kept as negatives)",
            "objects per class": list(rows.values()),
        }

    def target_signature(self, data):
        return tf.float32, (data.extras["max_boxes"], 5)

    def load_target(self, data):
        annotations, max_boxes = data.extras["annotations"], data.extras["max_boxes"]

        def load(index, size):
            annotation = annotations[int(index)]
            boxes = scale_boxes(annotation.boxes, (annotation.height, annotation.width), size)
            return pad_boxes(boxes, annotation.classes, max_boxes)

        return load

    # === Model ===
    def build_model(self, recipe, data):
        build = MODELS.get(recipe.model.name, key="model.name")
        return build(tuple(data.image_size) + (3,), data.num_classes, weights=recipe.model.weights)

    def compile_settings(self, recipe, data):
        return {"loss": CenterNetLoss(data.num_classes)}

    def callbacks(self, recipe, data, val_ds):
        if not recipe.options.map_every:
            return []
        return [MeanAveragePrecisionCallback(self, val_ds, data, recipe.options.map_every)]

    # === Results ===
    def detect(self, model, images, num_classes):
        """Final detections for a batch of model-size images: lists of (boxes, scores, classes) in input pixels."""
        boxes, scores, classes, counts = decode_detections(model(images, training=False), num_classes)
        return [(b[:n], s[:n], c[:n]) for b, s, c, n in
                zip(boxes.numpy(), scores.numpy(), classes.numpy(), counts.numpy())]

    def validation_map(self, model, val_ds, data):
        """COCO mAP on the validation split in original-image pixels, and a few samples to draw."""
        annotations = data.extras["annotations"]
        truth, found, samples = [], [], []
        indices = iter(data.val.targets)
        for images, _ in val_ds:
            for image, (boxes, scores, classes) in zip(images.numpy(), self.detect(model, images, data.num_classes)):
                annotation = annotations[int(next(indices))]
                original = (annotation.height, annotation.width)
                truth.append((annotation.boxes, annotation.classes))
                found.append((scale_boxes(boxes, data.image_size, original), scores, classes))
                if len(samples) < PREDICTION_SAMPLES:
                    samples.append((image.astype(np.uint8), scale_boxes(annotation.boxes, original, data.image_size),
                                    annotation.classes, boxes, scores, classes))
        return coco_map(truth, found, data.class_names), samples

    def final_metrics(self, model, val_ds, data, run_dir):
        metrics = super().final_metrics(model, val_ds, data, run_dir)
        average_precision, samples = self.validation_map(model, val_ds, data)
        metrics.update({f"val_{key}": value for key, value in average_precision.items()})
        images, titles = [], []
        for image, gt_boxes, gt_classes, boxes, scores, classes in samples:
            keep = scores >= DRAW_SCORE
            drawn = plots.draw_boxes(image, gt_boxes, [data.class_names[c] for c in gt_classes], (40, 220, 40))
            images.append(plots.draw_boxes(drawn, boxes[keep], [f"{data.class_names[c]} {s:.2f}" for c, s in
                                                                 zip(classes[keep], scores[keep])], (230, 40, 40)))
            titles.append(f"{int(keep.sum())} found / {len(gt_boxes)} true")
        plots.plot_image_grid(images, titles, pathlib.Path(run_dir) / "predictions.png", columns=4,
                               title="validation: truth (green) and predictions (red)")
        return metrics

    def preview(self, samples, data, path):
        images, titles = [], []
        for image, padded in samples:
            boxes, classes = unpad_boxes(padded)
            images.append(plots.draw_boxes(image, boxes, [data.class_names[c] for c in classes], (40, 220, 40)))
            titles.append(f"{len(boxes)} box(es)")
        return plots.plot_image_grid(images, titles, path, columns=6, title="augmented training samples")

    # === Robustness ===
    robustness_metric_name = "map50"

    def robustness_answers(self, model, images, metadata):
        # As the export answers: its score threshold and detection limit, boxes clipped to the image.
        boxes, scores, classes, counts = decode_detections(
            model(images, training=False), len(metadata["class_names"]), max_detections=metadata["max_detections"],
            min_score=metadata["score_threshold"])
        height, width = images.shape[1:3]
        boxes = np.clip(boxes.numpy(), 0.0, np.array([width, height, width, height], np.float32))
        return {"boxes": boxes, "scores": scores.numpy(), "class_ids": classes.numpy(),
                "num_detections": counts.numpy()}

    def robustness_metric(self, answers, images, targets, metadata):
        truth = [unpad_boxes(padded) for padded in targets]
        found = [(answers["boxes"][i][:n], answers["scores"][i][:n], answers["class_ids"][i][:n])
                 for i, n in enumerate(answers["num_detections"])]
        return coco_map(truth, found, metadata["class_names"])["map50"]

    # === Serving ===
    def export_archive(self, model, data, recipe):
        size = list(data.image_size)
        class_names = tf.constant(list(data.class_names) + [""])
        num_classes = data.num_classes
        settings = recipe.options

        def answer(images, original_sizes):
            boxes, scores, classes, counts = decode_detections(
                model(images, training=False), num_classes, max_detections=settings.max_detections,
                min_score=settings.score_threshold)
            scale = tf.cast(original_sizes, tf.float32) / tf.constant(size, tf.float32)
            scale = tf.stack([scale[:, 1], scale[:, 0], scale[:, 1], scale[:, 0]], axis=-1)[:, None, :]
            limit = tf.cast(tf.stack([original_sizes[:, 1], original_sizes[:, 0]] * 2, axis=-1), tf.float32)
            boxes = tf.clip_by_value(boxes * scale, 0.0, limit[:, None, :])
            present = tf.sequence_mask(counts, tf.shape(scores)[1])
            classes = tf.where(present, classes, -1)
            names = tf.gather(class_names, tf.where(present, classes, num_classes))
            return {"boxes": boxes, "scores": scores, "class_ids": classes, "class_names": names,
                    "num_detections": counts}

        def serve_image_bytes(image_bytes):
            images, sizes = decode_batch(image_bytes, size)
            return answer(images, sizes)

        def serve_images(images):
            sizes = tf.tile(tf.shape(images)[1:3][None], [tf.shape(images)[0], 1])
            return answer(resize_float(images, size), sizes)

        return self.make_archive(model, serve_image_bytes, serve_images)

    def export_metadata(self, data, recipe):
        return {"class_names": list(data.class_names), "box_format": "x_min, y_min, x_max, y_max (pixels)",
                "score_threshold": recipe.options.score_threshold, "max_detections": recipe.options.max_detections}

    # === Using an export ===
    def evaluate_export(self, loaded, metadata, data_path, report_dir):
        splits, names, _ = read_annotations(data_path)
        missing = sorted(set(names) - set(metadata["class_names"]))
        if missing:
            raise DataError(f"{data_path}: class {missing[0]!r} is not one of the model's classes")
        annotations, _, skipped = clean_split([a for split in splits.values() for a in split], DEFAULT_MAX_PIXELS)
        index_of = {name: metadata["class_names"].index(name) for name in names}
        outputs = run_signature(loaded, [a.image for a in annotations])
        truth = [(a.boxes, [index_of[names[c]] for c in a.classes]) for a in annotations]
        found = [(outputs["boxes"][i][:n], outputs["scores"][i][:n], outputs["class_ids"][i][:n])
                 for i, n in enumerate(outputs["num_detections"])]
        return {**coco_map(truth, found, metadata["class_names"]), "images": len(annotations),
                "skipped_files": len(skipped), "score_threshold": metadata["score_threshold"]}

    def predict_export(self, loaded, metadata, paths, top_k, out_dir=None):
        """Boxes per file, and each image drawn with its boxes into `out_dir` (default runs/predict/<name>)."""
        out_dir = pathlib.Path(out_dir) if out_dir is not None else pathlib.Path("runs") / "predict" / metadata["name"]
        outputs = run_signature(loaded, paths)
        results = []
        for index, path in enumerate(paths):
            count = int(outputs["num_detections"][index])
            objects = [{"class_name": outputs["class_names"][index][i].decode(),
                        "score": round(float(outputs["scores"][index][i]), 4),
                        "box": [round(float(v), 1) for v in outputs["boxes"][index][i]]} for i in range(count)]
            target = out_dir / (pathlib.Path(path).stem + "_boxes.png")
            target.parent.mkdir(parents=True, exist_ok=True)
            drawn = plots.draw_boxes(load_image(path), [o["box"] for o in objects],
                                      [f"{o['class_name']} {o['score']:.2f}" for o in objects], (230, 40, 40))
            plots.save_image(drawn, target)
            results.append({"file": path, "objects": objects, "drawn": str(target)})
        return results
