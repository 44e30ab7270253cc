"""Tasks, registered by recipe name: each says only what is special about it.

Example:
    >>> task = TASKS.get("classify")()
"""

from imgpipe.registry import Registry

TASKS = Registry("task")

from imgpipe.tasks import classification, colorize, detection, segmentation, stylize  # noqa: E402,F401  (registers the tasks)
