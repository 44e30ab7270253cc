"""Name -> object registries: tasks and model builders register themselves.

A recipe refers to things by name; the CLI lists a registry. Nothing is found
by matching file names.

Example:
    >>> MODELS = Registry("model")
    >>> @MODELS.register("tiny")
    ... def build_tiny(): ...
    >>> MODELS.get("tiny") is build_tiny
    True
"""

from imgpipe.errors import RecipeError


class Registry:
    """A dictionary of named entries that refuses duplicates and unknown names."""

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}

    def register(self, name, **info):
        """Decorator: registers the decorated object under `name` with extra `info`."""

        def decorate(entry):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = (entry, info)
            return entry

        return decorate

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
