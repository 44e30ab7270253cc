"""Colorization: greyscale photos to plausible colour, learnt from any folder of colour images."""

from imgpipe.engine.registry import TASKS, TaskSpec

TASKS.add(TaskSpec(
    name="colorize",
    description="colorization of greyscale photos, learnt from colour images",
    task_class="imgpipe.tasks.colorize.task:ColorizeTask",
))
