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

import numpy as np
import tensorflow as tf

from imgpipe.engine import plots
from imgpipe.tasks.detect.coco_eval import coco_map, detection_hits
from imgpipe.data.annotated_split import objects_per_class
from imgpipe.data.boxes import pad_boxes, unpad_boxes
from imgpipe.data.demo import demo_detection_folder
from imgpipe.data.detection import DetectionLabels, clean_split, read_annotations, read_detection
from imgpipe.data.images import load_image
from imgpipe.data.sources import LabelledFiles
from imgpipe.errors import DataError
from imgpipe.engine.client import per_image
from imgpipe.engine.periodic_scores import PeriodicScores
from imgpipe.engine.scoring import first_images
from imgpipe.models import MODELS
from imgpipe.models.centernet import NMS_IOU, STRIDE, CenterNetLoss, decode_detections
from imgpipe.engine.serving import decode_batch, resize_float, with_status
from imgpipe.tasks.base import Task
from imgpipe.understand.calibration import fit_logistic, logistic, score_calibration_record

PREDICTION_SAMPLES = 8
EVIDENCE_BATCH = 16  # images asked at once for suspect boxes
CALIBRATION_MIN_IMAGES = 10  # each half needs a few images' detections, right and wrong ones


def score_calibration(answers, truths, class_names, run_dir):
    """metrics.json's `calibration` for detection scores: is a box scored 0.6 right 60 % of the time?

    "Right" is what mAP50 counts: matched by pycocotools to a true box of its class at IoU 0.5. A
    mapping of the scores' log-odds is fitted on the detections of half the validation images and
    reported on the other half's (Platt scaling: a temperature alone cannot lift the 0.2-0.4 scores of
    mostly right boxes above 0.5). Boxes the model missed have no score, so this says nothing about
    recall. Reported, not served: the served boxes are cut at export.score_threshold on the network's own
    scores, and a calibrated score beside a threshold on another scale would mislead.
    """
    found = [(a["boxes"][:a["num_detections"]], a["scores"][:a["num_detections"]],
              a["class_ids"][:a["num_detections"]]) for a in answers]
    scores, hits, image_of_row = detection_hits(truths, found, class_names)
    if not len(scores):
        return {"skipped": "not fitted: no detection on the validation images"}
    return score_calibration_record(scores, hits, image_of_row, run_dir, "validation detections",
                                    CALIBRATION_MIN_IMAGES, not_served="the served boxes keep the network's "
                                    "scores, the scale of export.score_threshold")


def scale_boxes(boxes, from_size, to_size):
    """Boxes [.., 4] (x_min, y_min, x_max, y_max) from an image of `from_size` (h, w) to `to_size`."""
    scale = np.array([to_size[1] / from_size[1], to_size[0] / from_size[0]] * 2, np.float32)
    return np.asarray(boxes, np.float32) * scale


class DetectionTask(Task):
    name = "detect"
    target_kind = "boxes"
    monitor = ("val_loss", "min")
    main_metric = "val_map50"
    state_class = DetectionLabels
    pretrained_model = "centernet_mobilenet_v2"
    scratch_model = "centernet"

    # === Data ===
    def read_data(self, recipe):
        settings = recipe.data
        path = settings.path if settings.path is not None else str(demo_detection_folder())
        data_format = settings.format if settings.format in ("voc", "coco", "yolo") else "auto"
        data = read_detection(path, data_format, settings.val_split, settings.seed, settings.max_pixels,
                              settings.image_size, settings.split_groups)
        data.state.max_boxes = recipe.options.max_boxes
        return data

    def describe_data(self, recipe, data):
        rows, empty = objects_per_class(data, "objects")
        return {
            "annotation format": data.state.format,
            "class names found": ", ".join(data.class_names),
            "images without objects": f"{empty['training']} training, {empty['validation']} validation "
                                      "(kept as negatives)",
            "objects per class": rows,
        }

    def target_signature(self, data):
        return tf.float32, (data.state.max_boxes, 5)

    def load_target(self, data):
        annotations, max_boxes = data.state.annotations, data.state.max_boxes

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

    def monitor_for(self, recipe, multi_worker=False):
        """mAP50 when `detect.map_every` scores it during training, else the validation loss.

        The loss is a poor guide to the boxes: with the weights folder on raccoon, two runs passed 0.80
        mAP50 while training (0.816, 0.829) and returned 0.798 and 0.619, the epochs of the lowest
        validation loss. Ultralytics chooses its best.pt by a fitness made of mAP50 and mAP50-95. Like
        every early-stopping choice, the epoch is picked on the validation images that then score it.
        A score repeats unchanged between scorings, so `train.patience` below `detect.map_every` would
        stop training after the first; then, when no scoring falls within `train.epochs`, and on several
        workers (`Task.monitor_for`), the loss is followed.

        Example:
            >>> DetectionTask().monitor_for(load_recipe("detect"))
            ('val_map50', 'max')
        """
        every, patience = recipe.options.map_every, recipe.train.patience
        scored = every and every <= recipe.train.epochs and (patience == 0 or patience >= every) and not multi_worker
        return ("val_map50", "max") if scored else self.monitor

    def callbacks(self, recipe, data, val_ds):
        if not recipe.options.map_every:
            return []
        metadata = {"class_names": list(data.class_names), **self.export_metadata(data, recipe)}
        return [PeriodicScores(self, val_ds, metadata, recipe.options.map_every, ("map", "map50"))]

    # === Scoring ===
    def answers(self, model, images, metadata):
        # As the export answers: its score threshold and detection limit, boxes clipped to the image.
        boxes, scores, classes, counts = decode_detections(
            model(images, training=False), len(metadata["class_names"]), max_detections=metadata["max_detections"],
            min_score=metadata["score_threshold"])
        height, width = images.shape[1:3]
        boxes = np.clip(boxes.numpy(), 0.0, np.array([width, height, width, height], np.float32))
        return {"boxes": boxes, "scores": scores.numpy(), "class_ids": classes.numpy(),
                "num_detections": counts.numpy()}

    def truth(self, image, target):
        return unpad_boxes(target)

    def score(self, answers, truths, metadata):
        found = [(a["boxes"][:a["num_detections"]], a["scores"][:a["num_detections"]],
                  a["class_ids"][:a["num_detections"]]) for a in answers]
        return coco_map(truths, found, metadata["class_names"])

    def report_validation(self, model, val_ds, answers, truths, data, metadata, run_dir):
        images, titles = [], []
        for image, (gt_boxes, gt_classes), answer in zip(first_images(val_ds, PREDICTION_SAMPLES), truths, answers):
            count = answer["num_detections"]
            boxes, scores, classes = answer["boxes"][:count], answer["scores"][:count], answer["class_ids"][:count]
            drawn = plots.draw_boxes(image, gt_boxes, [data.class_names[c] for c in gt_classes], (40, 220, 40))
            images.append(plots.draw_boxes(drawn, boxes, [f"{data.class_names[c]} {s:.2f}" for c, s in
                                                          zip(classes, scores)], (230, 40, 40)))
            titles.append(f"{count} found / {len(gt_boxes)} true")
        plots.plot_image_grid(images, titles, pathlib.Path(run_dir) / "predictions.png", columns=4,
                              title="validation: truth (green) and predictions (red)")
        return {"calibration": score_calibration(answers, truths, data.class_names, run_dir)}

    def preview(self, samples, data, path):
        images, titles = [], []
        for image, padded in samples:
            boxes, classes = unpad_boxes(padded)
            images.append(plots.draw_boxes(image, boxes, [data.class_names[c] for c in classes], (40, 220, 40)))
            titles.append(f"{len(boxes)} box(es)")
        return plots.plot_image_grid(images, titles, path, columns=6, title="augmented training samples")

    # === Suspect labels ===
    suspect_labels = "boxes"

    def box_evidence(self, model, images, targets, metadata):
        """What cleanlab judges box labels by: per image, the given (boxes, classes), and the model's (boxes,
        probabilities, classes) at the model's size.

        The probabilities are the scores mapped by Platt scaling fitted on these images' own matches
        (`score_calibration`'s method, two numbers): cleanlab counts a predicted box as evidence from 0.95,
        which CenterNet's raw peaks (0.2-0.4 after short training) never reach.
        """
        answers = []
        for start in range(0, len(images), EVIDENCE_BATCH):
            answers += per_image(self.answers(model, images[start:start + EVIDENCE_BATCH].astype(np.float32),
                                              metadata))
        given = [self.truth(image, target) for image, target in zip(images, targets)]
        found = [(a["boxes"][:a["num_detections"]], a["scores"][:a["num_detections"]],
                  a["class_ids"][:a["num_detections"]]) for a in answers]
        scores, hits, _ = detection_hits(given, found, metadata["class_names"])
        slope, intercept = fit_logistic(scores, hits) if 0 < hits.sum() < len(hits) else (1.0, 0.0)
        return given, [(boxes, logistic(found_scores, slope, intercept), ids) for boxes, found_scores, ids in found]

    # === Robustness ===
    robustness_metric_name = "map50"

    # === Serving ===
    def serving_functions(self, model, data, recipe):
        size = list(data.image_size)
        class_names = tf.constant(list(data.class_names) + [""])
        num_classes = data.num_classes
        settings = recipe.options
        max_pixels = recipe.export.max_pixels

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
            batch = decode_batch(image_bytes, size, max_pixels)
            return with_status(answer(batch.images, batch.sizes), batch.status, max_pixels,
                               neutral={"class_ids": -1})

        def serve_images(images):
            sizes = tf.tile(tf.shape(images)[1:3][None], [tf.shape(images)[0], 1])
            return answer(resize_float(images, size), sizes)

        return serve_image_bytes, serve_images

    def export_metadata(self, data, recipe):
        return {"class_names": list(data.class_names), "box_format": "x_min, y_min, x_max, y_max (pixels)",
                "score_threshold": recipe.options.score_threshold, "max_detections": recipe.options.max_detections}

    def raw_output_contract(self, metadata):
        classes = len(metadata["class_names"])
        return {"meaning": f"CenterNet head [N, H/{STRIDE}, W/{STRIDE}, {classes} + 4]: {classes} class heat-map "
                           "logits, then log(box width / stride), log(box height / stride), the centre's x and y "
                           "offsets within its cell",
                "to_answers": [
                    "heat = sigmoid(the class logits); a peak is a heat value equal to the 3x3 max-pool of heat",
                    f"keep the top {2 * metadata['max_detections']} peaks over all cells and classes",
                    f"centre x = (column + x offset) * {STRIDE}, centre y = (row + y offset) * {STRIDE}; "
                    f"width = exp(min(log width, 10)) * {STRIDE}, height likewise, in model input pixels",
                    f"per-class non-maximum suppression at IoU {NMS_IOU}, then keep scores >= "
                    f"{metadata['score_threshold']}, at most {metadata['max_detections']} boxes",
                    "scale boxes from the model's input size to the image's size and clip them to it",
                    "NMS is the caller's: the file holds the network only (LiteRT has no built-in combined "
                    "NMS and full-integer int8 cannot hold one)"]}

    # === Using an export ===
    def evaluation_files(self, folder, metadata, max_pixels):
        splits, names, _ = read_annotations(folder, max_pixels=max_pixels)
        missing = sorted(set(names) - set(metadata["class_names"]))
        if missing:
            raise DataError(f"{folder}: class {missing[0]!r} is not one of the model's classes")
        annotations, _, skipped = clean_split([a for split in splits.values() for a in split], max_pixels)
        index_of = {name: metadata["class_names"].index(name) for name in names}
        return LabelledFiles([a.image for a in annotations],
                             [(a.boxes, np.array([index_of[names[c]] for c in a.classes], np.int64))
                              for a in annotations], skipped)

    def predict_answer(self, path, answer, metadata, top_k, out_dir):
        """Boxes of a file, and the image drawn with its boxes into `out_dir` (default runs/predict/<name>)."""
        out_dir = pathlib.Path(out_dir) if out_dir is not None else pathlib.Path("runs") / "predict" / metadata["name"]
        count = int(answer["num_detections"])
        objects = [{"class_name": answer["class_names"][i].decode(), "score": round(float(answer["scores"][i]), 4),
                    "box": [round(float(v), 1) for v in answer["boxes"][i]]} for i in range(count)]
        target = out_dir / (pathlib.Path(path).stem + "_boxes.png")
        target.parent.mkdir(parents=True, exist_ok=True)
        drawn = plots.draw_boxes(load_image(path), [o["box"] for o in objects],
                                  [f"{o['class_name']} {o['score']:.2f}" for o in objects], (230, 40, 40))
        plots.save_image(drawn, target)
        return {"file": path, "objects": objects, "drawn": str(target)}
