"""Tasks: one package each, named after its recipe, saying only what is special about the task.

A package here registers one `TaskSpec` in its `__init__`; the engine finds
the packages by scanning this folder (`imgpipe.engine.registry.TASKS`), so
adding a task is adding a package and its recipe file in `recipes/`.

Example:
    >>> from imgpipe.engine.registry import TASKS
    >>> task = TASKS.get("classify")()
"""

