"""The split imgpipe draws, with each group of exact or near-duplicate images kept on one side.

A copy of a validation image in the training set (a re-saved photo, two frames
of one video) makes every validation figure optimistic. When imgpipe draws the
split itself (no `train/` + `val/` given), it first draws the usual seeded,
stratified split and then moves each duplicate group that straddles it to the
side that holds most of the group (a tie: the side that keeps validation nearest
its planned size), so the classes and the split stay as balanced as before.
A group is left split only when moving it would take a class's last image off
a side or shift the validation size by more than half: synthetic images of
flat colours can all hash alike, and such a "group" is not one picture.

Example:
    >>> train, val, report = split_keeping_duplicates(paths, labels, 0.2, seed=1337)
    >>> report.describe()
    'split: 3 images moved to keep 2 duplicate groups together'
"""

import dataclasses

import numpy as np

from imgpipe.data.duplicates import NEAR_DUPLICATE_BITS, duplicate_groups
from imgpipe.data.images import DEFAULT_MAX_PIXELS
from imgpipe.data.inventory import scan_files
from imgpipe.data.split import stratified_split

SPLIT_GROUPS = ("duplicates", "none")


@dataclasses.dataclass
class GroupedSplitReport:
    """What keeping duplicates together did to the split."""

    groups_found: int = 0
    groups_moved: int = 0
    images_moved: int = 0
    groups_left_split: int = 0

    def describe(self):
        """One line for the run's log: what moved, and what could not be kept together."""
        line = f"split: {self.images_moved} images moved to keep {self.groups_moved} duplicate groups together"
        if self.groups_left_split:
            line += (f"; {self.groups_left_split} groups too large to keep on one side stay split "
                     f"(imgpipe check lists them)")
        return line

    def to_json(self):
        return dataclasses.asdict(self)


def split_keeping_duplicates(paths, strata, val_fraction, seed, split_groups="duplicates",
                             max_pixels=DEFAULT_MAX_PIXELS, max_distance=NEAR_DUPLICATE_BITS):
    """Seeded stratified split of `paths`, each duplicate group on one side.

    Args:
        paths: list of image files, one per item.
        strata: int per item (the class, or 0 for unlabelled data) to stratify by.
        val_fraction: float, fraction of each stratum held out.
        seed: int, seed of the split.
        split_groups: 'duplicates' to keep exact and near-duplicate groups together, 'none' for the plain split.
        max_pixels: int, the pixel budget files are decoded under for hashing.
        max_distance: int, pHash bits two images may differ in and still count as copies.

    Returns:
        (train indices, validation indices, `GroupedSplitReport` or None when not grouped).

    Example:
        >>> train, val, report = split_keeping_duplicates(["a.png", "b.png", "c.png"], [0, 0, 0], 0.34, 1)
    """
    train, val = stratified_split(strata, val_fraction, seed)
    if split_groups == "none" or len(val) == 0:
        return train, val, None
    reports = scan_files(paths, max_pixels)
    index_of = {path: index for index, path in enumerate(paths)}
    groups = [[index_of[path] for path in group.paths] for group in duplicate_groups(reports, max_distance)]
    return keep_groups_together(train, val, strata, groups)


def keep_groups_together(train, val, strata, groups):
    """Moves each group that straddles the split to the side holding most of it.

    Smaller groups go first, so that as many copies as possible end up together;
    a move that would leave a stratum without an image on a side it had, or move
    the validation size more than half of the way to none or to double, is not made.

    Args:
        train, val: index arrays of the plain split.
        strata: int per item.
        groups: lists of item indices, each a set of copies.

    Returns:
        (train indices, validation indices, `GroupedSplitReport`), indices sorted.

    Example:
        >>> keep_groups_together([0, 1, 2, 4], [3, 5], [0] * 6, [[2, 3, 5]])[1]
        array([2, 3, 5])
    """
    strata = np.asarray(strata)
    in_val = np.zeros(len(strata), bool)
    in_val[np.asarray(val, np.int64)] = True
    planned = int(in_val.sum())
    report = GroupedSplitReport(groups_found=len(groups))
    for group in sorted(groups, key=len):
        group = np.asarray(group, np.int64)
        sides = in_val[group]
        if sides.all() or not sides.any():
            continue
        in_val_count = int(sides.sum())
        # the side holding most of the group; a tie goes where it brings validation nearer its planned size
        to_val = in_val_count * 2 > len(group) or (in_val_count * 2 == len(group) and in_val.sum() < planned)
        moved = group[sides != to_val]
        trial = in_val.copy()
        trial[moved] = to_val
        if _keeps_every_side(in_val, trial, strata) and planned / 2 <= trial.sum() <= planned * 2:
            in_val = trial
            report.groups_moved += 1
            report.images_moved += len(moved)
        else:
            report.groups_left_split += 1
    return np.flatnonzero(~in_val), np.flatnonzero(in_val), report


def _keeps_every_side(before, after, strata):
    """No stratum loses its last item on either side."""
    for stratum in np.unique(strata):
        members = strata == stratum
        for side in (True, False):
            if (before[members] == side).any() and not (after[members] == side).any():
                return False
    return True
