"""Suspect labels: planted wrong labels are found, ranked first, and the user's files are left as they were."""

import csv

import numpy as np
import pytest

import imgpipe
from imgpipe.understand.suspect_labels import rank_suspects
from tests.conftest import COLOURS, write_image

PLANTED = {("val", "blue", "red_0.png"): "red", ("val", "blue", "red_1.png"): "red",
           ("val", "red", "green_0.png"): "green"}


def test_confident_learning_flags_the_images_the_model_disputes_most_suspect_first():
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.95, 0.05], [0.1, 0.9], [0.2, 0.8], [0.15, 0.85],
                              [0.3, 0.7], [0.97, 0.03]])
    suspects = rank_suspects(labels, probabilities)
    assert [s.index for s in suspects] == [7, 6]  # the label's probability: 0.03, then 0.3
    assert (suspects[0].given, suspects[0].suggested, suspects[0].score) == (1, 0, 0.03)


@pytest.fixture
def mislabelled_folder(tmp_path):
    """train/ + val/ of three flat colours; three validation images carry another colour's label."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 6)):
        for name, colour in COLOURS.items():
            for index in range(count):
                write_image(tmp_path / "data" / split / name / f"{name}_{index + 2}.png",
                            np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255))
    for (split, folder, file), colour in PLANTED.items():
        write_image(tmp_path / "data" / split / folder / file, COLOURS[colour])
    return tmp_path / "data"


def test_a_run_ranks_the_planted_labels_first_and_moves_nothing(mislabelled_folder, tmp_path):
    before = sorted((path, path.stat().st_mtime_ns) for path in mislabelled_folder.rglob("*"))
    result = imgpipe.run("classify", ["train.epochs=6", "train.batch_size=8", "train.verbose=0",
                                      "data.image_size=16", "evaluate.robustness=false", "export.enabled=false",
                                      f"train.run_dir={tmp_path / 'run'}"], data=mislabelled_folder)
    rows = list(csv.DictReader((result.run_dir / "suspect_labels.csv").open()))
    assert result.metrics["val_accuracy"] >= 0.8  # the model has learnt the colours
    top = {(pathlib_parts(row["file"]), row["suggested_label"]) for row in rows[:len(PLANTED)]}
    assert top == {((split, folder, file), colour) for (split, folder, file), colour in PLANTED.items()}
    assert all(row["given_label"] == pathlib_parts(row["file"])[1] for row in rows)
    assert (result.run_dir / "suspect_labels.png").is_file()
    assert sorted((path, path.stat().st_mtime_ns) for path in mislabelled_folder.rglob("*")) == before


def pathlib_parts(path):
    import pathlib

    return pathlib.Path(path).parts[-3:]


def test_train_suspect_labels_none_ranks_nothing(class_folder, fast_recipe_args):
    result = imgpipe.run("classify", [*fast_recipe_args, "train.suspect_labels=none", "export.enabled=false"],
                         data=class_folder)
    assert not (result.run_dir / "suspect_labels.csv").exists()
