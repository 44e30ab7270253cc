import logging

import numpy as np
import pytest

from imgpipe.augment import Augmenter
from imgpipe.data.folders import read_class_folders
from imgpipe.pipeline import cache_mode, make_dataset


def batches(dataset):
    return [(images.numpy(), labels.numpy()) for images, labels in dataset]


def test_batches_are_float_pixels_and_int_labels(class_folder):
    data = read_class_folders(class_folder)
    dataset, _ = make_dataset(data.train, [12, 20], batch_size=8, training=True, augmenter=Augmenter(), seed=1)
    images, labels = next(iter(dataset))
    assert images.shape == (8, 12, 20, 3) and images.dtype.name == "float32"
    assert labels.shape == (8,) and labels.dtype.name == "int32"
    assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 255.0
    assert sum(len(labels) for _, labels in batches(dataset)) == data.train.count


def test_same_seed_gives_the_same_augmented_epoch(class_folder):
    data = read_class_folders(class_folder)

    def first_epoch(seed):
        dataset, _ = make_dataset(data.train, [16, 16], batch_size=4, training=True,
                                  augmenter=Augmenter("strong", "strong", "strong"), seed=seed, cache="none")
        return sorted(batches(dataset), key=lambda batch: batch[0].sum())

    first, again, other = first_epoch(5), first_epoch(5), first_epoch(6)
    as_set = lambda epoch: sorted(float(image.sum()) for images, _ in epoch for image in images)  # noqa: E731
    assert as_set(first) == as_set(again)
    assert as_set(first) != as_set(other)


def test_epochs_differ_but_validation_is_fixed(class_folder):
    data = read_class_folders(class_folder)
    train, _ = make_dataset(data.train, [16, 16], batch_size=32, training=True, augmenter=Augmenter(), seed=1)
    val, _ = make_dataset(data.val, [16, 16], batch_size=32, training=False)
    assert not np.array_equal(batches(train)[0][0], batches(train)[0][0])
    assert np.array_equal(batches(val)[0][0], batches(val)[0][0])
    assert np.array_equal(batches(val)[0][1], data.val.targets)


def test_file_broken_after_scanning_is_dropped_with_one_warning(class_folder, caplog):
    data = read_class_folders(class_folder)
    broken = data.train.paths[0]
    with open(broken, "r+b") as handle:
        handle.truncate(40)
    with caplog.at_level(logging.WARNING, logger="imgpipe"):
        dataset, decoder = make_dataset(data.train, [16, 16], batch_size=8, training=True, cache="memory")
        for _ in range(2):
            total = sum(len(labels) for _, labels in batches(dataset))
    assert total == data.train.count - 1
    assert decoder.failed == {broken}
    assert sum(broken in record.getMessage() for record in caplog.records) == 1


def test_disk_cache_is_written_to_the_given_folder(class_folder, tmp_path):
    data = read_class_folders(class_folder)
    dataset, _ = make_dataset(data.val, [16, 16], batch_size=8, training=False, cache="disk",
                              cache_dir=tmp_path / "cache")
    assert batches(dataset)
    assert any((tmp_path / "cache").iterdir())


def test_auto_cache_keeps_small_sets_in_memory():
    assert cache_mode(1000, [64, 64], "auto", budget_bytes=2**30) == "memory"
    assert cache_mode(100_000, [224, 224], "auto", budget_bytes=2**30) == "disk"
    assert cache_mode(10, [8, 8], "none") == "none"


@pytest.mark.parametrize("count, batch, replicas, expected", [(9, 8, 2, 7), (16, 8, 2, 8), (10, 8, 2, 8),
                                                              (9, 8, 1, 8), (13, 4, 4, 4), (7, 4, 4, 4)])
def test_replica_safe_batch_size_leaves_no_replica_empty(count, batch, replicas, expected):
    from imgpipe.pipeline import replica_safe_batch_size

    size = replica_safe_batch_size(count, batch, replicas)
    assert size == expected
    assert count % size == 0 or count % size >= replicas or size == batch
