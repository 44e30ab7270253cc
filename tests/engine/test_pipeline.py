import logging
import pathlib

import numpy as np
import pytest
from PIL import Image

from imgpipe.engine.augment import Augmenter
from imgpipe.data.folders import read_class_folders
from imgpipe.data.images import load_image, plain_jpeg_scale
from imgpipe.engine.pipeline import cache_mode, make_dataset, resize_uint8


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


def test_both_splits_run_without_the_tuner_that_stalled_epoch_boundaries(class_folder):
    data = read_class_folders(class_folder)
    for split, training in ((data.train, True), (data.val, False)):
        dataset, _ = make_dataset(split, [16, 16], batch_size=4, training=training, augmenter=Augmenter(), seed=1)
        assert dataset.options().autotune.enabled is False


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
    from imgpipe.engine.pipeline import replica_safe_batch_size

    size = replica_safe_batch_size(count, batch, replicas)
    assert size == expected
    assert count % size == 0 or count % size >= replicas or size == batch


def jpeg_class_folder(root, count=4, size=(48, 64)):
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True)
        for index in range(count):
            pixels = rng.integers(0, 255, size + (3,), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.jpg", quality=90)
    return root


def test_plain_jpegs_decoded_in_the_graph_match_pillow(tmp_path):
    data = read_class_folders(jpeg_class_folder(tmp_path / "images"), val_split=0.5)
    dataset, _ = make_dataset(data.val, [12, 16], batch_size=8, training=False)
    images = batches(dataset)[0][0]
    expected = [resize_uint8(load_image(path, draft=[12, 16]), [12, 16]).numpy() for path in data.val.paths]
    assert np.array_equal(images, np.stack(expected).astype(np.float32))


def test_corrupt_jpeg_with_intact_header_is_dropped_not_a_crash(tmp_path):
    data = read_class_folders(jpeg_class_folder(tmp_path / "images"), val_split=0.5)
    broken = pathlib.Path(data.train.paths[0])
    content = bytearray(broken.read_bytes())
    middle = len(content) // 2
    content[middle:middle + 400] = bytes((value * 7 + 3) % 256 for value in content[middle:middle + 400])
    broken.write_bytes(bytes(content))
    assert plain_jpeg_scale(bytes(content), [16, 16])  # so TensorFlow, not Pillow, meets the corruption
    dataset, _ = make_dataset(data.train, [16, 16], batch_size=8, training=False, cache="none")
    assert sum(len(labels) for _, labels in batches(dataset)) == data.train.count - 1


@pytest.mark.parametrize("source, size", [((40, 60), [10, 20]), ((8, 8), [16, 24]), ((8, 40), [16, 16])])
def test_resize_keeps_uint8_and_flat_colour(source, size):
    image = np.full(source + (3,), 200, np.uint8)
    resized = resize_uint8(image, size).numpy()
    assert resized.shape == tuple(size) + (3,) and resized.dtype == np.uint8
    assert np.all(resized == 200)


def test_shrinking_averages_the_covered_pixels():
    stripes = np.zeros((4, 4, 3), np.uint8)
    stripes[:, ::2] = 200
    assert np.all(resize_uint8(stripes, [2, 2]).numpy() == 100)
    # Beyond 2x every covered pixel counts, not just the two nearest the sample point.
    sparse = np.zeros((8, 8, 3), np.uint8)
    sparse[:, ::4] = 200
    assert np.all(resize_uint8(sparse, [2, 2]).numpy() == 50)


@pytest.mark.parametrize("name, size, image_size", [("big.jpg", (410, 530), (64, 64)), ("mid.jpg", (150, 170), (64, 96)),
                                                    ("small.jpg", (40, 50), (64, 64)), ("shape.png", (300, 200), (64, 64))])
def test_the_serving_signature_prepares_pixels_exactly_as_training_does(tmp_path, name, size, image_size):
    """No training/serving skew: the SavedModel's decode gives the training pipeline's very pixels."""
    import tensorflow as tf

    from imgpipe.data.sources import ImageSet
    from imgpipe.engine.serving import decode_batch

    rng = np.random.default_rng(7)
    pixels = np.kron(rng.integers(0, 256, (size[0] // 10 + 1, size[1] // 10 + 1, 3)), np.ones((10, 10, 1)))
    path = tmp_path / name
    Image.fromarray(pixels[:size[0], :size[1]].astype(np.uint8)).save(path, quality=90)
    trained_on, _ = make_dataset(ImageSet.from_files([path], np.zeros(1, np.int32)), image_size, 1, training=False,
                                 cache="none")
    training_pixels = next(iter(trained_on))[0].numpy()
    served, original, _ = decode_batch(tf.constant([path.read_bytes()]), image_size, 25_000_000)
    assert original.numpy().tolist() == [list(size)]
    np.testing.assert_array_equal(served.numpy(), training_pixels)
