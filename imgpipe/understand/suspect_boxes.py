"""Which box annotations does the detector dispute? cleanlab's object-detection label quality, one score per image.

An annotator overlooks an object, gives a box the wrong class, or draws it
in the wrong place. cleanlab's `cleanlab.object_detection.rank` scores each
image for all three from the given boxes and the model's boxes with their
probabilities; it counts a predicted box as evidence only when it is
confident (0.95 by default), so the detection task hands it calibrated
probabilities (`Task.box_evidence`), not CenterNet's raw peaks, which
rarely pass 0.3.

`imgpipe.understand.suspect_labels` calls it for tasks whose labels are boxes
(`Task.suspect_labels == "boxes"`): suspect_labels.csv (file, score, boxes
given, boxes the model is sure of), most suspect first, and suspect_labels.png
(given boxes green, the model's sure ones red). Nothing is moved.

Example:
    >>> scores, given, predicted = box_quality(task, model, images, targets, metadata)
"""

import csv
import pathlib

import numpy as np

from imgpipe.understand.suspect_masks import CSV_FILE, PICTURE_FILE, SUSPECTS_DRAWN

SURE = 0.5  # the model's boxes drawn and counted in the CSV: more likely right than not


def box_quality(task, model, images, targets, metadata):
    """Per image: cleanlab's label quality of its boxes (0..1, lower is more suspect), the given boxes, and the
    model's boxes with their probabilities.

    Returns:
        (float [N], list of (boxes [L, 4], classes [L]), list of (boxes [M, 4], probabilities [M], classes [M]))
    """
    from cleanlab.object_detection.rank import get_label_quality_scores

    given, predicted = task.box_evidence(model, images, targets, metadata)
    classes = len(metadata["class_names"])
    labels = [{"bboxes": np.asarray(boxes, np.float64).reshape(-1, 4), "labels": np.asarray(ids, np.int64)}
              for boxes, ids in given]
    predictions = []
    for boxes, probabilities, ids in predicted:
        per_class = np.empty(classes, dtype=object)
        for index in range(classes):
            chosen = np.asarray(ids) == index
            per_class[index] = np.concatenate([np.asarray(boxes, np.float64).reshape(-1, 4)[chosen],
                                               np.asarray(probabilities, np.float64)[chosen, None]], axis=1)
        predictions.append(per_class)
    scores = get_label_quality_scores(labels, predictions, verbose=False) if labels else np.zeros(0)
    return np.asarray(scores, np.float64), given, predicted


def write_box_suspects(image_set, scores, given, predicted, shown, class_names, folder):
    """suspect_labels.csv (file, score, given_boxes, sure_boxes; most suspect first) and suspect_labels.png.

    Args:
        image_set: the ranked files, in the order of `scores`.
        given, predicted: `box_quality`'s per-image boxes.
        shown: {index: uint8 image} of the most suspect, or None.

    Returns:
        The CSV's path.
    """
    from imgpipe.engine import plots

    folder = pathlib.Path(folder)
    order = np.argsort(scores, kind="stable")
    with (folder / CSV_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "score", "given_boxes", "sure_boxes"])
        for index in order:
            writer.writerow([image_set.paths[index], round(float(scores[index]), 4), len(given[index][1]),
                             int((np.asarray(predicted[index][1]) >= SURE).sum())])
    if shown:
        pictures, titles = [], []
        for index in [index for index in order if index in shown][:SUSPECTS_DRAWN]:
            (boxes, ids), (found, probabilities, found_ids) = given[index], predicted[index]
            sure = np.asarray(probabilities) >= SURE
            drawn = plots.draw_boxes(shown[index], boxes, [class_names[i] for i in ids], (40, 220, 40))
            pictures.append(plots.draw_boxes(drawn, np.asarray(found)[sure], [
                f"{class_names[i]} {p:.2f}" for i, p in zip(np.asarray(found_ids)[sure], np.asarray(probabilities)[sure])],
                (230, 40, 40)))
            titles.append(f"{pathlib.Path(image_set.paths[index]).name}: {scores[index]:.2f}")
        plots.plot_image_grid(pictures, titles, folder / PICTURE_FILE, columns=3,
                              title="most suspect boxes: given (green), the model's sure ones (red)")
    return folder / CSV_FILE

