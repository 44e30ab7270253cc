"""Suspect boxes: an overlooked object, a swapped class and a misplaced box are ranked first; a detection run
ranks its validation images."""

import csv
import types

import numpy as np

import imgpipe
from imgpipe.data.demo import make_detection_folder
from imgpipe.engine import runner
from imgpipe.engine.pipeline import FileDecoder
from imgpipe.engine.scoring import split_examples
from imgpipe.tasks.detect.task import DetectionTask
from imgpipe.understand.suspect_boxes import BoxRanking, box_quality
from imgpipe.understand.suspect_labels import cross_validation_report


class KnownBoxes:
    """A detection task whose model found every true box, sure of each; three annotations planted wrong."""

    def __init__(self, count=40):
        rng = np.random.default_rng(0)
        self.given, self.predicted = [], []
        for index in range(count):
            corner = rng.integers(0, 100, 2)
            box, kind = np.concatenate([corner, corner + 40])[None].astype(float), index % 2
            stray = np.concatenate([corner + 50, corner + 60])[None].astype(float)  # unsure, of the other class
            self.predicted.append((np.concatenate([box, stray]), np.array([rng.uniform(0.96, 0.999), 0.05]),
                                   np.array([kind, 1 - kind])))
            self.given.append((box, np.array([kind])))
        self.given[3] = (np.zeros((0, 4)), np.zeros(0, int))  # the object overlooked
        self.given[7] = (self.given[7][0], 1 - self.given[7][1])  # the other class given
        self.given[11] = (self.given[11][0] + 30, self.given[11][1])  # the box drawn beside the object

    def box_evidence(self, model, images, targets, metadata):
        return self.given, self.predicted

    def export_metadata(self, data, recipe):
        return {"class_names": list(data.class_names)}


def test_the_planted_box_mistakes_rank_first_and_the_csv_lists_every_image(tmp_path):
    task = KnownBoxes()
    scores, _, _ = box_quality(task, None, None, None, {"class_names": ["cat", "dog"]})
    assert set(np.argsort(scores)[:3].tolist()) == {3, 7, 11} and scores[[3, 7, 11]].max() < 0.5 < np.delete(
        scores, [3, 7, 11]).min()
    ranking = BoxRanking(task, types.SimpleNamespace(class_names=["cat", "dog"]), None, count=40)
    ranking.add(None, np.arange(40), np.zeros((40, 150, 150, 3), np.uint8), None)
    ranking.write(types.SimpleNamespace(paths=[f"{index}.jpg" for index in range(40)]), tmp_path)
    rows = list(csv.DictReader((tmp_path / "suspect_labels.csv").open()))
    assert len(rows) == 40 and {row["file"] for row in rows[:3]} == {"3.jpg", "7.jpg", "11.jpg"}
    assert next(row for row in rows if row["file"] == "3.jpg")["given_boxes"] == "0"
    assert all(row["sure_boxes"] == "1" for row in rows)
    assert (tmp_path / "suspect_labels.png").is_file()


class SureOfTheTruth(DetectionTask):
    """Detection whose model is sure of exactly the true boxes, and on one image of one more: an object the
    annotator overlooked."""

    def box_evidence(self, model, images, targets, metadata):
        given = [self.truth(image, target) for image, target in zip(images, targets)]
        found = []
        for image, (boxes, ids) in zip(images, given):
            if model.sees_more(image):
                boxes, ids = np.concatenate([boxes, [[0, 0, 8, 8]]]), np.concatenate([ids, [0]])
            found.append((boxes, np.full(len(ids), 0.99), ids))
        return given, found


def test_cross_validation_judges_every_image_s_boxes_with_the_model_that_held_it_out(tmp_path, monkeypatch):
    make_detection_folder(tmp_path / "data", images=24, size=64, seed=3)
    recipe = imgpipe.load_recipe("detect").update(**{"data.path": str(tmp_path / "data"), "data.image_size": [64, 64],
                                                      "train.suspect_labels": "cross_validation", "train.folds": 3})
    task = SureOfTheTruth()
    data = task.read_data(recipe)
    planted = data.val.paths[1]
    decoder = FileDecoder(data.image_size, recipe.data.max_pixels, task.load_target(data), task.target_signature(data))
    held_out = []

    def fold_run(fold_recipe, task_data, output):
        held_out.append(set(task_data.val.paths))
        # the image with the overlooked object is recognised by its pixels, as a real model would see it
        overlooked = None
        if planted in task_data.val.paths:
            overlooked = split_examples(_one(task_data.val, planted), data.image_size, 1, decoder)[0][0]
        return types.SimpleNamespace(model=types.SimpleNamespace(
            sees_more=lambda image: overlooked is not None and np.array_equal(image, overlooked)))

    monkeypatch.setattr(runner, "run", fold_run)
    cross_validation_report(task, data, recipe, decoder, tmp_path)
    assert set().union(*held_out) == set(data.train.paths + data.val.paths) and sum(map(len, held_out)) == 24
    rows = list(csv.DictReader((tmp_path / "suspect_labels.csv").open()))
    assert len(rows) == 24 and rows[0]["file"] == planted
    assert int(rows[0]["sure_boxes"]) == int(rows[0]["given_boxes"]) + 1
    assert float(rows[0]["score"]) < 0.5 < min(float(row["score"]) for row in rows[1:])


def _one(image_set, path):
    index = image_set.paths.index(path)
    return type(image_set).from_files([path], np.asarray(image_set.targets)[[index]])
