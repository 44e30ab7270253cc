import json

import numpy as np
import pytest
from albumentations.augmentations.geometric import functional as albumentations_geometry

import imgpipe
from imgpipe.data.boxes import pad_boxes, unpad_boxes
from imgpipe.data.demo import make_detection_folder, make_landscapes_folder
from imgpipe.errors import DataError
from imgpipe.understand.perturb import (ERASE_GRID, FAMILIES, LEVELS, MID_GREY, OUTSIDE, SEVERITIES, Perturbation,
                             changed_pixels, image_seeds, unit_field_rms)
from imgpipe.understand.robustness import export_card, robustness_card, run_card
from tests.data.test_masks import make_pairs

GEOMETRIC = ("viewpoint", "deformation")
PHOTOMETRIC = ("illumination", "occlusion", "clutter")
FAST = ["--epochs", "1", "--batch-size", "8", "--image-size", "16", "--set", "train.verbose=0"]


def scene(size=64):
    """A smooth picture with one sharp-edged object: every perturbation has something to change."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.stack([200 * x + 20, 180 * y + 30, 100 + 80 * np.sin(6 * x + 4 * y)], -1)
    image[size // 4: size // 2, size // 3: 2 * size // 3] = [230, 40, 40]
    return image.round().astype(np.uint8)


# === Severity is physical and monotone ===
@pytest.mark.parametrize("family", FAMILIES)
def test_a_stronger_severity_never_changes_fewer_pixels(family):
    image = scene()
    for seed in image_seeds(5, 3):
        perturbed = [Perturbation(family, severity, [64, 64]).apply(image, np.int32(0), seed)[0]
                     for severity in LEVELS]
        changed = [changed_pixels(image, out) for out in perturbed]
        distance = [float(np.abs(out.astype(int) - image).mean()) for out in perturbed]
        assert changed[0] > 0, f"{family} severity 1 changed nothing"
        assert changed == sorted(changed), f"{family}: changed pixels {changed}"
        assert all(b > a for a, b in zip(distance, distance[1:])), f"{family}: mean change {distance}"


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_perturbation_and_another_seed_another(family):
    image = scene()
    first = Perturbation(family, 3, [64, 64]).apply(image, np.int32(0), seed=11)[0]
    again = Perturbation(family, 3, [64, 64]).apply(image, np.int32(0), seed=11)[0]
    assert np.array_equal(first, again)
    others = [Perturbation(family, 3, [64, 64]).apply(image, np.int32(0), seed=seed)[0] for seed in range(12, 20)]
    assert any(not np.array_equal(first, other) for other in others)


def test_occlusion_erases_the_table_fraction_and_larger_fractions_contain_smaller():
    image = np.random.default_rng(0).integers(0, 100, (60, 80, 3), dtype=np.uint8)  # never mid-grey
    erased_before = np.zeros((60, 80), bool)
    for severity in LEVELS:
        out, _ = Perturbation("occlusion", severity, [60, 80]).apply(image, np.int32(0), seed=3)
        erased = np.all(out == MID_GREY, axis=-1)
        assert erased.mean() == pytest.approx(SEVERITIES["occlusion"][severity - 1]["erased_fraction"], abs=1e-9)
        assert np.all(erased[erased_before])
        assert np.array_equal(out[~erased], image[~erased])
        erased_before = erased
    assert ERASE_GRID == 10


def test_elastic_field_has_the_rms_displacement_the_table_says():
    for size in (32, 96):
        sigma = 0.08 * size
        squares = []
        for seed in range(10):
            dx, dy = albumentations_geometry.generate_displacement_fields(
                (size, size), 1.0, sigma, False, (0, 0), np.random.default_rng(seed), "uniform")
            squares.append(np.mean(dx**2 + dy**2))
        assert np.sqrt(np.mean(squares)) == pytest.approx(unit_field_rms(size, size, sigma), rel=0.05)
    # End to end: a mask holding each pixel's own index shows where every output pixel came from.
    size = 96
    mask = np.arange(size * size, dtype=np.int32).reshape(size, size)
    rows, columns = np.mgrid[0:size, 0:size]
    for severity in (1, 2):
        lengths = []
        for seed in range(4):
            _, moved = Perturbation("deformation", severity, [size, size], "mask").apply(
                np.zeros((size, size, 3), np.uint8), mask, seed)
            inside = moved >= 0
            source_rows, source_columns = np.divmod(moved[inside], size)
            lengths.append(np.mean((source_rows - rows[inside])**2 + (source_columns - columns[inside])**2))
        nominal = SEVERITIES["deformation"][severity - 1]["displacement_rms"] * size
        assert np.sqrt(np.mean(lengths)) == pytest.approx(nominal, rel=0.15)


def test_viewpoint_rotates_by_the_table_angle():
    # A thin horizontal bar through the centre: its angle afterwards is the rotation plus a
    # perspective term that is random per image, so the angle is averaged over a few images.
    size = 129
    image = np.zeros((size, size, 3), np.uint8)
    image[63:66, 14:115] = 255
    for severity in LEVELS:
        angles = []
        for seed in range(4):
            out, _ = Perturbation("viewpoint", severity, [size, size]).apply(image, np.int32(0), seed=seed)
            rows, columns = np.nonzero(out[..., 0] > 128)
            angles.append(abs(np.degrees(np.arctan(np.polyfit(columns, rows, 1)[0]))))
        assert np.mean(angles) == pytest.approx(SEVERITIES["viewpoint"][severity - 1]["rotation_degrees"], abs=1.5)


# === Geometry moves the targets with the image ===
def block_scene():
    rng = np.random.default_rng(0)
    mask = np.kron(rng.integers(0, 3, (4, 4)), np.ones((16, 16), int)).astype(np.int32)
    palette = np.array([[0, 0, 0], [120, 120, 120], [240, 240, 240]], np.uint8)
    return palette, palette[mask], mask


@pytest.mark.parametrize("family", GEOMETRIC)
def test_geometry_moves_the_mask_with_the_image(family):
    palette, image, mask = block_scene()
    for severity in LEVELS:
        for seed in range(3):
            out_image, out_mask = Perturbation(family, severity, [64, 64], "mask").apply(image, mask, seed)
            assert out_mask.dtype == np.int32 and set(np.unique(out_mask)) <= {OUTSIDE, 0, 1, 2}
            scored = out_mask >= 0
            agreement = np.mean(np.abs(out_image[..., 0][scored].astype(int) - palette[out_mask[scored]][:, 0]) < 40)
            assert agreement > 0.9, f"{family} {severity}: {agreement}"
            unmoved = np.mean(np.abs(out_image[..., 0].astype(int) - palette[mask][..., 0]) < 40)
            assert unmoved < agreement


@pytest.mark.parametrize("family", GEOMETRIC)
def test_geometry_moves_each_box_with_its_object(family):
    image = np.zeros((64, 64, 3), np.uint8)
    image[20:40, 12:30] = 255
    target = pad_boxes(np.array([[12, 20, 30, 40]], np.float32), np.array([1]), 3)
    for severity in LEVELS:
        out_image, moved = Perturbation(family, severity, [64, 64], "boxes").apply(image, target, seed=severity)
        boxes, classes = unpad_boxes(moved)
        assert classes.tolist() == [1] and moved.shape == (3, 5)
        x0, y0, x1, y1 = np.round(boxes[0]).astype(int)
        white = out_image[..., 0] > 128
        assert white[max(y0 - 2, 0): y1 + 2, max(x0 - 2, 0): x1 + 2].sum() >= 0.95 * white.sum()
        # The box is tight: it holds little but the object.
        assert (x1 - x0) * (y1 - y0) <= 1.6 * white.sum()


@pytest.mark.parametrize("family", PHOTOMETRIC)
def test_pixel_families_leave_masks_and_boxes_alone(family):
    _, image, mask = block_scene()
    out_image, out_mask = Perturbation(family, 5, [64, 64], "mask").apply(image, mask, seed=1)
    assert np.array_equal(out_mask, mask) and not np.array_equal(out_image, image)
    target = pad_boxes(np.array([[5, 6, 30, 40]], np.float32), np.array([0]), 2)
    _, moved = Perturbation(family, 5, [64, 64], "boxes").apply(image, target, seed=1)
    np.testing.assert_allclose(moved, target)


# === The card ===
def nearest_clean_image(clean_images, labels):
    """A 'model' that answers the label of the clean image nearest in pixels: perfect when clean."""
    flat = clean_images.reshape(len(clean_images), -1).astype(np.float32)

    def predict(batch):
        distances = ((batch.reshape(len(batch), 1, -1) - flat[None]) ** 2).sum(-1)
        return {"probabilities": np.eye(labels.max() + 1)[labels[np.argmin(distances, axis=1)]]}

    return predict


def accuracy(answers, images, targets):
    return float(np.mean(answers["probabilities"].argmax(1) == targets))


def test_card_is_deterministic_and_measures_the_model():
    images = np.stack([scene(32), scene(32)[::-1], scene(32)[:, ::-1], np.roll(scene(32), 9, axis=1)])
    labels = np.arange(4)
    predict = nearest_clean_image(images, labels)
    card = robustness_card(predict, accuracy, images, labels, "label", seed=7)
    again = robustness_card(predict, accuracy, images, labels, "label", seed=7)
    assert json.dumps(card) == json.dumps(again)
    assert card["clean"] == 1.0 and set(card["families"]) == set(FAMILIES)
    for entry in card["families"].values():
        assert len(entry["metric"]) == 5 and entry["retained"] == pytest.approx(np.mean(entry["metric"]))
        assert entry["drop"] == [pytest.approx(1.0 - value) for value in entry["metric"]]
    assert card["families"]["occlusion"]["severities"][4]["erased_fraction"] == 0.4

    def constant(batch):
        return {"probabilities": np.tile([1.0, 0, 0, 0], (len(batch), 1))}

    flat = robustness_card(constant, accuracy, images, labels, "label", seed=7)
    assert flat["clean"] == 0.25 and all(entry["retained"] == 1.0 for entry in flat["families"].values())


def test_card_sees_the_same_perturbation_per_image_whatever_the_batching():
    images = np.stack([scene(24)] * 3)
    seen = []

    def recording(batch):
        seen.append(batch.copy())
        return {"probabilities": np.ones((len(batch), 1))}

    robustness_card(recording, accuracy, images, np.zeros(3, int), "label", seed=1, families=["clutter"])
    batch = np.concatenate(seen)
    assert len(batch) == 3 * 6
    # The same picture three times, but each image has its own seed, so its own noise.
    assert not np.array_equal(batch[3], batch[4])


# === Runs and exports ===
def read_card(folder):
    card = json.loads((folder / "robustness.json").read_text())
    assert (folder / "robustness.png").is_file()
    return card


@pytest.mark.slow
def test_classify_run_writes_the_card_and_the_export_reproduces_it(cli, class_folder, tmp_path):
    code, out, err = cli("run", "classify", "--data", class_folder, "--output", tmp_path / "run",
                         "--export-dir", tmp_path / "models", *FAST)
    assert code == 0, err
    assert f"robustness:    {tmp_path / 'run' / 'robustness.json'}" in out
    card = read_card(tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert card["task"] == "classify" and card["metric"] == "accuracy" and card["images"] == 6
    assert card["clean"] == pytest.approx(metrics["val_accuracy"], abs=1e-6)
    assert set(card["families"]) == set(FAMILIES) and card["not_applicable"] == {}
    assert card["families"]["viewpoint"]["severities"][0]["rotation_degrees"] == 5

    code, out, err = cli("evaluate", tmp_path / "models" / "classify" / "1", "--data", class_folder,
                         "--robustness", "--json", "--report-dir", tmp_path / "report")
    assert code == 0, err
    from_export = json.loads(out)["robustness"]
    assert from_export == read_card(tmp_path / "report")
    assert from_export["clean"] == card["clean"]
    for family in FAMILIES:
        assert from_export["families"][family]["metric"] == card["families"][family]["metric"]

    code, out, err = cli("evaluate", tmp_path / "models" / "classify" / "1", "--data", class_folder,
                         "--robustness", "--report-dir", tmp_path / "report2")
    assert code == 0 and "retained" in out and "occlusion" in out


def test_bad_robustness_settings_are_one_line_errors(cli, class_folder):
    code, _, err = cli("run", "classify", "--data", class_folder, "--set", "evaluate.robustness_images=0")
    assert code == 2 and "evaluate.robustness_images" in err and "Traceback" not in err
    code, _, err = cli("run", "classify", "--data", class_folder, "--set", "evaluate.robustness=sometimes")
    assert code == 2 and "evaluate.robustness" in err and len(err.strip().splitlines()) == 1


def test_export_card_refuses_data_labelled_differently(cli, class_folder, tmp_path):
    code, _, err = cli("run", "classify", "--data", class_folder, "--output", tmp_path / "run",
                       "--export-dir", tmp_path / "models", "--no-robustness", *FAST)
    assert code == 0, err
    assert not (tmp_path / "run" / "robustness.json").exists()
    (class_folder / "green").rename(class_folder / "yellow")
    with pytest.raises(DataError, match="class_names"):
        export_card(tmp_path / "models" / "classify" / "1", class_folder, tmp_path / "report")


@pytest.mark.slow
def test_segment_run_card_moves_masks_and_scores_mean_iou(tmp_path):
    make_pairs(tmp_path / "data", count=10, size=(32, 32), values=(0, 1, 2))
    result = imgpipe.run("segment", ["train.epochs=1", "train.batch_size=4", "train.verbose=0",
                                     "data.image_size=32", f"train.run_dir={tmp_path / 'run'}",
                                     "export.enabled=false", "evaluate.robustness_images=2"], data=tmp_path / "data")
    card = read_card(result.run_dir)
    assert card["metric"] == "mean_iou" and card["images"] == 2
    assert all(0.0 <= value <= 1.0 for entry in card["families"].values() for value in entry["metric"])


@pytest.mark.slow
def test_detect_run_card_scores_map50(tmp_path):
    make_detection_folder(tmp_path / "shapes", images=12, size=64, seed=3)
    result = imgpipe.run("detect", ["train.epochs=1", "train.batch_size=4", "train.verbose=0",
                                    "data.image_size=64", f"train.run_dir={tmp_path / 'run'}",
                                    "export.enabled=false"], data=tmp_path / "shapes")
    card = read_card(result.run_dir)
    assert card["metric"] == "map50" and card["images"] == result.metrics["images_validation"]
    assert all(0.0 <= value <= 1.0 for entry in card["families"].values() for value in entry["metric"])


@pytest.mark.slow
def test_colorize_card_leaves_out_illumination_and_says_why(tmp_path):
    make_landscapes_folder(tmp_path / "photos", images=8, size=32, seed=1)
    result = imgpipe.run("colorize", ["train.epochs=1", "train.batch_size=4", "train.verbose=0",
                                      "data.image_size=32", f"train.run_dir={tmp_path / 'run'}",
                                      "export.enabled=false"], data=tmp_path / "photos")
    card = read_card(result.run_dir)
    assert card["metric"] == "psnr" and "illumination" not in card["families"]
    assert "colour" in card["not_applicable"]["illumination"]
    assert card["clean"] > 10 and len(card["families"]) == 4


def test_stylize_card_says_it_does_not_apply(tmp_path):
    from imgpipe.tasks.stylize.task import StylizeTask

    card = run_card(StylizeTask(), model=None, data=None, recipe=None, decoder=None, run_dir=tmp_path)
    written = json.loads((tmp_path / "robustness.json").read_text())
    assert written == card and card["applies"] is False and "style" in card["reason"]
    assert not (tmp_path / "robustness.png").exists()
