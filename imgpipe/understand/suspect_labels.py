"""Which of the user's labels does the trained model dispute? Confident learning, by cleanlab.

cleanlab's `find_label_issues` (Northcutt et al., 2021) estimates from
out-of-sample probabilities how often each given class is really another one,
and flags the images whose label is most likely wrong; they are ranked by
self-confidence (the probability the model gives the label they carry), the
most suspect first. The probabilities must be out-of-sample: a model that
trained on an image has learned its label, wrong or not.

A run ranks its validation images with the trained model (`train.suspect_labels:
validation`), or every image with `train.folds` more models, each trained without
one fold of the images and asked about that fold (`cross_validation`): the
training images' labels are then checked too, at the cost of `folds` trainings.
Either way the run folder gets `suspect_labels.csv` (every ranked image, the most
suspect first, with cleanlab's verdict) and `suspect_labels.png`; a
cross-validation also keeps the out-of-fold probabilities, so that `imgpipe check
--run` can rank the run's own training images. Segmentation masks and detection
boxes are ranked the same two ways, by cleanlab's per-image segmentation and
object-detection scores (`imgpipe.understand.suspect_masks`, `suspect_boxes`).
Nothing is moved or renamed; a person decides.

Example:
    >>> suspects = rank_suspects(labels, probabilities)
    >>> suspects[0]
    Suspect(index=17, given=0, suggested=1, score=0.021, flagged=True)
"""

import csv
import dataclasses
import logging
import os
import pathlib
import warnings

import numpy as np

from imgpipe.data.sources import ImageSet
from imgpipe.data.split import stratified_folds
from imgpipe.engine.distributed.cluster import cluster_from_environment
from imgpipe.engine.scoring import split_examples
from imgpipe.engine.export.saved_model import export_metadata
from imgpipe.understand.suspect_boxes import box_quality, write_box_suspects
from imgpipe.understand.suspect_masks import CSV_FILE, PICTURE_FILE, mask_quality, most_suspect, write_mask_suspects

log = logging.getLogger(__name__)

OUT_OF_FOLD_FILE = "out_of_fold_probabilities.npz"
FOLDS_FOLDER = "folds"
GRID_IMAGES = 24  # the most suspect images drawn in suspect_labels.png


@dataclasses.dataclass(frozen=True)
class Suspect:
    """One image's label, judged: position, given and suggested class index, the label's quality, the verdict.

    `score` is cleanlab's label quality (self-confidence: the probability of the given label; lower is more
    suspect); `flagged` is whether confident learning counts the label as an issue.
    """

    index: int
    given: int
    suggested: int
    score: float
    flagged: bool


def rank_suspects(labels, probabilities):
    """Every image, the most suspect label first, with confident learning's verdict on each.

    All images are ranked, not only the flagged ones: on a small split, confident learning's per-class
    thresholds (the mean probability of each class among its own images) can let a plainly wrong label
    through, and a person scanning the top of the list still sees it.

    Args:
        labels: int array [N], the given classes.
        probabilities: float array [N, C], out-of-sample class probabilities.

    Returns:
        list of `Suspect`, by score, lowest first.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    if len(labels) == 0:
        return []
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)  # cleanlab checks rows sum to 1
    scores = get_label_quality_scores(labels, probabilities, method="self_confidence")
    with warnings.catch_warnings():  # a class with one image warns; the verdicts are still what we want
        warnings.simplefilter("ignore")
        # One process: cleanlab's default forks a multiprocessing pool, and a fork of a process running
        # TensorFlow's (and a multi-worker job's gRPC) threads can deadlock; two multi-worker test runs hung.
        flagged = find_label_issues(labels, probabilities, n_jobs=1)
    order = np.argsort(scores, kind="stable")
    return [Suspect(int(i), int(labels[i]), int(probabilities[i].argmax()), round(float(scores[i]), 4),
                    bool(flagged[i])) for i in order]


def write_suspects(suspects, paths, class_names, folder, images=None):
    """suspect_labels.csv (file, given label, suggested label, score, flagged; most suspect first), and
    suspect_labels.png of the most suspect when `images` (uint8 [N, H, W, 3], in the order of `paths`) are
    given."""
    from imgpipe.engine import plots

    folder = pathlib.Path(folder)
    with (folder / CSV_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "given_label", "suggested_label", "score", "flagged"])
        for suspect in suspects:
            writer.writerow([paths[suspect.index], class_names[suspect.given], class_names[suspect.suggested],
                             suspect.score, "yes" if suspect.flagged else "no"])
    if images is not None and suspects:
        shown = [suspect for suspect in suspects[:GRID_IMAGES] if suspect.suggested != suspect.given] or \
            suspects[:1]
        plots.plot_image_grid([images[s.index] for s in shown],
                              [f"{class_names[s.given]} -> {class_names[s.suggested]}? {s.score:.2f}" for s in shown],
                              folder / PICTURE_FILE, columns=6,
                              title="suspect labels")
    return folder / CSV_FILE


def class_probabilities(model, images, batch_size=64):
    """The model's class probabilities [N, C] for uint8 images [N, H, W, 3] at its size, a batch at a time."""
    from imgpipe.engine.inference import compiled_forward

    forward = compiled_forward(model)
    return np.concatenate([np.asarray(forward(images[start:start + batch_size].astype(np.float32)))
                           for start in range(0, len(images), batch_size)])


def report_after_training(task, model, data, recipe, decoder, run_dir):
    """A run's report (`imgpipe.run`'s `reports`): ranks labels as `train.suspect_labels` asks.

    Only tasks whose labels can be judged (`Task.suspect_labels`: classes or masks) and files on disk (not
    tfds) are ranked.
    """
    mode = recipe.train.suspect_labels
    if mode == "none" or not task.suspect_labels or not data.val.is_files:
        return
    if mode == "cross_validation" and cluster_from_environment() is not None:
        log.warning("suspect labels: no cross-validation inside a multi-worker job (each fold would need every "
                    "worker); the validation images are ranked instead")
    elif mode == "cross_validation":
        cross_validation_report(task, data, recipe, decoder, run_dir)
        return
    images, targets = split_examples(data.val, data.image_size, data.val.count, decoder, recipe.data.max_pixels)
    if len(images) != data.val.count:  # an unreadable file would shift every path after it
        log.warning("suspect labels: %d of %d validation images decoded; not ranked", len(images), data.val.count)
        return
    if task.suspect_labels == "pixels":
        scores, disputed, predicted = mask_quality(model, images, targets, data.state.ignore_index)
        shown = {i: (images[i], targets[i], predicted[i]) for i in most_suspect(scores)}
        written, _ = write_mask_suspects(task, data.val, scores, disputed, shown, data, run_dir)
        log.info("suspect labels: %d validation masks ranked, most suspect first (%s)", len(scores), written)
        return
    if task.suspect_labels == "boxes":
        scores, given, predicted = box_quality(task, model, images, targets, export_metadata(task, data, recipe))
        written = write_box_suspects(data.val, scores, given, predicted, {i: images[i] for i in most_suspect(scores)},
                                     data.class_names, run_dir)
        log.info("suspect labels: %d validation images' boxes ranked, most suspect first (%s)", len(scores), written)
        return
    suspects = rank_suspects(targets, class_probabilities(model, images))
    write_suspects(suspects, data.val.paths, data.class_names, run_dir, images)
    log.info("suspect labels: %d of %d validation images flagged (%s)", sum(s.flagged for s in suspects),
             len(targets), pathlib.Path(run_dir) / CSV_FILE)


def cross_validation_report(task, data, recipe, decoder, run_dir):
    """Ranks every image of both splits with out-of-fold answers from `train.folds` more trainings.

    Each fold model is the run's own recipe (model, size, schedule) trained on the other folds, in
    `RUN_DIR/folds/<k>/`, without export, card or TensorBoard. Class probabilities are kept in
    out_of_fold_probabilities.npz; masks are judged fold by fold (`mask_quality`).

    Example:
        >>> cross_validation_report(task, data, recipe.update(**{"train.folds": 3}), decoder, "runs/classify/run")
    """
    from imgpipe.engine import runner

    everything = _joined(data.train, data.val)
    pixels, boxes = task.suspect_labels == "pixels", task.suspect_labels == "boxes"
    labels = np.asarray(everything.targets, np.int64) if task.suspect_labels == "class" else \
        np.zeros(everything.count, np.int64)
    probabilities = np.zeros((everything.count, data.num_classes), np.float32)
    scores, disputed, shown = np.ones(everything.count), np.zeros(everything.count), {}
    given, predicted_boxes = [None] * everything.count, [None] * everything.count
    fold_recipe = recipe.update(**{"export.enabled": False, "train.suspect_labels": "none",
                                   "train.tensorboard": False, "train.run_dir": None})
    folds = stratified_folds(labels, recipe.train.folds, recipe.data.seed)
    for number, held_out in enumerate(folds, 1):
        kept = np.setdiff1d(np.arange(everything.count), held_out)
        fold_data = dataclasses.replace(data, train=_subset(everything, kept), val=_subset(everything, held_out),
                                        split_report=None)
        log.info("suspect labels: cross-validation model %d of %d, %d images held out", number, len(folds),
                 len(held_out))
        result = runner.run(fold_recipe, task_data=fold_data,
                            output=str(pathlib.Path(run_dir) / FOLDS_FOLDER / str(number)))
        images, targets = split_examples(fold_data.val, data.image_size, len(held_out), decoder,
                                         recipe.data.max_pixels)
        if len(images) != len(held_out):
            log.warning("suspect labels: %d of %d held-out images decoded; not ranked", len(images), len(held_out))
            return
        if pixels:
            scores[held_out], disputed[held_out], predicted = mask_quality(result.model, images, targets,
                                                                           data.state.ignore_index)
            shown.update({held_out[i]: (images[i], targets[i], predicted[i])
                          for i in most_suspect(scores[held_out])})
            shown = {i: shown[i] for i in most_suspect(scores) if i in shown}
        elif boxes:
            fold_scores, fold_given, fold_predicted = box_quality(task, result.model, images, targets,
                                                                  export_metadata(task, data, recipe))
            scores[held_out] = fold_scores
            for position, index in enumerate(held_out):
                given[index], predicted_boxes[index] = fold_given[position], fold_predicted[position]
            shown.update({held_out[i]: images[i] for i in most_suspect(fold_scores)})
            shown = {i: shown[i] for i in most_suspect(scores) if i in shown}
        else:
            probabilities[held_out] = class_probabilities(result.model, images)
        del result
    if pixels or boxes:
        written = write_box_suspects(everything, scores, given, predicted_boxes, shown, data.class_names, run_dir) \
            if boxes else write_mask_suspects(task, everything, scores, disputed, shown, data, run_dir)[0]
        log.info("suspect labels: %d images' %s ranked by %d-fold cross-validation (%s)", everything.count,
                 task.suspect_labels, len(folds), written)
        return
    np.savez(pathlib.Path(run_dir) / OUT_OF_FOLD_FILE, paths=np.array([os.path.realpath(p) for p in everything.paths]),
             labels=labels, probabilities=probabilities)
    suspects = rank_suspects(labels, probabilities)
    shown = _decoded(everything, [s.index for s in suspects[:GRID_IMAGES]], data.image_size, decoder, recipe)
    write_suspects(suspects, everything.paths, data.class_names, run_dir, shown)
    log.info("suspect labels: %d of %d images flagged by %d-fold cross-validation (%s)",
             sum(s.flagged for s in suspects), everything.count, len(folds), pathlib.Path(run_dir) / CSV_FILE)


def _joined(first, second):
    upright = None if first.upright_jpeg is None or second.upright_jpeg is None else \
        np.concatenate([first.upright_jpeg, second.upright_jpeg])
    return ImageSet(paths=first.paths + second.paths, count=first.count + second.count, upright_jpeg=upright,
                    targets=np.concatenate([np.asarray(first.targets), np.asarray(second.targets)]))


def _subset(image_set, indices):
    upright = None if image_set.upright_jpeg is None else image_set.upright_jpeg[indices]
    return ImageSet(paths=[image_set.paths[i] for i in indices], targets=np.asarray(image_set.targets)[indices],
                    count=len(indices), upright_jpeg=upright)


def _decoded(image_set, indices, size, decoder, recipe):
    """{index: uint8 image} of the given images (the picture shows only the most suspect)."""
    images, _ = split_examples(_subset(image_set, np.asarray(indices, np.int64)), size, len(indices), decoder,
                               recipe.data.max_pixels)
    return dict(zip(indices, images)) if len(images) == len(indices) else None


def rank_folder(run_dir, folder, report_dir):
    """`imgpipe check --data FOLDER --run RUN_DIR`: ranks a labelled folder's labels with a trained run's model.

    The run's own training images are left out: the model learnt their labels, so its probabilities for
    them are in-sample and cannot dispute them. They are found by reading the run's data again as it
    split it. A run that cross-validated (`train.suspect_labels: cross_validation`) kept every one of
    its images' out-of-fold probabilities: those images are ranked with them, training images included.

    Returns:
        (list of `Suspect`, the ranked paths, the class names, how many training images were left out,
        the CSV's path)
    """
    from imgpipe.engine.run_folder import load_run
    from imgpipe.errors import DataError

    run = load_run(run_dir)
    if run.task.suspect_labels != "class":
        raise DataError(f"{run_dir}: a {run.task.name} run; check --run ranks one class per image (classify); a "
                        f"segmentation or detection run ranks its own masks or boxes in its run folder")
    try:
        trained_on = {os.path.realpath(path) for path in run.task.read_data(run.recipe).train.paths}
    except DataError as error:
        raise DataError(f"{error}; the run's training images must be known to leave them out") from None
    files = run.task.evaluation_files(folder, export_metadata(run.task, run.data, run.recipe),
                                      run.recipe.data.max_pixels)
    out_of_fold = _out_of_fold_probabilities(run_dir)
    kept = [(path, label) for path, label in zip(files.paths, files.truths)
            if os.path.realpath(path) not in trained_on or os.path.realpath(path) in out_of_fold]
    if not kept:
        raise DataError(f"{folder}: every image is one the run trained on; rank them with a run that held them out "
                        f"(or one trained with --set train.suspect_labels=cross_validation)")
    paths, labels = [path for path, _ in kept], [label for _, label in kept]
    images, _ = split_examples(ImageSet.from_files(paths, labels), run.data.image_size, len(paths),
                               max_pixels=run.recipe.data.max_pixels)
    if len(images) != len(paths):
        raise DataError(f"{folder}: {len(paths) - len(images)} image(s) could not be decoded; run imgpipe check first")
    probabilities = class_probabilities(run.model, images)
    for row, path in enumerate(paths):
        probabilities[row] = out_of_fold.get(os.path.realpath(path), probabilities[row])
    suspects = rank_suspects(labels, probabilities)
    report_dir = pathlib.Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    written = write_suspects(suspects, paths, run.data.class_names, report_dir, images)
    return suspects, paths, run.data.class_names, len(files.paths) - len(kept), written


def _out_of_fold_probabilities(run_dir):
    """{real path: class probabilities} a cross-validated run kept for its images; empty for other runs."""
    stored = pathlib.Path(run_dir) / OUT_OF_FOLD_FILE
    if not stored.is_file():
        return {}
    with np.load(stored) as record:
        return dict(zip(record["paths"].tolist(), record["probabilities"]))
