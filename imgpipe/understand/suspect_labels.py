"""Which of the user's labels does the trained model dispute? Confident learning, by cleanlab.

cleanlab's `find_label_issues` (Northcutt et al., 2021) estimates from
out-of-sample probabilities how often each given class is really another one,
and flags the images whose label is most likely wrong; they are ranked by
self-confidence (the probability the model gives the label they carry), the
most suspect first. The probabilities must be out-of-sample: a model that
trained on an image has learned its label, wrong or not.

A run ranks its validation images (`train.suspect_labels: validation`):
`suspect_labels.csv` (every image, the most suspect first, with cleanlab's
verdict) and `suspect_labels.png` in the run folder. Nothing is
moved or renamed; a person decides.

Example:
    >>> suspects = rank_suspects(labels, probabilities)
    >>> suspects[0]
    Suspect(index=17, given=0, suggested=1, score=0.021, flagged=True)
"""

import csv
import dataclasses
import logging
import pathlib
import warnings

import numpy as np

log = logging.getLogger(__name__)

CSV_FILE = "suspect_labels.csv"
PICTURE_FILE = "suspect_labels.png"
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


def validation_report(task, model, data, recipe, decoder, run_dir):
    """A run's report (`imgpipe.run`'s `reports`): ranks the validation images' labels with the trained model.

    Only tasks with one class per image (`Task.suspect_labels`) and files on disk (not tfds) are ranked.
    """
    from imgpipe.engine.scoring import split_examples

    if recipe.train.suspect_labels != "validation" or not task.suspect_labels or not data.val.is_files:
        return
    images, labels = split_examples(data.val, data.image_size, data.val.count, decoder, recipe.data.max_pixels)
    if len(images) != data.val.count:  # an unreadable file would shift every path after it
        log.warning("suspect labels: %d of %d validation images decoded; not ranked", len(images), data.val.count)
        return
    suspects = rank_suspects(labels, class_probabilities(model, images))
    write_suspects(suspects, data.val.paths, data.class_names, run_dir, images)
    log.info("suspect labels: %d of %d validation images flagged (%s)", sum(s.flagged for s in suspects),
             len(labels), pathlib.Path(run_dir) / CSV_FILE)


def rank_folder(run_dir, folder, report_dir):
    """`imgpipe check --data FOLDER --run RUN_DIR`: ranks a labelled folder's labels with a trained run's model.

    The run's own training images are left out: the model learnt their labels, so its probabilities for
    them are in-sample and cannot dispute them. They are found by reading the run's data again as it
    split it.

    Returns:
        (list of `Suspect`, the ranked paths, the class names, how many training images were left out,
        the CSV's path)
    """
    import os

    from imgpipe.data.sources import ImageSet
    from imgpipe.engine.export.saved_model import export_metadata
    from imgpipe.engine.run_folder import load_run
    from imgpipe.engine.scoring import split_examples
    from imgpipe.errors import DataError

    run = load_run(run_dir)
    if not run.task.suspect_labels:
        raise DataError(f"{run_dir}: a {run.task.name} run; suspect labels rank one class per image (classify)")
    try:
        trained_on = {os.path.realpath(path) for path in run.task.read_data(run.recipe).train.paths}
    except DataError as error:
        raise DataError(f"{error}; the run's training images must be known to leave them out") from None
    files = run.task.evaluation_files(folder, export_metadata(run.task, run.data, run.recipe),
                                      run.recipe.data.max_pixels)
    kept = [(path, label) for path, label in zip(files.paths, files.truths) if os.path.realpath(path) not in trained_on]
    if not kept:
        raise DataError(f"{folder}: every image is one the run trained on; rank them with a run that held them out")
    paths, labels = [path for path, _ in kept], [label for _, label in kept]
    images, _ = split_examples(ImageSet.from_files(paths, labels), run.data.image_size, len(paths),
                               max_pixels=run.recipe.data.max_pixels)
    if len(images) != len(paths):
        raise DataError(f"{folder}: {len(paths) - len(images)} image(s) could not be decoded; run imgpipe check first")
    suspects = rank_suspects(labels, class_probabilities(run.model, images))
    report_dir = pathlib.Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    written = write_suspects(suspects, paths, run.data.class_names, report_dir, images)
    return suspects, paths, run.data.class_names, len(files.paths) - len(kept), written
