"""What every suspect-label ranking shares: the files it writes and the few images it keeps to draw.

A ranking (`ClassRanking`, `MaskRanking`, `BoxRanking`) is filled by one model
(validation mode) or by several, each on the images it held out
(cross-validation): `add(model, indices, images, targets)`, then
`write(image_set, folder)`. Between the two, only the lowest-scoring images
are kept in memory for suspect_labels.png.

Example:
    >>> shown = keep_most_suspect({}, scores, indices=[0, 1, 2], items=images, count=2)
    >>> write_rows(folder, ["file", "score"], [["a.jpg", 0.1], ["b.jpg", 0.9]])
"""

import csv
import pathlib

import numpy as np

CSV_FILE = "suspect_labels.csv"
PICTURE_FILE = "suspect_labels.png"


def keep_most_suspect(shown, scores, indices, items, count):
    """{index: item} of the `count` lowest `scores` among those already `shown` and the new `items`.

    Args:
        shown: {index: item} kept so far.
        scores: float array over every ranked image (not yet judged ones may hold anything: they are not
            offered).
        indices: the images `items` belong to, in order.
        count: how many to keep.
    """
    offered = {**shown, **{int(index): item for index, item in zip(indices, items)}}
    lowest = sorted(offered, key=lambda index: (scores[index], index))[:count]
    return {index: offered[index] for index in lowest}


def write_rows(folder, header, rows):
    """suspect_labels.csv in `folder`: `header`, then `rows` (most suspect first); returns its path."""
    path = pathlib.Path(folder) / CSV_FILE
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def order_of(scores):
    """Indices by score, lowest (most suspect) first; ties keep their order."""
    return np.argsort(scores, kind="stable")
