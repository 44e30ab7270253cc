"""A sixth task is one package: found by the registry's scan, run by the engine with no edit anywhere else.

The package below is written into a temporary folder that joins
`imgpipe.tasks`' search path, exactly as a folder in `imgpipe/tasks/` would.
It labels photos dark or bright by their mean grey, its own recipe key says
where the line is, and it registers its own model builder.
"""

import json
import textwrap

import numpy as np
import pytest
from PIL import Image

import imgpipe
import imgpipe.tasks
from imgpipe.engine.recipe import describe_keys, load_recipe, recipe_names
from imgpipe.engine.registry import TASKS
from imgpipe.models import MODELS

PACKAGE = '''
"""Brightness: dark or bright, from a folder of unlabelled photos."""

import dataclasses

from imgpipe.engine.recipe import setting
from imgpipe.engine.registry import TASKS, TaskSpec
from imgpipe.tasks.classify.settings import ClassifySettings


@dataclasses.dataclass
class BrightnessSettings(ClassifySettings):  # a classifier: its keys, and one more
    threshold: float = setting(128.0, "mean grey above which a photo is bright", min=0.0, max=255.0)


TASKS.add(TaskSpec(name="brightness", description="dark or bright photos",
                   task_class="imgpipe.tasks.brightness.task:BrightnessTask", settings=BrightnessSettings))
'''

TASK = '''
import numpy as np

from imgpipe.data.folders import list_images
from imgpipe.data.images import load_image
from imgpipe.data.sources import ImageSet, TaskData
from imgpipe.data.split import stratified_split
from imgpipe.models import MODELS
from imgpipe.models.classifiers import build_small_cnn
from imgpipe.tasks.classify.task import ClassificationTask

MODELS.register("brightness_cnn", task="brightness", family="from scratch")(build_small_cnn)


class BrightnessTask(ClassificationTask):
    name = "brightness"

    def read_data(self, recipe):
        paths = list_images(recipe.data.path)
        labels = np.array([int(load_image(path).mean() > recipe.options.threshold) for path in paths], np.int32)
        train, val = stratified_split(labels, recipe.data.val_split, recipe.data.seed)
        subset = lambda index: ImageSet.from_files([paths[i] for i in index], labels[index])
        return TaskData(train=subset(train), val=subset(val), class_names=["dark", "bright"],
                        image_size=list(recipe.data.image_size), source=str(recipe.data.path))
'''


@pytest.fixture
def brightness_task(tmp_path, monkeypatch):
    package = tmp_path / "more_tasks" / "brightness"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    (package / "task.py").write_text(textwrap.dedent(TASK))
    entries = {name: TASKS._entries[name] for name in TASKS.names()}  # scanned before the new folder joins
    monkeypatch.setattr(imgpipe.tasks, "__path__", [*imgpipe.tasks.__path__, str(package.parent)])
    monkeypatch.setattr(TASKS, "_scanned", False)
    yield
    TASKS._entries.clear()
    TASKS._entries.update(entries)
    MODELS._entries.pop("brightness_cnn", None)


@pytest.mark.slow
def test_a_new_task_package_is_found_and_runs_end_to_end(brightness_task, tmp_path):
    assert "brightness" in TASKS.names() and "brightness" in recipe_names()
    assert ("brightness.threshold", 128.0) in [(key, default) for key, default, _ in describe_keys()]
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(16):
        grey = 40 + 12 * index  # 40 .. 220: half of them above the threshold of 130
        Image.fromarray(np.full((16, 16, 3), grey, np.uint8)).save(photos / f"{index}.png")
    recipe = load_recipe("brightness", ["brightness.threshold=130", "model.name=brightness_cnn"])
    result = imgpipe.run(recipe, ["train.epochs=1", "train.batch_size=4", "train.verbose=0", "data.image_size=16",
                                  f"train.run_dir={tmp_path / 'run'}", f"export.root={tmp_path / 'sm'}"],
                         data=str(photos))
    assert result.metrics["images_train"] + result.metrics["images_validation"] == 16
    assert result.recipe.to_dict()["brightness"] == {"label_smoothing": 0.1, "top_k": 5, "threshold": 130.0}
    metadata = json.loads((result.export_path / "assets.extra" / "imgpipe.json").read_text())
    assert metadata["task"] == "brightness" and metadata["class_names"] == ["dark", "bright"]
    assert json.loads((tmp_path / "run" / "robustness.json").read_text())["metric"] == "accuracy"
    answers = imgpipe.predict(result.export_path, [photos / "0.png"])
    assert answers[0]["predictions"][0]["class_name"] in ("dark", "bright")
