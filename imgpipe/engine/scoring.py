"""Scoring a trained model or an export with its task's one scoring path: answers, truths, `Task.score`.

Training's final metrics, `imgpipe evaluate` on an export and the robustness
card (`imgpipe.understand.robustness`) all score through `Task.score`, so a
figure means the same wherever it is printed.

Example:
    >>> metrics = final_metrics(task, model, val_ds, data, metadata, run_dir)
    >>> metrics["val_accuracy"]
    >>> evaluate_files(task, loaded, metadata, "test_images/", max_pixels, report_dir)["accuracy"]
"""

import logging

import numpy as np

from imgpipe.data.images import DEFAULT_MAX_PIXELS
from imgpipe.data.sources import ImageSet
from imgpipe.engine.client import answer_status, per_image
from imgpipe.engine.inference import compiled_forward
from imgpipe.engine.pipeline import make_dataset
from imgpipe.errors import DataError

log = logging.getLogger(__name__)

SPLIT_BATCH_SIZE = 16  # images per decoded batch in split_examples


def model_answers(task, model, dataset, metadata):
    """The model's per-image answers on a batched (images, targets) dataset, and each image's truth."""
    answers, truths, forward = [], [], compiled_forward(model)
    for images, targets in dataset:
        answers += per_image(task.answers(forward, images, metadata))
        truths += [task.truth(image, target) for image, target in
                   zip(np.asarray(images).round().astype(np.uint8), np.asarray(targets))]
    return answers, truths


def first_images(dataset, count):
    """The first `count` images of a batched (images, targets) dataset, as uint8 arrays (for pictures)."""
    images = []
    for batch, _ in dataset:
        images += list(np.asarray(batch).round().astype(np.uint8)[: count - len(images)])
        if len(images) >= count:
            break
    return images


def final_metrics(task, model, val_ds, data, metadata, run_dir):
    """Validation metrics after training: Keras' (losses, epoch metrics), then the task's scores, as `val_*`.

    The task's scores replace Keras' metrics of the same name: they are the
    figures `imgpipe evaluate` and the robustness card report.
    """
    metrics = {f"val_{key}": float(value)
               for key, value in model.evaluate(val_ds, return_dict=True, verbose=0).items()}
    answers, truths = model_answers(task, model, val_ds, metadata)
    metrics.update({f"val_{key}": value for key, value in task.score(answers, truths, metadata).items()})
    task.plot_scores(answers, truths, metadata, run_dir)
    metrics.update(task.report_validation(model, val_ds, answers, truths, data, metadata, run_dir))
    return metrics


def evaluate_files(task, loaded, metadata, folder, max_pixels, report_dir):
    """An export's scores on a labelled folder, read with the task's reader, answered by the export itself."""
    files = task.evaluation_files(folder, metadata, max_pixels)
    if not files.paths:
        raise DataError(f"{folder}: no readable images to evaluate")
    answers = task.export_answers(loaded, files.paths, metadata)
    refused = [(path, answer_status(answer)) for path, answer in zip(files.paths, answers)
               if answer_status(answer) != "ok"]
    if refused:
        log.warning("the export refused %d of %d images, not scored (first: %s: %s)", len(refused),
                    len(answers), *refused[0])
    kept = [index for index, answer in enumerate(answers) if answer_status(answer) == "ok"]
    if not kept:
        raise DataError(f"{folder}: the export refused every image (first: {refused[0][0]}: {refused[0][1]})")
    answers, truths = [answers[i] for i in kept], [files.truths[i] for i in kept]
    metrics = task.score(answers, truths, metadata)
    task.plot_scores(answers, truths, metadata, report_dir)
    return {**metrics, "images": len(answers), "skipped_files": len(files.skipped), "refused_files": len(refused)}


def split_examples(image_set, size, limit, decoder=None, max_pixels=DEFAULT_MAX_PIXELS):
    """The first `limit` images of a split, decoded and resized as for validation (no augmentation).

    The robustness card perturbs them; the export proof runs each format on them.

    Returns:
        (uint8 images [N, H, W, 3], targets [N, ...]) at `size`.
    """
    count = min(int(limit), image_set.count)
    if image_set.is_files:
        subset = ImageSet.from_files(image_set.paths[:count], np.asarray(image_set.targets)[:count])
    else:
        subset = ImageSet(dataset=image_set.dataset.take(count), count=count)
    dataset, _ = make_dataset(subset, size, SPLIT_BATCH_SIZE, training=False, cache="none", decoder=decoder,
                              max_pixels=max_pixels)
    images, targets = [], []
    for image_batch, target_batch in dataset:
        images.append(np.round(image_batch.numpy()).astype(np.uint8))
        targets.append(target_batch.numpy())
    if not images:
        return np.zeros([0] + list(size) + [3], np.uint8), np.zeros([0])
    return np.concatenate(images), np.concatenate(targets)
