import json

import numpy as np
import pytest
from PIL import Image

from imgpipe.understand.check import check_data, guess_task, render
from imgpipe.data.duplicates import duplicate_groups, near_pairs
from imgpipe.data.inventory import scan_file
from tests import corpus


@pytest.fixture
def messy_folder(tmp_path):
    """A class-folder data set with every kind of trouble, and a train/val split fixed by folders."""
    root = tmp_path / "messy"
    for index in range(6):
        corpus.photo(root / "train" / "cat" / f"cat{index}.png", seed=index)
    for index in range(2):
        corpus.photo(root / "train" / "dog" / f"dog{index}.png", seed=100 + index)
    corpus.photo(root / "val" / "cat" / "cat_val.png", seed=50)
    corpus.photo(root / "val" / "dog" / "dog_val.png", seed=150)
    # The same bytes on both sides of the split, and a resized JPEG copy of a training image.
    (root / "val" / "cat" / "copy_of_cat0.png").write_bytes((root / "train" / "cat" / "cat0.png").read_bytes())
    Image.open(root / "train" / "cat" / "cat1.png").resize((48, 48)).save(root / "val" / "cat" / "resized.jpg")
    corpus.truncated_jpeg(root / "train" / "cat" / "truncated.jpg")
    corpus.zero_bytes(root / "train" / "dog" / "empty.jpg")
    corpus.not_an_image(root / "train" / "dog" / "notes.jpg")
    corpus.decompression_bomb(root / "train" / "dog" / "bomb.png")
    corpus.png_named_jpg(root / "train" / "dog" / "really_a_png.jpg", seed=7)
    corpus.cmyk_jpeg(root / "train" / "cat" / "cmyk.jpg")
    corpus.sixteen_bit_png(root / "train" / "cat" / "deep.png")
    corpus.exif_rotated_jpeg(root / "train" / "cat" / "rotated.jpg")
    (root / "train" / "cat" / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic")
    return root


def test_every_problem_is_found_and_named(messy_folder):
    report = check_data(messy_folder, "classify")
    assert report.trainable
    unreadable = "\n".join(report.unreadable)
    for name, reason in (("truncated.jpg", "truncated"), ("empty.jpg", "0 bytes"), ("notes.jpg", "not an image"),
                         ("bomb.png", "data.max_pixels")):
        assert any(name in line and reason in line for line in report.unreadable), (name, unreadable)
    assert len(report.unreadable) == 4
    assert report.extension_mismatches == [f"{messy_folder}/train/dog/really_a_png.jpg: a PNG file named .jpg"]
    assert {"CMYK", "16-bit grey", "RGB"} <= set(report.modes)
    assert report.exif_rotated == 1
    assert report.other_files == {".heic": 1}


def test_duplicates_and_leakage_across_the_split(messy_folder):
    report = check_data(messy_folder, "classify")
    leaks = {tuple(group["files"]): group["exact"] for group in report.leaking}
    assert leaks == {
        (str(messy_folder / "train/cat/cat0.png"), str(messy_folder / "val/cat/copy_of_cat0.png")): True,
        (str(messy_folder / "train/cat/cat1.png"), str(messy_folder / "val/cat/resized.jpg")): False,
    }
    assert len(report.duplicates) == 2  # the distinct photos are not grouped
    exact_only = check_data(messy_folder, "classify", near_duplicate_bits=-1)
    assert [group["exact"] for group in exact_only.leaking] == [True]


def test_class_balance_and_the_weights_auto_would_use(messy_folder):
    findings = check_data(messy_folder, "classify").findings
    rows = {row["class"]: row for row in findings["classes"]}
    # Readers skip only what the header check refuses; truncated.jpg fails later, in decoding.
    assert rows["cat"]["training"] == 10 and rows["dog"]["training"] == 3
    assert rows["cat"]["validation"] == 3 and rows["dog"]["validation"] == 1
    assert rows["dog"]["weight (class_weight: auto)"] == pytest.approx(13 / (2 * 3), abs=1e-3)
    assert findings["imbalance ratio (largest / smallest class)"] == pytest.approx(13 / 4)


def test_json_output_and_exit_status(cli, messy_folder, tmp_path):
    code, out, _ = cli("check", "--data", messy_folder, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["trainable"] and report["task"] == "classify" and len(report["leaking"]) == 2
    code, out, _ = cli("check", "--data", messy_folder)
    assert code == 0 and "LEAKAGE" in out and "truncated.jpg" in out and "trainable: yes" in out

    flat = tmp_path / "flat"
    corpus.photo(flat / "a.png", 1)
    code, out, err = cli("check", "--data", flat)
    assert code == 2 and f"error: {flat}: 1 images but no class sub-folders" in out and "Traceback" not in err


def test_blocking_messages_are_the_ones_run_gives(cli, tmp_path):
    single = tmp_path / "single"
    for index in range(3):
        corpus.photo(single / "cat" / f"{index}.png", index)
    _, check_out, _ = cli("check", "--data", single)
    code, _, run_err = cli("run", "classify", "--data", single, "--epochs", "1")
    message = run_err.strip().removeprefix("error: ")
    assert code == 2 and message in check_out


def test_nothing_in_the_data_folder_changes(messy_folder):
    before = corpus.tree_snapshot(messy_folder)
    check_data(messy_folder, "classify")
    assert corpus.tree_snapshot(messy_folder) == before


def test_segmentation_masks_values_and_sizes(tmp_path):
    root = tmp_path / "seg"
    (root / "masks").mkdir(parents=True)
    for index in range(4):
        corpus.photo(root / "images" / f"{index}.png", index, size=16)
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 1
        mask[0, :] = 255
        Image.fromarray(mask).save(root / "masks" / f"{index}.png")
    assert guess_task(root) == "segment"
    report = check_data(root)
    values = {row["stored value"]: row for row in report.findings["mask values found"]}
    assert values[1]["pixels"] == 4 * 64 and values[1]["read as"] == "class_1"
    assert values[255]["read as"] == "ignored" and values[0]["read as"] == "class_0"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "3.png")
    broken = check_data(root)
    assert not broken.trainable and "3.png: mask is 8x8 but its image" in broken.error


def test_detection_boxes_and_negatives(tmp_path):
    root = tmp_path / "voc"
    for index in range(5):
        corpus.photo(root / "images" / f"{index}.jpg", index, size=40)
        objects = [("cat", (5, 5, 20, 20))] if index else []
        if index == 1:
            objects.append(("dog", (30, 30, 60, 60)))  # reaches outside the 40x40 image
        if index == 2:
            objects.append(("dog", (10, 10, 10, 30)))  # zero width
        corpus.voc_annotation(root / "annotations" / f"{index}.xml", f"{index}.jpg", 40, 40, objects)
    report = check_data(root)
    assert report.task == "detect" and report.trainable
    assert report.findings["class names found"] == "cat, dog"
    training, validation = [int(word) for word in report.findings["images without objects"].split()
                            if word.isdigit()]
    assert training + validation == 1
    warnings = "\n".join(report.reader_warnings)
    assert "1.jpg: 1 box(es) extend outside the 40x40 image; clipped" in warnings
    assert "2.jpg: 1 zero-area or inverted box(es) dropped" in warnings
    text = render(report)
    assert "objects per class" in text and "warnings from the reader (2)" in text


def test_near_pairs_by_hamming_distance():
    assert list(near_pairs([0b1011, 0b1010, 0xFFFF_FFFF_FFFF_FFFF], 1)) == [(0, 1)]
    assert list(near_pairs([0, 0b111], 2)) == []


def test_scan_reports_hashes_and_groups(tmp_path):
    first = scan_file(corpus.photo(tmp_path / "a.png", 1))
    again = scan_file(corpus.photo(tmp_path / "b.png", 1))
    other = scan_file(corpus.photo(tmp_path / "c.png", 2))
    assert first.sha256 == again.sha256 and first.phash == again.phash and first.problem is None
    groups = duplicate_groups([first, again, other])
    assert [(g.paths, g.exact) for g in groups] == [([first.path, again.path], True)]
