"""Name -> object registries: tasks and model builders register themselves.

A recipe refers to things by name; the CLI lists a registry. Nothing is found
by matching file names, and the engine never names a task: the task registry
finds every task by scanning the packages of `imgpipe.tasks` (and the
`imgpipe.tasks` entry-point group, for tasks installed as their own
distribution), each of which adds one `TaskSpec`.

Example:
    >>> MODELS = Registry("model")
    >>> @MODELS.register("tiny")
    ... def build_tiny(): ...
    >>> MODELS.get("tiny") is build_tiny
    True
    >>> TASKS.get("classify")().main_metric
    'val_accuracy'
"""

import dataclasses
import importlib
import importlib.metadata
import pkgutil
import threading
import typing

from imgpipe.errors import RecipeError

TASK_PACKAGE = "imgpipe.tasks"
ENTRY_POINT_GROUP = "imgpipe.tasks"


class Registry:
    """A dictionary of named entries that refuses duplicates and unknown names."""

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}

    def register(self, name, **info):
        """Decorator: registers the decorated object under `name` with extra `info`."""

        def decorate(entry):
            self._add(name, entry, info)
            return entry

        return decorate

    def _add(self, name, entry, info):
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = (entry, info)

    def get(self, name, key="name"):
        """Returns the entry called `name`; `key` is the recipe key named in the error."""
        if name not in self._entries:
            raise RecipeError(
                f"{key}: unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}"
            )
        return self._entries[name][0]

    def info(self, name):
        """Returns the keyword arguments given to `register` for `name`."""
        self.get(name)
        return self._entries[name][1]

    def names(self, **where):
        """Sorted names whose registration info matches every `where` item (or holds it, for a tuple)."""
        def matches(info, key, value):
            found = info.get(key)
            return value in found if isinstance(found, tuple) else found == value

        return sorted(
            name
            for name, (_, info) in self._entries.items()
            if all(matches(info, key, value) for key, value in where.items())
        )

    def __contains__(self, name):
        return name in self._entries


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What the engine knows of a task before importing it (which pulls in TensorFlow).

    Attributes:
        name: the recipe name (`segment`); also the name of the task's recipe section.
        description: one line for `imgpipe recipes`.
        task_class: "module:Class" of the `Task` subclass, imported on first use.
        settings: dataclass of the task's own recipe keys (its section), or None.
        moved_keys: {old dotted key: key in the task's section}, for recipes written
            before the key moved into the task (`train.dice_weight` -> `dice_weight`).
        tta_output: how test-time augmentation (`export.tta`) averages the network's probabilities:
            "per_image" (one answer per image), "per_pixel" (a map at the input's size, mirrored and
            unzoomed back first), or None: it does not apply, and `export.tta` must be none.
        recognises: optional fn(path) -> bool: the folder is laid out for this task
            (`imgpipe check` guesses the task with it); `guess_order` ranks the guesses.
    """

    name: str
    description: str
    task_class: str
    settings: typing.Optional[type] = None
    moved_keys: dict = dataclasses.field(default_factory=dict)
    tta_output: typing.Optional[str] = None
    recognises: typing.Optional[typing.Callable] = None
    guess_order: int = 100

    def load(self):
        """The `Task` subclass itself."""
        module, _, name = self.task_class.partition(":")
        return getattr(importlib.import_module(module), name)


class TaskRegistry(Registry):
    """Tasks by name, found on first use by scanning `imgpipe.tasks` and the entry points.

    `get(name)` returns the task's class, as for any registry; `spec(name)`
    the `TaskSpec` (settings, moved keys, layout recogniser) without importing it.
    """

    def __init__(self):
        super().__init__("task")
        self._scanned = False
        self._lock = threading.RLock()

    def add(self, spec):
        """Registers a `TaskSpec`; a task package calls this in its `__init__`."""
        self._add(spec.name, spec, {"description": spec.description})
        return spec

    def _scan(self):
        with self._lock:
            if self._scanned:
                return
            self._scanned = True
            package = importlib.import_module(TASK_PACKAGE)
            for module in pkgutil.iter_modules(package.__path__, TASK_PACKAGE + "."):
                if module.ispkg:
                    importlib.import_module(module.name)
            for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                if entry_point.name not in self._entries:
                    entry_point.load()

    def spec(self, name, key="task"):
        """The `TaskSpec` of `name` (RecipeError naming `key` if there is none)."""
        self._scan()
        return super().get(name, key)

    def specs(self):
        """Every registered `TaskSpec`, by name."""
        self._scan()
        return [self._entries[name][0] for name in self.names()]

    def get(self, name, key="name"):
        return self.spec(name, key).load()

    def info(self, name):
        self._scan()
        return super().info(name)

    def names(self, **where):
        self._scan()
        return super().names(**where)

    def __contains__(self, name):
        self._scan()
        return super().__contains__(name)


TASKS = TaskRegistry()
