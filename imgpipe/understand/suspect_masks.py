"""Which segmentation masks does the model dispute? cleanlab's label quality, one score per image.

A mask drawn carelessly (a cell left out, a region given the wrong class, a
mask that belongs to another image) shows as pixels whose given class the
model, trained on the other masks, finds unlikely. cleanlab's segmentation
score (`cleanlab.segmentation.rank.get_label_quality_scores`, "softmin") turns
each pixel's self-confidence into one score per image that the worst regions
dominate, so a mask with one bad region ranks below a mask with scattered
doubt at its edges. Pixels the masks mark as ignored are not judged.

`imgpipe.understand.suspect_labels` calls it for tasks whose labels are
masks (`Task.suspect_labels == "pixels"`): suspect_labels.csv (file, mask,
score, disputed share), most suspect first, and suspect_labels.png (image |
given mask | the model's mask). Nothing is moved.

Example:
    >>> scores, disputed, predicted = mask_quality(model, images, masks, ignore_index=None)
    >>> write_mask_suspects(task, image_set, scores, disputed, shown, data, "runs/segment/segment")
"""

import csv
import pathlib

import numpy as np

CSV_FILE = "suspect_labels.csv"
PICTURE_FILE = "suspect_labels.png"
SUSPECTS_DRAWN = 6  # the most suspect images drawn in suspect_labels.png
BATCH = 8  # images judged at once (cleanlab wants [N, C, H, W] probabilities in memory)


def mask_quality(model, images, masks, ignore_index, batch_size=BATCH):
    """Per image: cleanlab's label quality of its mask (0..1, lower is more suspect), the share of its judged
    pixels whose given class is not the model's, and the model's mask.

    Args:
        model: the segmenter (probabilities [N, H, W, C]).
        images: uint8 [N, H, W, 3] at the model's size.
        masks: int [N, H, W], the given classes (`ignore_index` and values outside 0..C-1 not judged).

    Returns:
        (float [N], float [N], uint8 or int32 [N, H, W])
    """
    from cleanlab.segmentation.rank import get_label_quality_scores

    scores, disputed, predicted = [], [], []
    for start in range(0, len(images), batch_size):
        probabilities = np.asarray(model(images[start:start + batch_size].astype(np.float32), training=False),
                                   np.float64)
        given = np.asarray(masks[start:start + batch_size]).astype(np.int64)
        guess = probabilities.argmax(axis=-1)
        judged = (given >= 0) & (given < probabilities.shape[-1]) & (given != ignore_index)
        # An unjudged pixel takes the model's class, so it agrees and moves no score.
        given = np.where(judged, given, guess)
        image_scores, _ = get_label_quality_scores(given, probabilities.transpose(0, 3, 1, 2), method="softmin",
                                                   verbose=False)
        scores.append(image_scores)
        disputed.append(((given != guess) & judged).sum(axis=(1, 2)) / np.maximum(judged.sum(axis=(1, 2)), 1))
        predicted.append(guess.astype(np.int32))
    return np.concatenate(scores), np.concatenate(disputed), np.concatenate(predicted)


def write_mask_suspects(task, image_set, scores, disputed, shown, data, folder):
    """suspect_labels.csv (file, mask, score, disputed_pixels; most suspect first) and suspect_labels.png.

    Args:
        task: the segmentation task (draws the picture: `plot_predictions`).
        image_set: the ranked files (`paths`, mask paths in `targets`), in the order of `scores`.
        scores, disputed: `mask_quality`'s first two answers, one per file.
        shown: {index: (image, given mask, the model's mask)} for the most suspect, or None.
        data: the run's `TaskData` (class names, mask encoding).

    Returns:
        The CSV's path and the indices, most suspect first.
    """
    folder = pathlib.Path(folder)
    order = np.argsort(scores, kind="stable")
    with (folder / CSV_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "mask", "score", "disputed_pixels"])
        for index in order:
            writer.writerow([image_set.paths[index], image_set.targets[index], round(float(scores[index]), 4),
                             round(float(disputed[index]), 4)])
    if shown:
        top = [index for index in order if index in shown][:SUSPECTS_DRAWN]
        task.plot_predictions([shown[index] for index in top], data, folder / PICTURE_FILE,
                              title="most suspect masks: image | given mask | the model's mask")
    return folder / CSV_FILE, order


def most_suspect(scores, count=SUSPECTS_DRAWN):
    """Indices of the `count` lowest scores (the images worth drawing)."""
    return set(np.argsort(scores, kind="stable")[:count].tolist())
