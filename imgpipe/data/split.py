"""Seeded, stratified train/validation split.

Every class keeps the same fraction in validation, and the same seed gives the
same split on any machine, so runs can be compared and repeated.

Example:
    >>> train_index, val_index = stratified_split([0, 0, 1, 1, 1], 0.2, seed=1337)
"""

import numpy as np


def stratified_split(labels, val_fraction, seed):
    """Returns (train indices, validation indices), each sorted.

    Each class with at least two items puts round(n * val_fraction) of them, and
    at least one, into validation; a class with one item stays in training.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        count = int(round(len(members) * val_fraction))
        if val_fraction > 0 and len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        val.extend(members[:count].tolist())
    val = np.array(sorted(val), dtype=np.int64)
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


def stratified_folds(labels, folds, seed):
    """`folds` disjoint index arrays covering every item, each class dealt out over them in turn (seeded).

    Cross-validation trains one model per fold on the others, so that every item gets a
    prediction from a model that never saw it; dealing each class out keeps the classes'
    shares equal in every fold.

    Example:
        >>> [fold.tolist() for fold in stratified_folds([0, 0, 0, 1, 1, 1], 3, seed=0)]
        [[2, 5], [0, 4], [1, 3]]
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    assigned = np.empty(len(labels), np.int64)
    offset = 0
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        # each class starts where the last one stopped, so small classes do not all pile into fold 0
        assigned[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)
    return [np.flatnonzero(assigned == fold) for fold in range(folds)]
