"""COCO-style mean average precision, computed by pycocotools (not re-implemented here).

Example:
    >>> coco_map([(gt_boxes, gt_classes)], [(boxes, scores, classes)], ["raccoon"])
    {'map': 0.71, 'map50': 0.93, 'ap/raccoon': 0.71, 'ap50/raccoon': 0.93}
"""

import contextlib
import io

import numpy as np


def coco_map(ground_truth, detections, class_names):
    """mAP@[.5:.95], mAP@0.5 and per-class AP of `detections` against `ground_truth`.

    Args:
        ground_truth: per image, (boxes [N, 4] x_min y_min x_max y_max, classes [N]).
        detections: per image, (boxes [K, 4], scores [K], classes [K]), same coordinates.
        class_names: list of C names (class index -> name).

    Returns:
        flat dict: map, map50, ap/<name>, ap50/<name> (None for a class with no ground truth).
    """
    empty = {"map": 0.0, "map50": 0.0}
    empty.update({f"{kind}/{name}": 0.0 for name in class_names for kind in ("ap", "ap50")})
    evaluation = _evaluated(ground_truth, detections, class_names)
    if evaluation is None:
        has_truth = any(len(np.asarray(classes).reshape(-1)) for _, classes in ground_truth)
        return empty if has_truth else {key: None if "/" in key else value for key, value in empty.items()}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"]  # [IoU thresholds, recall, class, area, max detections]
    metrics = {"map": float(evaluation.stats[0]), "map50": float(evaluation.stats[1])}
    for index, name in enumerate(class_names):
        all_iou = precision[:, :, index, 0, -1]
        at_50 = precision[0, :, index, 0, -1]
        metrics[f"ap/{name}"] = float(all_iou[all_iou > -1].mean()) if np.any(all_iou > -1) else None
        metrics[f"ap50/{name}"] = float(at_50[at_50 > -1].mean()) if np.any(at_50 > -1) else None
    return {key: (max(value, 0.0) if isinstance(value, float) else value) for key, value in metrics.items()}


def detection_hits(ground_truth, detections, class_names):
    """Each detection's score, whether pycocotools matched it to a true box of its class at IoU 0.5 (the
    matching mAP50 counts), and its image: what calibrating detection scores is fitted on.

    Example:
        >>> detection_hits([(gt_boxes, gt_classes)], [(boxes, scores, classes)], ["raccoon"])
        (array([0.62, 0.18]), array([1, 0]), array([0, 0]))

    Returns:
        (float [D], int [D] 1 = right, int [D] image index), the detections of every image.
    """
    evaluation = _evaluated(ground_truth, detections, class_names)
    scores, hits, images = [], [], []
    if evaluation is not None:
        for record in evaluation.evalImgs:
            # one record per class, area range and image; the first area range is "all"
            if record is None or record["aRng"] != evaluation.params.areaRng[0]:
                continue
            scores += list(record["dtScores"])
            hits += [int(match > 0) for match in record["dtMatches"][0]]  # [0]: IoU 0.5
            images += [record["image_id"]] * len(record["dtScores"])
    return np.array(scores, np.float64), np.array(hits, np.int64), np.array(images, np.int64)


def _evaluated(ground_truth, detections, class_names):
    """pycocotools' COCOeval of the detections, evaluated per image (None: no true box or no detection)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image_id, ((gt_boxes, gt_classes), (boxes, scores, classes)) in enumerate(zip(ground_truth, detections)):
        images.append({"id": image_id})
        for box, cls in zip(np.asarray(gt_boxes, float).reshape(-1, 4), np.asarray(gt_classes).reshape(-1)):
            width, height = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls),
                                "bbox": [box[0], box[1], width, height], "area": width * height, "iscrowd": 0})
        for box, score, cls in zip(np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores).reshape(-1),
                                   np.asarray(classes).reshape(-1)):
            results.append({"image_id": image_id, "category_id": int(cls), "score": float(score),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    if not annotations or not results:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": i, "name": n} for i, n in enumerate(class_names)]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.params.maxDets = [1, 10, 100]
        evaluation.evaluate()
    return evaluation
