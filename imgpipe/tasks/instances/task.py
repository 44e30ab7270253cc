"""Instance segmentation: each object its own mask, box, class and score.

What is special here: targets are instance-ID maps (instance number and class
per pixel) moved by augmentation as one mask, a CenterNet + prototype-mask
model (`imgpipe.models.centermask`) with its loss, pycocotools mask and box
mAP on the validation split (every `instances.map_every` epochs and at the
end, `maxDets` raised to `instances.max_detections`), and serving that answers
with boxes in the original image's pixels, class names, one instance-ID PNG
per image and one PNG per instance, cropped to its box.

Example:
    >>> result = imgpipe.run("instances", data="./cells")
    >>> result.metrics["val_mask_map50"]
"""

import io
import pathlib

import numpy as np
import tensorflow as tf
from PIL import Image

from imgpipe.data.annotated_split import objects_per_class
from imgpipe.data.demo import demo_instances_folder
from imgpipe.data.images import load_image
from imgpipe.data.instances import InstanceLabels, read_instance_annotations, read_instances
from imgpipe.data.sources import LabelledFiles
from imgpipe.engine import plots
from imgpipe.engine.augment import register_target_kind
from imgpipe.engine.periodic_scores import PeriodicScores
from imgpipe.engine.scoring import first_images
from imgpipe.engine.serving import decode_batch, resize_float, with_status
from imgpipe.errors import DataError
from imgpipe.models import MODELS
from imgpipe.models.centermask import (MASK_THRESHOLD, InstanceLoss, decode_instances, instance_id_map,
                                      paint_instances)
from imgpipe.models.centernet import NMS_IOU, STRIDE
from imgpipe.tasks.base import Task
from imgpipe.tasks.instances.instance_target import InstanceMapTarget
from imgpipe.tasks.instances.mask_eval import instance_map_scores, truth_instances

register_target_kind("instances", InstanceMapTarget())

PREDICTION_SAMPLES = 8
SURE_SCORE = 0.5  # predictions.png counts the instances scored at least this beside all it found
# Served instance maps are painted at the image's own size up to this many pixels, and scaled up with
# nearest neighbour beyond it: painting resizes each mask to the painted size.
MASK_PIXELS = 1 << 20


def instance_palette(count):
    """uint8 [count + 1, 3]: index 0 unused (background), then colours that neighbours rarely share."""
    base = plots.class_palette(20)
    order = np.arange(count) * 7 % 20  # a stride coprime to 20: consecutive numbers get distant colours
    return np.concatenate([np.zeros((1, 3), np.uint8), base[order]])


def draw_instances(image, number_map, boxes=None, labels=None):
    """The image tinted with one colour per instance number (0 untouched) and each instance outlined in
    white, so touching instances of one class show as two; optional boxes and labels."""
    number_map = np.asarray(number_map)
    drawn = plots.overlay_mask(image, np.maximum(number_map, 0), instance_palette(int(number_map.max(initial=0))),
                               alpha=0.6, ignore_index=0)
    padded = np.pad(number_map, 1, mode="edge")
    edge = (number_map > 0) & ((padded[:-2, 1:-1] != number_map) | (padded[2:, 1:-1] != number_map) |
                               (padded[1:-1, :-2] != number_map) | (padded[1:-1, 2:] != number_map))
    drawn[edge] = 255
    if boxes is not None and len(boxes):
        drawn = plots.draw_boxes(drawn, boxes, labels, (255, 255, 255))
    return drawn


def found_map(answer, shape):
    """An answer's instance map: the model's, or the served PNG decoded (what a client gets), at `shape`."""
    if "instance_map" in answer:
        return np.asarray(answer["instance_map"])
    if (int(answer["height"]), int(answer["width"])) != tuple(shape):
        raise DataError(f"an instance mask is {shape[1]}x{shape[0]} but the model saw {int(answer['width'])}x"
                        f"{int(answer['height'])} (an EXIF-rotated image?)")
    return np.asarray(Image.open(io.BytesIO(answer["instance_png_bytes"])), dtype=np.int32)


class InstanceSegmentationTask(Task):
    name = "instances"
    target_kind = "instances"
    monitor = ("val_loss", "min")
    main_metric = "val_mask_map50"
    state_class = InstanceLabels
    pretrained_model = "centermask_mobilenet_v2"
    scratch_model = "centermask"

    # === Data ===
    def read_data(self, recipe):
        settings = recipe.data
        path = settings.path if settings.path is not None else str(demo_instances_folder())
        data_format = settings.format if settings.format in ("coco", "yolo", "masks") else "auto"
        return read_instances(path, data_format, settings.val_split, settings.seed, settings.max_pixels,
                              settings.image_size, settings.split_groups)

    def describe_data(self, recipe, data):
        rows, empty = objects_per_class(data, "instances")
        most = max(len(annotation.classes) for annotation in data.state.annotations)
        return {
            "annotation format": data.state.format,
            "class names found": ", ".join(data.class_names),
            "most instances in one image": f"{most} (instances.max_detections is {recipe.options.max_detections})",
            "images without instances": f"{empty['training']} training, {empty['validation']} validation "
                                        "(kept as negatives)",
            "instances per class": rows,
        }

    def target_signature(self, data):
        return tf.int32, tuple(data.image_size) + (2,)

    def load_target(self, data):
        annotations = data.state.annotations

        def load(index, size):
            return annotations[int(index)].render(tuple(size)).astype(np.int32)

        return load

    # === Model ===
    def build_model(self, recipe, data):
        build = MODELS.get(recipe.model.name, key="model.name")
        return build(tuple(data.image_size) + (3,), data.num_classes, weights=recipe.model.weights)

    def compile_settings(self, recipe, data):
        return {"loss": InstanceLoss(data.num_classes, recipe.options.mask_weight)}

    def callbacks(self, recipe, data, val_ds):
        if not recipe.options.map_every:
            return []
        metadata = {"class_names": list(data.class_names), **self.export_metadata(data, recipe)}
        return [PeriodicScores(self, val_ds, metadata, recipe.options.map_every, ("mask_map50", "box_map50"))]

    # === Scoring ===
    def answers(self, model, images, metadata):
        boxes, scores, classes, counts, logits = decode_instances(
            model(images, training=False), len(metadata["class_names"]), max_detections=metadata["max_detections"],
            min_score=metadata["score_threshold"])
        height, width = images.shape[1:3]
        maps = instance_id_map(logits, boxes, scores, counts, (height, width)).numpy()
        boxes = np.clip(boxes.numpy(), 0.0, np.array([width, height, width, height], np.float32))
        return {"boxes": boxes, "scores": scores.numpy(), "class_ids": classes.numpy(),
                "num_detections": counts.numpy(), "instance_map": maps}

    def score(self, answers, truths, metadata):
        detections = []
        for answer, truth in zip(answers, truths):
            count = int(answer["num_detections"])
            detections.append((found_map(answer, truth.shape[:2]), answer["boxes"][:count], answer["scores"][:count],
                               answer["class_ids"][:count]))
        return instance_map_scores(truths, detections, metadata["class_names"], metadata["max_detections"])

    def report_validation(self, model, val_ds, answers, truths, data, metadata, run_dir):
        images, titles = [], []
        for image, truth, answer in zip(first_images(val_ds, PREDICTION_SAMPLES), truths, answers):
            count = int(answer["num_detections"])
            sure = int((answer["scores"][:count] >= SURE_SCORE).sum())
            images += [draw_instances(image, truth[..., 0]), draw_instances(image, answer["instance_map"])]
            titles += [f"truth: {len(truth_instances(truth))}", f"found: {count}, {sure} >= {SURE_SCORE}"]
        plots.plot_image_grid(images, titles, pathlib.Path(run_dir) / "predictions.png", columns=4,
                              title="validation: true instances | predicted instances (one colour each)")
        return {}

    def preview(self, samples, data, path):
        images = [draw_instances(image, target[..., 0]) for image, target in samples]
        titles = [f"{len(np.unique(target[..., 0][target[..., 0] > 0]))} instance(s)" for _, target in samples]
        return plots.plot_image_grid(images, titles, path, columns=6, title="augmented training samples")

    # === Robustness ===
    robustness_metric_name = "mask_map50"

    # === Serving ===
    def serving_functions(self, model, data, recipe):
        size = list(data.image_size)
        class_names = tf.constant(list(data.class_names) + [""])
        num_classes = data.num_classes
        settings = recipe.options
        max_pixels = recipe.export.max_pixels

        def detect(images):
            return decode_instances(model(images, training=False), num_classes, max_detections=settings.max_detections,
                                    min_score=settings.score_threshold)

        def in_user_terms(boxes, scores, classes, counts, sizes):
            scale = tf.cast(sizes, tf.float32) / tf.constant(size, tf.float32)
            scale = tf.stack([scale[:, 1], scale[:, 0], scale[:, 1], scale[:, 0]], axis=-1)[:, None, :]
            limit = tf.cast(tf.stack([sizes[:, 1], sizes[:, 0]] * 2, axis=-1), tf.float32)
            boxes = tf.clip_by_value(boxes * scale, 0.0, limit[:, None, :])
            present = tf.sequence_mask(counts, tf.shape(scores)[1])
            classes = tf.where(present, classes, -1)
            return {"boxes": boxes, "scores": scores, "class_ids": classes, "num_detections": counts,
                    "class_names": tf.gather(class_names, tf.where(present, classes, num_classes))}

        def painted(logits, boxes, scores, count, original):
            """One image's ID map at its `original` size: painted there up to MASK_PIXELS, scaled up beyond."""
            pixels = tf.cast(original[0] * original[1], tf.float32)
            shrink = tf.minimum(1.0, tf.sqrt(MASK_PIXELS / pixels))
            paint_size = tf.maximum(tf.cast(tf.round(tf.cast(original, tf.float32) * shrink), tf.int32), 1)
            factor = tf.cast(paint_size, tf.float32) / tf.constant(size, tf.float32)
            id_map = paint_instances(logits, boxes * tf.stack([factor[1], factor[0]] * 2), scores, count, paint_size)
            return tf.image.resize(id_map[..., None], original, method="nearest")[..., 0]

        def pngs(logits, boxes, scores, counts, sizes, user_boxes):
            """Per image, its instance-ID PNG at its own size and one PNG per instance cropped to its box.

            One image at a time: the full-size map of a 25-megapixel image is 50 MB of uint16, and
            several at once are not bounded by the pixel budget.
            """
            def one(args):
                image_logits, image_boxes, image_scores, count, original, placed = args

                def answer():
                    full = painted(image_logits, image_boxes, image_scores, count, original)

                    def crop(number):
                        box = placed[number]
                        x0 = tf.clip_by_value(tf.cast(tf.floor(box[0]), tf.int32), 0, original[1] - 1)
                        y0 = tf.clip_by_value(tf.cast(tf.floor(box[1]), tf.int32), 0, original[0] - 1)
                        x1 = tf.clip_by_value(tf.cast(tf.math.ceil(box[2]), tf.int32), x0 + 1, original[1])
                        y1 = tf.clip_by_value(tf.cast(tf.math.ceil(box[3]), tf.int32), y0 + 1, original[0])
                        pixels = tf.equal(full[y0:y1, x0:x1], number + 1)
                        return tf.cond(number < count,
                                       lambda: tf.io.encode_png(tf.cast(pixels, tf.uint8)[..., None] * 255),
                                       lambda: tf.constant(b""))

                    crops = tf.map_fn(crop, tf.range(tf.shape(placed)[0]), parallel_iterations=1,
                                      fn_output_signature=tf.TensorSpec([], tf.string))
                    return tf.io.encode_png(tf.cast(full, tf.uint16)[..., None]), crops

                def refused():  # an image serving_default did not decode (its size is 0 x 0): no masks
                    return tf.constant(b""), tf.fill([tf.shape(placed)[0]], "")

                return tf.cond(tf.reduce_all(original > 0), answer, refused)

            return tf.map_fn(one, (logits, boxes, scores, counts, sizes, user_boxes), parallel_iterations=1,
                             fn_output_signature=(tf.TensorSpec([], tf.string), tf.TensorSpec([None], tf.string)))

        def serve_image_bytes(image_bytes):
            batch = decode_batch(image_bytes, size, max_pixels)
            boxes, scores, classes, counts, logits = detect(batch.images)
            answer = in_user_terms(boxes, scores, classes, counts, batch.sizes)
            answer["instance_png_bytes"], answer["instance_mask_png_bytes"] = pngs(
                logits, boxes, scores, counts, batch.sizes, answer["boxes"])
            answer["height"], answer["width"] = batch.sizes[:, 0], batch.sizes[:, 1]
            return with_status(answer, batch.status, max_pixels, neutral={"class_ids": -1})

        def serve_images(images):
            sizes = tf.tile(tf.shape(images)[1:3][None], [tf.shape(images)[0], 1])
            boxes, scores, classes, counts, logits = detect(resize_float(images, size))
            answer = in_user_terms(boxes, scores, classes, counts, sizes)
            answer["instance_map"] = tf.map_fn(lambda args: painted(*args), (logits, boxes, scores, counts, sizes),
                                               fn_output_signature=tf.TensorSpec([None, None], tf.int32))
            return answer

        return serve_image_bytes, serve_images

    def export_metadata(self, data, recipe):
        return {"class_names": list(data.class_names), "box_format": "x_min, y_min, x_max, y_max (pixels)",
                "score_threshold": recipe.options.score_threshold, "max_detections": recipe.options.max_detections,
                "instance_png": "uint16 PNG at the image's size: 0 background, n for the n-th detection",
                "instance_mask_png": "per detection, a 0/255 PNG of its pixels inside its box (from floor(x_min), "
                                     "floor(y_min)); empty beyond num_detections"}

    def raw_output_contract(self, metadata):
        classes = len(metadata["class_names"])
        return {"meaning": f"[N, H/{STRIDE}, W/{STRIDE}, {classes} + 4 + 2P]: CenterNet's {classes} heat-map logits "
                           "and 4 box channels (log width, log height, x and y offset, in cells), then P mask "
                           "coefficients, then P prototype maps",
                "to_answers": [
                    "peaks, boxes and scores exactly as the detection task's contract: a peak is a sigmoid heat "
                    f"value equal to its 3x3 max-pool; top {2 * metadata['max_detections']} over cells and classes; "
                    f"centre = (cell + offset) * {STRIDE}, side = exp(log side) * {STRIDE}",
                    f"per-class non-maximum suppression at IoU {NMS_IOU}, scores >= {metadata['score_threshold']}, "
                    f"at most {metadata['max_detections']}; keep each kept peak's cell",
                    "a detection's mask logits = the prototypes [H/4, W/4, P] times the P coefficients at its cell",
                    f"resize the mask logits to the image (bilinear); its pixels are those inside its box with "
                    f"sigmoid > {MASK_THRESHOLD}; where masks overlap the higher score wins"]}

    # === Using an export ===
    def evaluation_files(self, folder, metadata, max_pixels):
        splits, names, _ = read_instance_annotations(folder, max_pixels=max_pixels)
        missing = sorted(set(names) - set(metadata["class_names"]))
        if missing:
            raise DataError(f"{folder}: class {missing[0]!r} is not one of the model's classes")
        index_of = np.array([metadata["class_names"].index(name) for name in names], np.int32)
        annotations = [a for split in splits.values() for a in split]
        truths = []
        for annotation in annotations:
            truth = annotation.render((annotation.height, annotation.width)).astype(np.int32)
            truth[..., 1] = np.where(truth[..., 0] > 0, index_of[truth[..., 1]], 0)
            truths.append(truth)
        return LabelledFiles([a.image for a in annotations], truths)

    def predict_answer(self, path, answer, metadata, top_k, out_dir):
        """Instances of a file; its instance-ID PNG and a drawing go to `out_dir` (default runs/predict/<name>)."""
        out_dir = pathlib.Path(out_dir) if out_dir is not None else pathlib.Path("runs") / "predict" / metadata["name"]
        count = int(answer["num_detections"])
        id_map = np.asarray(Image.open(io.BytesIO(answer["instance_png_bytes"])), dtype=np.int32)
        pixels = np.bincount(id_map.ravel(), minlength=count + 1)
        objects = [{"class_name": answer["class_names"][i].decode(), "score": round(float(answer["scores"][i]), 4),
                    "box": [round(float(v), 1) for v in answer["boxes"][i]], "pixels": int(pixels[i + 1])}
                   for i in range(count)]
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = pathlib.Path(path).stem
        (out_dir / f"{stem}_instances.png").write_bytes(answer["instance_png_bytes"])
        drawn = draw_instances(load_image(path), id_map, [o["box"] for o in objects] if count <= 50 else None,
                               [f"{o['class_name']} {o['score']:.2f}" for o in objects] if count <= 50 else None)
        plots.save_image(drawn, out_dir / f"{stem}_drawn.png")
        return {"file": path, "count": count, "objects": objects,
                "instance_png": str(out_dir / f"{stem}_instances.png"), "drawn": str(out_dir / f"{stem}_drawn.png")}
