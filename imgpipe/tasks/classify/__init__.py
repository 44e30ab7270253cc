"""Image classification: one class name per image, from class sub-folders or a tfds data set."""

from imgpipe.engine.registry import TASKS, TaskSpec
from imgpipe.tasks.classify.settings import MOVED_KEYS, ClassifySettings

TASKS.add(TaskSpec(
    name="classify",
    description="image classification from class sub-folders",
    settings=ClassifySettings,
    moved_keys=MOVED_KEYS,
    tta_output="per_image",
    task_class="imgpipe.tasks.classify.task:ClassificationTask",
    recognises=lambda path: True,  # any folder of class sub-folders; the last guess
    guess_order=90,
))
