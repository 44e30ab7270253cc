"""One scoring path: a figure means the same in metrics.json, in `imgpipe evaluate` and on the robustness card.

Each run below is scored three ways on the same validation images: training's
final metrics (the Keras model on the pipeline's batches), `imgpipe.evaluate`
on the export (a folder holding just those files, through `serving_default`)
and the robustness card's clean column. Images are stored at the model's
size, so decoding is the only difference between the paths, and training and
serving decode identically; the three must agree exactly.
"""

import json
import shutil

import pytest

import imgpipe
from imgpipe.engine.registry import TASKS
from tests.data.test_masks import make_pairs

FAST = ["train.epochs=2", "train.verbose=0", "evaluate.robustness_images=64"]


def validation_files(result):
    """The files of the run's validation split, read again with the run's recipe (the split is seeded)."""
    return TASKS.get(result.recipe.task)().read_examples(result.recipe).val.paths


@pytest.mark.slow
def test_classify_scores_agree_across_training_evaluate_and_the_card(class_folder, tmp_path):
    result = imgpipe.run("classify", FAST + ["train.batch_size=8", "data.image_size=16",
                                             f"train.run_dir={tmp_path / 'run'}", f"export.root={tmp_path / 'sm'}"],
                         data=class_folder)
    held_out = tmp_path / "held_out"
    for path in validation_files(result):
        target = held_out / path.split("/")[-2] / path.split("/")[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    evaluated = imgpipe.evaluate(result.export_path, held_out, report_dir=tmp_path / "report")
    card = json.loads((tmp_path / "run" / "robustness.json").read_text())
    assert evaluated["images"] == result.metrics["images_validation"] == card["images"] == 6
    assert evaluated["accuracy"] == result.metrics["val_accuracy"]
    assert card["clean"] == pytest.approx(result.metrics["val_accuracy"], abs=1e-6)  # the card rounds to 6 places
    assert evaluated["recall/red"] == result.metrics["val_recall/red"]


@pytest.mark.slow
def test_segment_scores_agree_across_training_evaluate_and_the_card(tmp_path):
    root = make_pairs(tmp_path / "pairs", count=10, size=(32, 32), image_ext=".png")
    result = imgpipe.run("segment", FAST + ["train.batch_size=4", "data.image_size=32", "model.name=unet",
                                            f"train.run_dir={tmp_path / 'run'}", f"export.root={tmp_path / 'sm'}"],
                         data=str(root))
    held_out = tmp_path / "held_out"
    for path in validation_files(result):
        name = path.split("/")[-1]
        for folder, file_name in (("images", name), ("masks", name)):
            (held_out / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(root / folder / file_name, held_out / folder / file_name)
    evaluated = imgpipe.evaluate(result.export_path, held_out, report_dir=tmp_path / "report")
    card = json.loads((tmp_path / "run" / "robustness.json").read_text())
    assert evaluated["images"] == result.metrics["images_validation"] == card["images"] == 2
    assert evaluated["mean_iou"] == pytest.approx(result.metrics["val_mean_iou"], abs=1e-12)
    assert card["clean"] == pytest.approx(result.metrics["val_mean_iou"], abs=1e-6)
    assert evaluated["pixel_accuracy"] == pytest.approx(result.metrics["val_pixel_accuracy"], abs=1e-12)
