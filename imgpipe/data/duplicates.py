"""Exact and near-duplicate images, and the ones that leak across the train/validation split.

A copy of a validation image in the training set inflates every validation
metric without anyone noticing. Exact copies share a SHA-256; near copies
(re-encoded, resized, slightly cropped or brightened) share most bits of their
perceptual hash: two images whose 64-bit pHash differ in at most
`max_distance` bits are grouped (4 finds re-saved and resized copies while
keeping distinct photos of one scene apart).

Example:
    >>> groups = duplicate_groups(reports, max_distance=4)
    >>> leaking(groups, split_of={"a.jpg": "train", "b.jpg": "val"})
"""

import dataclasses

import numpy as np

CHUNK = 1024  # rows of the pairwise distance matrix held at once
NEAR_DUPLICATE_BITS = 4  # finds re-saved and resized copies, keeps distinct photos of one scene apart


@dataclasses.dataclass
class DuplicateGroup:
    """Files that show the same picture; `exact` when all share one SHA-256."""

    paths: list
    exact: bool


def duplicate_groups(reports, max_distance=NEAR_DUPLICATE_BITS):
    """Groups of two or more decodable files that are exact or near copies of each other.

    Args:
        reports: `FileReport`s from `imgpipe.data.inventory.scan_files`.
        max_distance: int, largest pHash Hamming distance (of 64 bits) still called a copy;
            negative to look for exact copies only.

    Returns:
        list of `DuplicateGroup`, largest first, each group's paths sorted.
    """
    usable = [r for r in reports if r.problem is None]
    parent = list(range(len(usable)))

    def root(index):
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    def join(a, b):
        parent[root(a)] = root(b)

    first_with_digest = {}
    for index, report in enumerate(usable):
        join(index, first_with_digest.setdefault(report.sha256, index))
    if max_distance >= 0 and len(usable) > 1:
        for a, b in near_pairs([r.phash for r in usable], max_distance):
            join(a, b)
    members = {}
    for index in range(len(usable)):
        members.setdefault(root(index), []).append(usable[index])
    groups = [
        DuplicateGroup(sorted(r.path for r in group), exact=len({r.sha256 for r in group}) == 1)
        for group in members.values() if len(group) > 1
    ]
    return sorted(groups, key=lambda g: (-len(g.paths), g.paths))


def near_pairs(hashes, max_distance):
    """Index pairs (i < j) whose 64-bit hashes differ in at most `max_distance` bits.

    Example:
        >>> list(near_pairs([0b1011, 0b1010, 0xFFFF], 1))
        [(0, 1)]
    """
    values = np.array(hashes, dtype=np.uint64)
    for start in range(0, len(values), CHUNK):
        block = values[start:start + CHUNK]
        distances = np.bitwise_count(block[:, None] ^ values[None, :])
        rows, columns = np.nonzero(distances <= max_distance)
        rows = rows + start
        for a, b in zip(rows.tolist(), columns.tolist()):
            if a < b:
                yield a, b


def leaking(groups, split_of):
    """The groups with members on both sides of the split (`split_of`: path -> 'train' | 'val')."""
    return [group for group in groups if len({split_of.get(path) for path in group.paths} - {None}) > 1]
