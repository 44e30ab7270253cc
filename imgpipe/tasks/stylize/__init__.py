"""Style transfer: a feed-forward network that renders any photo in the style of one painting."""

from imgpipe.engine.registry import TASKS, TaskSpec
from imgpipe.tasks.stylize.settings import MOVED_KEYS, StylizeSettings

TASKS.add(TaskSpec(
    name="stylize",
    description="fast style transfer from a folder of photos and one style image",
    settings=StylizeSettings,
    moved_keys=MOVED_KEYS,
    task_class="imgpipe.tasks.stylize.task:StylizeTask",
))
