"""Mask and box mAP of instance maps, computed by pycocotools (`iouType="segm"` and `"bbox"`).

Both sides are instance maps (each pixel's instance number), the form the
export serves and the pipeline carries, so the one scoring path serves training,
`imgpipe evaluate` and the robustness card. `max_detections` is pycocotools'
`maxDets`: its default 100 would cap AP on images with more objects than that.

Example:
    >>> instance_map_scores([truth_map], [(predicted_map, boxes, scores, classes)], ["cell"], 200)
    {'mask_map': 0.41, 'mask_map50': 0.78, 'box_map': 0.44, 'box_map50': 0.80, 'mask_ap50/cell': 0.78}
"""

import contextlib
import io

import numpy as np


def _rle(binary):
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))


def truth_instances(truth_map):
    """[(binary mask [H, W], class)] of a truth instance map [H, W, 2] (number, class); numbers <= 0 are none."""
    numbers = truth_map[..., 0]
    return [(numbers == number, int(truth_map[..., 1][numbers == number][0]))
            for number in np.unique(numbers[numbers > 0])]


def _coco_records(truths, detections):
    from pycocotools import mask as mask_utils

    images, annotations, masks, boxes = [], [], [], []
    for image_id, (truth_map, (found_map, found_boxes, scores, classes)) in enumerate(zip(truths, detections)):
        height, width = truth_map.shape[:2]
        images.append({"id": image_id, "height": height, "width": width})
        for binary, cls in truth_instances(truth_map):
            rle = _rle(binary)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls,
                                "segmentation": rle, "area": float(binary.sum()),
                                "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
        for number, (box, score, cls) in enumerate(zip(np.asarray(found_boxes, float).reshape(-1, 4),
                                                       np.asarray(scores).reshape(-1),
                                                       np.asarray(classes).reshape(-1)), start=1):
            masks.append({"image_id": image_id, "category_id": int(cls), "score": float(score),
                          "segmentation": _rle(found_map == number)})
            boxes.append({"image_id": image_id, "category_id": int(cls), "score": float(score),
                          "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    return images, annotations, masks, boxes


def _evaluate(images, annotations, results, class_names, iou_type, max_detections):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": i, "name": n} for i, n in enumerate(class_names)]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), iou_type)
        evaluation.params.maxDets = [1, 10, int(max_detections)]
        # Only the "all" area range is reported; small/medium/large would each repeat pycocotools' Python
        # matching loop (IoU thresholds x detections x true instances, 260,000 steps on a membrane slice).
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
        evaluation.evaluate()
        evaluation.accumulate()
    return evaluation


def instance_map_scores(truths, detections, class_names, max_detections):
    """Mask mAP@[.5:.95] and mAP@0.5, box mAP and mAP@0.5, and mask AP@0.5 per class.

    Args:
        truths: per image, the true instance map [H, W, 2] (instance number, class).
        detections: per image, (instance map [H, W] with 1..n for the n detections, boxes [n, 4] x_min y_min
            x_max y_max, scores [n], classes [n]), at the truth's size.
        class_names: list of C names.
        max_detections: pycocotools' largest maxDets.
    """
    images, annotations, masks, boxes = _coco_records(truths, detections)
    scores = {"mask_map": 0.0, "mask_map50": 0.0, "box_map": 0.0, "box_map50": 0.0}
    scores.update({f"mask_ap50/{name}": 0.0 for name in class_names})
    if not annotations:
        return {key: None for key in scores}
    if not masks:
        return scores
    for prefix, iou_type, results in (("mask", "segm", masks), ("box", "bbox", boxes)):
        evaluation = _evaluate(images, annotations, results, class_names, iou_type, max_detections)
        # From the precision table, not `stats`: pycocotools' summary asks for maxDets=100 by name for
        # mAP@[.5:.95], and answers -1 when the largest maxDets is another number.
        precision = evaluation.eval["precision"][..., 0, -1]  # [IoU thresholds, recall, class] at area "all"
        scores[f"{prefix}_map"] = _mean_precision(precision)
        scores[f"{prefix}_map50"] = _mean_precision(precision[0])
        if prefix == "mask":
            for index, name in enumerate(class_names):
                at_50 = precision[0, :, index]
                scores[f"mask_ap50/{name}"] = _mean_precision(at_50) if np.any(at_50 > -1) else None
    return scores


def _mean_precision(precision):
    """Mean of pycocotools' interpolated precision over the cells that have ground truth (-1: none)."""
    return float(precision[precision > -1].mean()) if np.any(precision > -1) else 0.0
