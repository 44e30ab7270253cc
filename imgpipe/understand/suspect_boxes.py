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

import pathlib

import numpy as np

from imgpipe.understand.suspect_report import PICTURE_FILE, keep_most_suspect, order_of, write_rows

SUSPECTS_DRAWN = 6  # the most suspect images drawn in suspect_labels.png

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


class BoxRanking:
    """Box annotations judged by the models that did not train on them; written most suspect first.

    Example:
        >>> ranking = BoxRanking(task, data, recipe, count=len(paths))
        >>> ranking.add(model, np.arange(len(paths)), images, targets)
        >>> ranking.write(image_set, "runs/detect/detect")
    """

    def __init__(self, task, data, recipe, count):
        self.task, self.class_names = task, data.class_names
        self.metadata = task.export_metadata(data, recipe)  # class names, score threshold, detection limit
        self.scores, self.given, self.predicted, self.shown = np.ones(count), [None] * count, [None] * count, {}

    def add(self, model, indices, images, targets):
        """Judges `images` (uint8, the model's size) with `model`; `indices` place them in the ranking."""
        scores, given, predicted = box_quality(self.task, model, images, targets, self.metadata)
        self.scores[indices] = scores
        for position, index in enumerate(indices):
            self.given[index], self.predicted[index] = given[position], predicted[position]
        self.shown = keep_most_suspect(self.shown, self.scores, indices, images, SUSPECTS_DRAWN)

    def write(self, image_set, folder):
        """suspect_labels.csv (file, score, given_boxes, sure_boxes) and suspect_labels.png (given boxes green, the
        model's sure ones red); returns a line for the log."""
        from imgpipe.engine import plots

        order = order_of(self.scores)
        written = write_rows(folder, ["file", "score", "given_boxes", "sure_boxes"], [
            [image_set.paths[i], round(float(self.scores[i]), 4), len(self.given[i][1]),
             int((np.asarray(self.predicted[i][1]) >= SURE).sum())] for i in order])
        pictures, titles = [], []
        for index in [index for index in order if index in self.shown]:
            (boxes, ids), (found, probabilities, found_ids) = self.given[index], self.predicted[index]
            sure = np.asarray(probabilities) >= SURE
            names = [self.class_names[i] for i in ids]
            drawn = plots.draw_boxes(self.shown[index], boxes, names, (40, 220, 40))
            labels = [f"{self.class_names[i]} {p:.2f}" for i, p in zip(np.asarray(found_ids)[sure],
                                                                        np.asarray(probabilities)[sure])]
            pictures.append(plots.draw_boxes(drawn, np.asarray(found)[sure], labels, (230, 40, 40)))
            titles.append(f"{pathlib.Path(image_set.paths[index]).stem} {self.scores[index]:.2f}")
        if pictures:
            plots.plot_image_grid(pictures, titles, pathlib.Path(folder) / PICTURE_FILE, columns=3,
                                  title="suspect boxes: given green, model red")
        return f"{len(order)} images' boxes ranked, most suspect first ({written})"
