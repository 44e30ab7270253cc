import logging

import numpy as np
import pytest

from imgpipe.data.folders import list_images, read_class_folders
from imgpipe.data.split import stratified_split
from imgpipe.errors import DataError
from tests.conftest import write_image


def test_class_names_are_sorted_folder_names_and_split_is_stratified(class_folder):
    data = read_class_folders(class_folder, val_split=0.2, seed=1337)
    assert data.class_names == ["blue", "green", "red"]
    assert (data.train.count, data.val.count) == (24, 6)
    assert np.bincount(data.val.targets).tolist() == [2, 2, 2]
    assert not set(data.train.paths) & set(data.val.paths)


def test_split_is_deterministic_under_the_seed(class_folder):
    first = read_class_folders(class_folder, seed=7)
    again = read_class_folders(class_folder, seed=7)
    other = read_class_folders(class_folder, seed=8)
    assert first.val.paths == again.val.paths
    assert first.val.paths != other.val.paths


def test_stratified_split_keeps_one_item_classes_in_training():
    train, val = stratified_split([0, 0, 0, 0, 0, 1], 0.2, seed=0)
    assert 5 in train and len(val) == 1


def test_images_are_found_recursively_and_hidden_files_ignored(class_folder):
    write_image(class_folder / "red" / "deeper" / "nested.png", (200, 0, 0))
    (class_folder / "red" / ".DS_Store").write_bytes(b"junk")
    (class_folder / "red" / "notes.txt").write_text("not an image")
    data = read_class_folders(class_folder)
    assert any(path.endswith("nested.png") for path in data.train.paths + data.val.paths)
    assert data.train.count + data.val.count == 31


def test_train_and_val_folders_are_used_as_given(tmp_path):
    for split, count in (("train", 4), ("validation", 2)):
        for name in ("cat", "dog"):
            for index in range(count):
                write_image(tmp_path / split / name / f"{index}.png", (index * 40, 0, 0))
    data = read_class_folders(tmp_path)
    assert (data.train.count, data.val.count) == (8, 4)
    assert all("/validation/" in path for path in data.val.paths)


def test_unreadable_files_are_skipped_with_one_warning_each(class_folder, caplog):
    (class_folder / "red" / "empty.png").write_bytes(b"")
    (class_folder / "green" / "text.jpg").write_text("not a jpeg")
    with caplog.at_level(logging.WARNING, logger="imgpipe"):
        data = read_class_folders(class_folder)
    assert len(data.skipped) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("empty.png" in w and "empty file" in w for w in warnings)
    assert any("text.jpg" in w for w in warnings)


def test_image_size_auto_follows_the_data(tmp_path):
    for name in ("a", "b"):
        for index in range(3):
            write_image(tmp_path / name / f"{index}.png", (index, 0, 0), size=64)
    assert read_class_folders(tmp_path, val_split=0.34).image_size == [64, 64]
    assert read_class_folders(tmp_path, val_split=0.34, image_size=[20, 30]).image_size == [20, 30]


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "data folder not found"),
        ("flat", "no class sub-folders"),
        ("one_class", "at least two classes"),
        ("unreadable", "no readable images"),
        ("file", "not a folder"),
    ],
)
def test_unusable_folders_stop_with_the_folder_named(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout == "flat":
        for index in range(3):
            write_image(root / f"{index}.png", (0, 0, 0))
    elif layout == "one_class":
        for index in range(3):
            write_image(root / "only" / f"{index}.png", (0, 0, 0))
    elif layout == "unreadable":
        for name in ("a", "b"):
            (root / name).mkdir(parents=True)
            (root / name / "x.png").write_bytes(b"")
    elif layout == "file":
        root.write_text("a file")
    with pytest.raises(DataError) as error:
        read_class_folders(root)
    assert message in str(error.value) and str(root) in str(error.value)


def test_symlinked_folders_are_followed_once_and_a_loop_ends(tmp_path):
    # Users link data sets in: the linked class is read; a link back up the tree is walked once, not forever.
    elsewhere = tmp_path / "elsewhere" / "b"
    for index in range(3):
        write_image(tmp_path / "data" / "a" / f"{index}.png", (200, 0, 0))
        write_image(elsewhere / f"{index}.png", (0, 200, 0))
    (tmp_path / "data" / "b").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "data" / "a" / "loop").symlink_to(tmp_path / "data", target_is_directory=True)
    assert [p.rsplit("/", 1)[-1] for p in list_images(tmp_path / "data" / "b")] == ["0.png", "1.png", "2.png"]
    assert len(list_images(tmp_path / "data")) == 6
    data = read_class_folders(tmp_path / "data", val_split=0.34)
    assert data.class_names == ["a", "b"] and data.train.count + data.val.count == 6


@pytest.mark.parametrize(
    "sides, expected",
    [
        ([40, 40, 41, 200, 300], [40, 40]),  # the median side (the mean would be 124), rounded to a multiple of 8
        ([10, 12, 14], [32, 32]),  # clamped up to 32
        ([1000, 1200, 4000], [224, 224]),  # clamped down to 224
        ([60, 100], [80, 80]),  # an even count: the mean of the middle two
    ],
)
def test_image_size_auto_is_the_median_side_clamped_to_32_224(tmp_path, sides, expected):
    for index, side in enumerate(sides):
        for name in ("a", "b"):
            write_image(tmp_path / name / f"{index}.png", (index, 0, 0), size=side)
    assert read_class_folders(tmp_path, val_split=0.34).image_size == expected
