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
from imgpipe.understand.suspect_boxes import BoxRanking
from imgpipe.understand.suspect_masks import MaskRanking
from imgpipe.understand.suspect_report import PICTURE_FILE, keep_most_suspect, write_rows

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
    suspect_labels.png of the most suspect disputed ones among `images` ({index in `paths`: uint8 image}).
    """
    from imgpipe.engine import plots

    written = write_rows(folder, ["file", "given_label", "suggested_label", "score", "flagged"], [
        [paths[s.index], class_names[s.given], class_names[s.suggested], s.score, "yes" if s.flagged else "no"]
        for s in suspects])
    drawable = [suspect for suspect in suspects[:GRID_IMAGES] if suspect.index in (images or {})]
    shown = [suspect for suspect in drawable if suspect.suggested != suspect.given] or drawable[:1]
    if shown:
        plots.plot_image_grid([images[s.index] for s in shown],
                              [f"{class_names[s.given]} -> {class_names[s.suggested]}? {s.score:.2f}" for s in shown],
                              pathlib.Path(folder) / PICTURE_FILE, columns=6, title="suspect labels")
    return written


class ClassRanking:
    """Class labels judged by the models that did not train on them (their probabilities), ranked by cleanlab.

    Example:
        >>> ranking = ClassRanking(task, data, recipe, count=len(paths))
        >>> ranking.add(model, np.arange(len(paths)), images, labels)
        >>> ranking.write(image_set, "runs/classify/classify")
    """

    def __init__(self, task, data, recipe, count):
        self.class_names = data.class_names
        self.probabilities = np.zeros((count, data.num_classes), np.float32)
        self.labels, self.shown = np.zeros(count, np.int64), {}

    def add(self, model, indices, images, labels):
        """Asks `model` about `images` (uint8, the model's size); `indices` place them in the ranking."""
        self.probabilities[indices] = class_probabilities(model, images)
        self.labels[indices] = labels
        # The probability of the given label is the score cleanlab ranks by (self-confidence).
        confidence = self.probabilities[np.arange(len(self.labels)), self.labels]
        self.shown = keep_most_suspect(self.shown, confidence, indices, images, GRID_IMAGES)

    def write(self, image_set, folder):
        """suspect_labels.csv and suspect_labels.png; returns a line for the log."""
        suspects = rank_suspects(self.labels, self.probabilities)
        written = write_suspects(suspects, image_set.paths, self.class_names, folder, self.shown)
        return f"{sum(s.flagged for s in suspects)} of {len(suspects)} images flagged ({written})"

    def save_probabilities(self, image_set, path):
        """The probabilities by real path, for `rank_folder` (`imgpipe check --run`)."""
        np.savez(path, paths=np.array([os.path.realpath(p) for p in image_set.paths]), labels=self.labels,
                 probabilities=self.probabilities)


def class_probabilities(model, images, batch_size=64):
    """The model's class probabilities [N, C] for uint8 images [N, H, W, 3] at its size, a batch at a time."""
    from imgpipe.engine.inference import compiled_forward

    forward = compiled_forward(model)
    return np.concatenate([np.asarray(forward(images[start:start + batch_size].astype(np.float32)))
                           for start in range(0, len(images), batch_size)])


def report_after_training(task, model, data, recipe, decoder, run_dir):
    """A run's report (`imgpipe.run`'s `reports`): ranks labels as `train.suspect_labels` asks.

    Only tasks whose labels can be judged (`Task.suspect_labels`: classes, masks or boxes) and files on
    disk (not tfds) are ranked.
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
    ranking = RANKINGS[task.suspect_labels](task, data, recipe, data.val.count)
    ranking.add(model, np.arange(data.val.count), images, targets)
    log.info("suspect labels, validation images: %s", ranking.write(data.val, run_dir))


def cross_validation_report(task, data, recipe, decoder, run_dir):
    """Ranks every image of both splits with out-of-fold answers from `train.folds` more trainings.

    Each fold model is the run's own recipe (model, size, schedule) trained on the other folds, in
    `RUN_DIR/folds/<k>/`, without export, card or TensorBoard. Class probabilities are kept in
    out_of_fold_probabilities.npz for `imgpipe check --run`.

    Example:
        >>> cross_validation_report(task, data, recipe.update(**{"train.folds": 3}), decoder, "runs/classify/run")
    """
    from imgpipe.engine import runner
    from imgpipe.engine.trainer import read_history

    everything = _joined(data.train, data.val)
    strata = np.asarray(everything.targets, np.int64) if task.suspect_labels == "class" else \
        np.zeros(everything.count, np.int64)
    ranking = RANKINGS[task.suspect_labels](task, data, recipe, everything.count)
    fold_settings = {"export.enabled": False, "train.suspect_labels": "none", "train.tensorboard": False,
                     "train.run_dir": None}
    if recipe.train.time_budget is not None:  # each fold trains the epochs the budget gave the run, not a budget
        fold_settings.update({"train.time_budget": None,
                              "train.epochs": max(1, len(read_history(pathlib.Path(run_dir) / "history.csv")
                                                         .get("epoch", [])))})
    fold_recipe = recipe.update(**fold_settings)
    folds = stratified_folds(strata, recipe.train.folds, recipe.data.seed)
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
        ranking.add(result.model, held_out, images, targets)
        del result
    if task.suspect_labels == "class":
        ranking.save_probabilities(everything, pathlib.Path(run_dir) / OUT_OF_FOLD_FILE)
    log.info("suspect labels, %d-fold cross-validation: %s", len(folds), ranking.write(everything, run_dir))


def _joined(first, second):
    upright = None if first.upright_jpeg is None or second.upright_jpeg is None else \
        np.concatenate([first.upright_jpeg, second.upright_jpeg])
    return ImageSet(paths=first.paths + second.paths, count=first.count + second.count, upright_jpeg=upright,
                    targets=np.concatenate([np.asarray(first.targets), np.asarray(second.targets)]))


def _subset(image_set, indices):
    upright = None if image_set.upright_jpeg is None else image_set.upright_jpeg[indices]
    return ImageSet(paths=[image_set.paths[i] for i in indices], targets=np.asarray(image_set.targets)[indices],
                    count=len(indices), upright_jpeg=upright)


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
    from imgpipe.engine.export.saved_model import export_metadata
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
    written = write_suspects(suspects, paths, run.data.class_names, report_dir, dict(enumerate(images)))
    return suspects, paths, run.data.class_names, len(files.paths) - len(kept), written


def _out_of_fold_probabilities(run_dir):
    """{real path: class probabilities} a cross-validated run kept for its images; empty for other runs."""
    stored = pathlib.Path(run_dir) / OUT_OF_FOLD_FILE
    if not stored.is_file():
        return {}
    with np.load(stored) as record:
        return dict(zip(record["paths"].tolist(), record["probabilities"]))


# What a label is (`Task.suspect_labels`) -> how it is judged and written.
RANKINGS = {"class": ClassRanking, "pixels": MaskRanking, "boxes": BoxRanking}
