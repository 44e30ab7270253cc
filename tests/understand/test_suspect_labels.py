"""Suspect labels: planted wrong labels are found, ranked first, and the user's files are left as they were."""

import csv
import json

import numpy as np
import pytest

import imgpipe
from imgpipe.data.split import stratified_folds
from imgpipe.understand.suspect_labels import rank_suspects
from tests.conftest import COLOURS, write_image

PLANTED = {("val", "blue", "red_0.png"): "red", ("val", "blue", "red_1.png"): "red",
           ("val", "red", "green_0.png"): "green"}


def test_every_image_is_ranked_and_the_disputed_ones_flagged():
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.95, 0.05], [0.1, 0.9], [0.2, 0.8], [0.15, 0.85],
                              [0.3, 0.7], [0.97, 0.03]])
    suspects = rank_suspects(labels, probabilities)
    # Every image by the probability of its label: 0.03, 0.3, then the rest; the two disputed are flagged.
    assert [s.index for s in suspects[:2]] == [7, 6] and len(suspects) == 8
    assert (suspects[0].given, suspects[0].suggested, suspects[0].score, suspects[0].flagged) == (1, 0, 0.03, True)
    assert suspects[1].flagged and not any(s.flagged for s in suspects[2:])


def write_colours(root, counts, planted, seed):
    """root/<split>/<colour>/*.png: `counts[split]` noisy flat colours per class, plus `planted` wrong labels
    ({(split, folder, file): the colour it really is})."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for name, colour in COLOURS.items():
            for index in range(count):
                write_image(root / split / name / f"{name}_{index + 2}.png",
                            np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255))
    for (split, folder, file), colour in planted.items():
        write_image(root / split / folder / file, COLOURS[colour])


@pytest.fixture(scope="module")
def mislabelled_run(tmp_path_factory):
    """train/ + val/ of three flat colours, three validation images labelled as another colour; a run on it.

    Returns (the data folder, each file's modification time before the run, the run's result).
    """
    import keras

    root = tmp_path_factory.mktemp("mislabelled")
    keras.utils.set_random_seed(0)  # one unseeded start in ten learnt the colours too slowly to pass
    write_colours(root / "data", {"train": 20, "val": 6}, PLANTED, seed=0)
    before = sorted((path, path.stat().st_mtime_ns) for path in (root / "data").rglob("*"))
    result = imgpipe.run("classify", ["train.epochs=8", "train.batch_size=8", "train.verbose=0",
                                      "data.image_size=16", "evaluate.robustness=false", "export.enabled=false",
                                      "train.deterministic=true", f"train.run_dir={root / 'run'}"],
                         data=root / "data")
    return root / "data", before, result


def planted_first(rows):
    top = {(pathlib_parts(row["file"]), row["suggested_label"]) for row in rows[:len(PLANTED)]}
    return top == {((split, folder, file), colour) for (split, folder, file), colour in PLANTED.items()}


def test_a_run_ranks_the_planted_labels_first_and_moves_nothing(mislabelled_run):
    data, before, result = mislabelled_run
    rows = list(csv.DictReader((result.run_dir / "suspect_labels.csv").open()))
    assert result.metrics["val_accuracy"] >= 0.8  # the model has learnt the colours
    assert planted_first(rows)
    assert all(row["given_label"] == pathlib_parts(row["file"])[1] for row in rows)
    assert (result.run_dir / "suspect_labels.png").is_file()
    assert sorted((path, path.stat().st_mtime_ns) for path in data.rglob("*")) == before


def test_check_ranks_a_folder_with_the_run_s_model(mislabelled_run, cli, tmp_path):
    data, _, result = mislabelled_run
    code, out, err = cli("check", "--data", data / "val", "--run", result.run_dir, "--report-dir", tmp_path)
    assert code == 0, err
    assert planted_first(list(csv.DictReader((tmp_path / "suspect_labels.csv").open())))
    assert f"{data / 'val' / 'red' / 'green_0.png'}: red -> green?" in out


def test_check_leaves_out_the_run_s_training_images(mislabelled_run, cli, tmp_path):
    data, _, result = mislabelled_run
    code, _, err = cli("check", "--data", data / "train", "--run", result.run_dir, "--report-dir", tmp_path)
    assert code == 2 and "every image is one the run trained on" in err


def pathlib_parts(path):
    import pathlib

    return pathlib.Path(path).parts[-3:]


def test_train_suspect_labels_none_ranks_nothing(class_folder, fast_recipe_args):
    assert imgpipe.load_recipe("classify").train.suspect_labels == "validation"  # the default ranks
    result = imgpipe.run("classify", [*fast_recipe_args, "train.suspect_labels=none", "export.enabled=false"],
                         data=class_folder)
    assert not (result.run_dir / "suspect_labels.csv").exists()


TRAINING_PLANTED = {("train", "green", "blue_0.png"): "blue", ("train", "red", "blue_1.png"): "blue"}


@pytest.fixture(scope="module")
def cross_validated_run(tmp_path_factory):
    """train/ + val/ of three flat colours, two *training* images labelled as another colour; a 2-fold run."""
    import keras

    root = tmp_path_factory.mktemp("cross_validated")
    keras.utils.set_random_seed(0)
    write_colours(root / "data", {"train": 20, "val": 6}, TRAINING_PLANTED, seed=1)
    result = imgpipe.run("classify", ["train.epochs=8", "train.batch_size=8", "train.verbose=0", "data.image_size=16",
                                      "evaluate.robustness=false", "export.enabled=false", "train.tensorboard=false",
                                      "train.suspect_labels=cross_validation", "train.folds=2", "train.deterministic=true",
                                      f"train.run_dir={root / 'run'}"], data=root / "data")
    return root / "data", result


@pytest.mark.slow
def test_cross_validation_ranks_every_image_and_finds_wrong_training_labels(cross_validated_run):
    data, result = cross_validated_run
    rows = list(csv.DictReader((result.run_dir / "suspect_labels.csv").open()))
    assert len(rows) == 3 * 26 + len(TRAINING_PLANTED)  # both splits, not only validation
    top = {(pathlib_parts(row["file"]), row["suggested_label"]) for row in rows[:len(TRAINING_PLANTED)]}
    assert top == set(TRAINING_PLANTED.items())
    # each fold model held out its own half and trained on the other
    folds = [json.loads((result.run_dir / "folds" / str(k) / "metrics.json").read_text()) for k in (1, 2)]
    assert sorted(f["images_validation"] for f in folds) == [40, 40]
    assert all(f["images_train"] + f["images_validation"] == 80 for f in folds)


@pytest.mark.slow
def test_check_ranks_a_cross_validated_run_s_own_training_images(cross_validated_run, cli, tmp_path):
    data, result = cross_validated_run
    code, out, err = cli("check", "--data", data / "train", "--run", result.run_dir, "--report-dir", tmp_path)
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "suspect_labels.csv").open()))
    assert len(rows) == 3 * 20 + len(TRAINING_PLANTED)
    assert {(pathlib_parts(row["file"]), row["suggested_label"]) for row in rows[:2]} == set(TRAINING_PLANTED.items())


def test_folds_deal_each_class_out_evenly_and_cover_every_item_once():
    labels = np.array([0] * 7 + [1] * 5 + [2] * 2)
    folds = stratified_folds(labels, 3, seed=4)
    assert sorted(np.concatenate(folds).tolist()) == list(range(14))
    for label in (0, 1, 2):
        counts = [int((labels[fold] == label).sum()) for fold in folds]
        assert max(counts) - min(counts) <= 1
    assert [f.tolist() for f in folds] == [f.tolist() for f in stratified_folds(labels, 3, seed=4)]


def raccoon_crops(raccoon, folder, photos=100, side=48):
    """folder/{raccoon,background}/: the first box of each of `photos` real photos, and a patch of the same size
    from the corner farthest from every box (skipped when it would touch one)."""
    from defusedxml import ElementTree
    from PIL import Image

    written = {"raccoon": [], "background": []}
    for xml in sorted((raccoon / "annotations").glob("*.xml"))[:photos]:
        tree = ElementTree.parse(xml)
        image = Image.open(raccoon / "images" / tree.findtext("filename")).convert("RGB")
        boxes = [[int(float(obj.findtext(f"bndbox/{key}"))) for key in ("xmin", "ymin", "xmax", "ymax")]
                 for obj in tree.findall("object")]
        x0, y0, x1, y1 = boxes[0]
        for name, crop in (("raccoon", (x0, y0, x1, y1)), ("background", _free_corner(image.size, boxes, x1 - x0, y1 - y0))):
            if crop is not None:
                path = folder / name / f"{xml.stem}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                image.crop(crop).resize((side, side)).save(path)
                written[name].append(path)
    return written


def _free_corner(size, boxes, width, height):
    width, height = min(width, size[0] // 2), min(height, size[1] // 2)
    for x, y in ((0, 0), (size[0] - width, 0), (0, size[1] - height), (size[0] - width, size[1] - height)):
        if all(x + width <= b[0] or b[2] <= x or y + height <= b[1] or b[3] <= y for b in boxes):
            return x, y, x + width, y + height
    return None


@pytest.mark.slow
def test_planted_labels_in_real_photos_are_found_by_cross_validation(shared_data, tmp_path):
    import keras

    written = raccoon_crops(shared_data / "raccoon", tmp_path / "crops")
    rng = np.random.default_rng(0)
    planted = {}
    for name, other in (("raccoon", "background"), ("background", "raccoon")):
        for path in rng.choice(written[name], 3, replace=False):
            moved = tmp_path / "crops" / other / f"moved_{path.name}"
            path.rename(moved)
            planted[str(moved)] = name
    keras.utils.set_random_seed(0)
    result = imgpipe.run("classify", ["train.epochs=12", "train.batch_size=16", "train.verbose=0", "data.image_size=48",
                                      "model.weights=none", "evaluate.robustness=false", "export.enabled=false",
                                      "train.tensorboard=false", "train.suspect_labels=cross_validation",
                                      "train.folds=2", "train.deterministic=true", f"train.run_dir={tmp_path / 'run'}"], data=tmp_path / "crops")
    rows = list(csv.DictReader((result.run_dir / "suspect_labels.csv").open()))
    top = [row["file"] for row in rows[:2 * len(planted)]]
    # The stated rate, in the first 12 of about 200 rows: every raccoon filed as background. Background
    # patches filed as raccoon are not found reliably by these small from-scratch models (0.85-0.95 accurate):
    # a patch of bark or fence is not unlike the fur around a raccoon.
    assert [path for path, name in planted.items() if name == "raccoon" and path not in top] == [], rows[:12]
