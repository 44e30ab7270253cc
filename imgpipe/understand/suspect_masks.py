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
"""

import pathlib

import numpy as np

from imgpipe.understand.suspect_report import PICTURE_FILE, keep_most_suspect, order_of, write_rows

SUSPECTS_DRAWN = 6  # the most suspect masks drawn in suspect_labels.png
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


class MaskRanking:
    """Masks judged by the models that did not train on them; written most suspect first.

    Example:
        >>> ranking = MaskRanking(task, data, recipe, count=len(paths))
        >>> ranking.add(model, np.arange(len(paths)), images, masks)
        >>> ranking.write(image_set, "runs/segment/segment")
    """

    def __init__(self, task, data, recipe, count):
        self.task, self.data = task, data
        self.scores, self.disputed, self.shown = np.ones(count), np.zeros(count), {}

    def add(self, model, indices, images, masks):
        """Judges `images` (uint8, the model's size) with `model`; `indices` place them in the ranking."""
        scores, disputed, predicted = mask_quality(model, images, masks, self.data.state.ignore_index)
        self.scores[indices], self.disputed[indices] = scores, disputed
        self.shown = keep_most_suspect(self.shown, self.scores, indices, zip(images, masks, predicted),
                                       SUSPECTS_DRAWN)

    def write(self, image_set, folder):
        """suspect_labels.csv (file, mask, score, disputed_pixels) and suspect_labels.png (image | given mask |
        the model's mask); returns a line for the log."""
        order = order_of(self.scores)
        written = write_rows(folder, ["file", "mask", "score", "disputed_pixels"], [
            [image_set.paths[i], image_set.targets[i], round(float(self.scores[i]), 4),
             round(float(self.disputed[i]), 4)] for i in order])
        drawn = [self.shown[i] for i in order if i in self.shown]
        if drawn:
            self.task.plot_predictions(drawn, self.data, pathlib.Path(folder) / PICTURE_FILE,
                                       title="most suspect masks: image | given mask | the model's mask")
        return f"{len(order)} masks ranked, most suspect first ({written})"
