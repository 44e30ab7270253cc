"""Suspect masks: a wrong mask scores lowest, with the share of its pixels the model disputes; a segmentation
run ranks its masks out-of-fold."""

import csv
import types

import numpy as np
import pytest
from PIL import Image

import imgpipe
from imgpipe.engine import runner
from imgpipe.engine.pipeline import FileDecoder
from imgpipe.tasks.segment.task import SegmentationTask
from imgpipe.understand.suspect_labels import cross_validation_report, report_after_training
from imgpipe.understand.suspect_masks import mask_quality
from tests.data.test_masks import make_pairs


class BandSegmenter:
    """Class k where the red channel is 80 * k, 0.9 sure: the bands `make_pairs` draws."""

    def __call__(self, images, training=False):
        classes = np.clip(np.round(np.asarray(images)[..., 0] / 80), 0, 2).astype(int)
        return np.where(classes[..., None] == np.arange(3), 0.9, 0.05)


def test_a_mask_with_a_wrong_region_scores_lowest_and_its_disputed_share_is_counted():
    bands = np.repeat(np.arange(3), 4)[None, :].repeat(6, axis=0)  # 6 x 12: classes 0 | 1 | 2
    images = np.stack([bands * 80, bands * 0, bands * 0], -1)[None].repeat(4, axis=0).astype(np.uint8)
    masks = bands[None].repeat(4, axis=0).copy()
    masks[2, :, 8:] = 0  # the last band given the wrong class: 24 of 72 pixels
    masks[3, 0, :] = 255  # an ignored row, judged nowhere
    scores, disputed, predicted = mask_quality(BandSegmenter(), images, masks, ignore_index=255, batch_size=3)
    assert scores.argmin() == 2 and scores[2] < 0.5 < scores[[0, 1, 3]].min()
    assert disputed.tolist() == [0.0, 0.0, 24 / 72, 0.0]
    assert (predicted == bands).all()


def test_cross_validation_judges_every_mask_with_the_model_that_held_it_out(tmp_path, monkeypatch):
    make_pairs(tmp_path / "data", count=12, size=(32, 48), values=(0, 1, 2))
    mask = np.asarray(Image.open(tmp_path / "data" / "masks" / "5.png"))
    Image.fromarray(mask[:, ::-1].copy()).save(tmp_path / "data" / "masks" / "5.png")  # bands mirrored
    recipe = imgpipe.load_recipe("segment").update(**{"data.path": str(tmp_path / "data"), "data.image_size": [32, 48],
                                                       "train.suspect_labels": "cross_validation", "train.folds": 3})
    task = SegmentationTask()
    data = task.read_data(recipe)
    decoder = FileDecoder(data.image_size, recipe.data.max_pixels, task.load_target(data), task.target_signature(data))
    trained = []

    def fold_run(fold_recipe, task_data, output):  # a model that knows the bands, instead of three trainings
        trained.append((set(task_data.train.paths), set(task_data.val.paths), fold_recipe.export.enabled))
        return types.SimpleNamespace(model=BandSegmenter())

    monkeypatch.setattr(runner, "run", fold_run)
    cross_validation_report(task, data, recipe, decoder, tmp_path)
    everything = set(data.train.paths + data.val.paths)
    assert [train | val == everything and not train & val for train, val, _ in trained] == [True] * 3
    assert set().union(*(val for _, val, _ in trained)) == everything and not any(e for _, _, e in trained)
    rows = list(csv.DictReader((tmp_path / "suspect_labels.csv").open()))
    assert len(rows) == 12 and rows[0]["file"].endswith("/5.jpg") and rows[0]["mask"].endswith("/5.png")
    assert float(rows[0]["disputed_pixels"]) > 0.5 > max(float(row["disputed_pixels"]) for row in rows[1:])
    assert (tmp_path / "suspect_labels.png").is_file()


def test_a_multi_worker_job_ranks_its_validation_masks_instead_of_cross_validating(tmp_path, monkeypatch):
    make_pairs(tmp_path / "data", count=10, size=(32, 48), values=(0, 1, 2))
    recipe = imgpipe.load_recipe("segment").update(**{"data.path": str(tmp_path / "data"), "data.image_size": [32, 48],
                                                       "train.suspect_labels": "cross_validation"})
    task = SegmentationTask()
    data = task.read_data(recipe)
    decoder = FileDecoder(data.image_size, recipe.data.max_pixels, task.load_target(data), task.target_signature(data))
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["localhost:1", "localhost:2"]}, '
                                    '"task": {"type": "worker", "index": 0}}')
    monkeypatch.setattr(runner, "run", lambda *args, **kwargs: pytest.fail("a fold was trained in a cluster"))
    report_after_training(task, BandSegmenter(), data, recipe, decoder, tmp_path)
    rows = list(csv.DictReader((tmp_path / "suspect_labels.csv").open()))
    assert sorted(row["file"] for row in rows) == sorted(data.val.paths)
