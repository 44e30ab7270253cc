"""The bad-input corpus, through the command line, for every task that reads such files.

Each case asserts the exit status, that the one-line message names the file or
recipe key at fault, and that no traceback is printed. Runs that can go on
(some files unreadable) must skip each file with one warning naming it, count
them at the end, finish, and leave the data folder exactly as it was.
"""

import json

import numpy as np
import pytest
from PIL import Image

from tests import corpus

QUICK = ["--epochs", "1", "--batch-size", "4", "--set", "train.verbose=0", "--set", "train.patience=0", "--no-robustness",
         "--no-export"]
SIZE = {"classify": "16", "segment": "32", "detect": "64", "stylize": "32", "colorize": "32"}


def photos(folder, count, size=32, first_seed=0):
    return [corpus.photo(folder / f"{index}.png", first_seed + index, size=size) for index in range(count)]


def class_data(root):
    photos(root / "cat", 5)
    photos(root / "dog", 5, first_seed=50)
    return root, root / "cat", []


def segment_data(root):
    (root / "masks").mkdir(parents=True)
    for path in photos(root / "images", 8):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 8:24] = 1
        Image.fromarray(mask).save(root / "masks" / path.name)
    return root, root / "images", []


def detect_data(root):
    for path in photos(root / "images", 8, size=64):
        corpus.voc_annotation(root / "annotations" / f"{path.stem}.xml", path.name, 64, 64,
                              [("thing", (10, 10, 40, 40))])
    return root, root / "images", []


def stylize_data(root):
    photos(root / "photos", 6)
    style = corpus.photo(root / "style.png", 99, size=48)
    return root / "photos", root / "photos", ["--style", style, "--loss-weights", "random",
                                             "--set", "stylize.max_side=48"]


def colorize_data(root):
    photos(root / "photos", 6)
    return root / "photos", root / "photos", []


DATA = {"classify": class_data, "segment": segment_data, "detect": detect_data, "stylize": stylize_data,
        "colorize": colorize_data}


def assert_refused(result, *named):
    """Exit 2; one error line naming `named`; anything else printed is a one-line warning about a file."""
    code, _, err = result
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and all(line.startswith("warning: skipped ") for line in lines if line not in errors), err
    for text in named:
        assert str(text) in errors[0], (text, err)


@pytest.mark.parametrize("task", list(DATA))
@pytest.mark.slow
def test_unreadable_files_are_skipped_counted_and_the_run_finishes(cli, tmp_path, task):
    data, image_folder, extra = DATA[task](tmp_path / "data")
    bad = [corpus.zero_bytes(image_folder / "empty.png"), corpus.not_an_image(image_folder / "text.png"),
           corpus.decompression_bomb(image_folder / "bomb.png"), corpus.truncated_jpeg(image_folder / "cut.jpg")]
    if task == "segment":
        for path in bad:
            Image.fromarray(np.zeros((64, 64), np.uint8)).save(data / "masks" / f"{path.stem}.png")
    if task == "detect":
        for path in bad:
            corpus.voc_annotation(data / "annotations" / f"{path.stem}.xml", path.name, 64, 64,
                                  [("thing", (1, 1, 9, 9))])
    before = corpus.tree_snapshot(tmp_path / "data")
    code, out, err = cli("run", task, "--data", data, "--image-size", SIZE[task], "--output", tmp_path / "run",
                         "--export-dir", tmp_path / "models", *QUICK, *extra)
    assert code == 0, err
    assert "Traceback" not in err
    for path in bad[:3]:
        assert sum(str(path) in line and line.startswith("warning: skipped") for line in err.splitlines()) == 1, err
    assert "bomb.png" in err and "data.max_pixels" in err
    # The truncated JPEG reads as a header and fails only when decoded: skipped then, in training or validation.
    skipped = json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped_files"]
    assert skipped in (3, 4)
    assert f"{skipped} file(s) could not be read and were skipped" in err
    assert corpus.tree_snapshot(tmp_path / "data") == before


@pytest.mark.parametrize("task", list(DATA))
def test_recipe_errors_are_refused_before_any_data_is_read(cli, tmp_path, task):
    missing = tmp_path / "no_such_folder"
    for option, key in ((["--epochs", "-1"], "train.epochs"), (["--image-size", "0"], "data.image_size"),
                        (["--model", "resnet9000"], "model.name"), (["--set", "train.batch_size=two"],
                                                                    "train.batch_size")):
        assert_refused(cli("run", task, "--data", missing, *option), key)


@pytest.mark.parametrize("task", list(DATA))
def test_missing_data_folder_and_no_usable_image(cli, tmp_path, task):
    extra = ["--style", corpus.photo(tmp_path / "style.png", 1)] if task == "stylize" else []
    assert_refused(cli("run", task, "--data", tmp_path / "absent", *extra), tmp_path / "absent")
    data, image_folder, extra = DATA[task](tmp_path / "data")
    for path in list(image_folder.iterdir()):
        corpus.zero_bytes(path)
    assert_refused(cli("run", task, "--data", data, *extra), data)


def test_classification_layouts_that_cannot_train(cli, tmp_path):
    photos(tmp_path / "flat", 3)
    assert_refused(cli("run", "classify", "--data", tmp_path / "flat"), tmp_path / "flat", "no class sub-folders")
    photos(tmp_path / "one" / "cat", 3)
    assert_refused(cli("run", "classify", "--data", tmp_path / "one"), tmp_path / "one", "two classes")


def test_segmentation_pairing_and_sizes(cli, tmp_path):
    data, _, _ = segment_data(tmp_path / "orphan")
    corpus.photo(data / "images" / "lonely.png", 5)
    assert_refused(cli("run", "segment", "--data", data), data / "images" / "lonely.png", "has no mask")
    data, _, _ = segment_data(tmp_path / "sizes")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(data / "masks" / "3.png")
    assert_refused(cli("run", "segment", "--data", data), data / "masks" / "3.png", "10x10")
    photos(tmp_path / "no_masks" / "images", 3)
    assert_refused(cli("run", "segment", "--data", tmp_path / "no_masks"), tmp_path / "no_masks")


@pytest.mark.parametrize("case, named", [
    ("broken_xml", "annotations/3.xml"),
    ("entity_expansion", "annotations/3.xml"),
    ("coco_not_json", "annotations.json"),
    ("coco_escapes", "../../outside.jpg"),
    ("yolo_bad_line", "labels/0.txt:1"),
])
def test_detection_annotations_that_do_not_parse(cli, tmp_path, case, named):
    data = tmp_path / "det"
    if case in ("broken_xml", "entity_expansion"):
        detect_data(data)
        xml = data / "annotations" / "3.xml"
        xml.write_text("<annotation><object>") if case == "broken_xml" else corpus.billion_laughs_xml(xml)
    elif case.startswith("coco"):
        photos(data / "images", 2)
        text = "{not json" if case == "coco_not_json" else json.dumps({
            "images": [{"id": 1, "file_name": "../../outside.jpg", "width": 32, "height": 32}],
            "annotations": [], "categories": [{"id": 1, "name": "thing"}]})
        (data / "annotations.json").write_text(text)
    else:
        photos(data / "images", 2)
        (data / "labels").mkdir()
        (data / "labels" / "0.txt").write_text("0 0.5 0.5 zero 0.2\n")
        (data / "classes.txt").write_text("thing\n")
    assert_refused(cli("run", "detect", "--data", data), named)


def test_style_image_missing_or_not_an_image(cli, tmp_path):
    content, _, _ = stylize_data(tmp_path / "data")
    assert_refused(cli("run", "stylize", "--data", content, "--style", tmp_path / "nope.png"), tmp_path / "nope.png")
    text = corpus.not_an_image(tmp_path / "style.jpg")
    assert_refused(cli("run", "stylize", "--data", content, "--style", text), text, "not an image")
