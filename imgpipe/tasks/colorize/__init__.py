"""Colorization: greyscale photos to plausible colour, learnt from any folder of colour images."""

from imgpipe.engine.registry import TASKS, TaskSpec
from imgpipe.tasks.colorize.settings import MOVED_KEYS, ColorizeSettings

TASKS.add(TaskSpec(
    name="colorize",
    description="colorization of greyscale photos, learnt from colour images",
    settings=ColorizeSettings,
    moved_keys=MOVED_KEYS,
    task_class="imgpipe.tasks.colorize.task:ColorizeTask",
))
