"""The package's layering, read from the source: the engine imports no task and no tool about a model.

`imgpipe/engine/` finds tasks through the registry (a package scan), so a
new task needs no engine edit; `imgpipe/models/` is shared by tasks and must
not depend on one either.
"""

import ast
import pathlib

import pytest

import imgpipe

PACKAGE = pathlib.Path(imgpipe.__file__).parent


def imported_modules(path, package_root=PACKAGE):
    """Every module an `import` or `from ... import` in the file names, relative imports resolved."""
    package = ".".join(path.relative_to(package_root.parent).parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.append(name)
            found += [f"{name}.{alias.name}" for alias in node.names]
    return found


def forbidden_imports(folder, forbidden, package_root=PACKAGE):
    return sorted(f"{path.relative_to(package_root)}: {name}"
                  for path in (package_root / folder).rglob("*.py")
                  for name in imported_modules(path, package_root)
                  if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden))


@pytest.mark.parametrize("folder, forbidden", [
    ("engine", ("imgpipe.tasks", "imgpipe.understand", "imgpipe.cli", "imgpipe.api")),
    ("models", ("imgpipe.tasks", "imgpipe.understand")),
    ("data", ("imgpipe.tasks", "imgpipe.understand", "imgpipe.engine")),
])
def test_lower_layers_do_not_import_higher_ones(folder, forbidden):
    assert forbidden_imports(folder, forbidden) == []


def test_the_walk_sees_relative_and_plain_imports(tmp_path):
    """The check itself: absolute, relative and plain imports of a task are all found."""
    package_root = tmp_path / "imgpipe"
    (package_root / "engine").mkdir(parents=True)
    (package_root / "engine" / "_layering_probe.py").write_text(
        "from imgpipe.tasks.classify import task\nfrom ..understand import check\nimport imgpipe.tasks\nimport os\n")
    found = forbidden_imports("engine", ("imgpipe.tasks", "imgpipe.understand"), package_root)
    assert found == [
        "engine/_layering_probe.py: imgpipe.tasks",
        "engine/_layering_probe.py: imgpipe.tasks.classify",
        "engine/_layering_probe.py: imgpipe.tasks.classify.task",
        "engine/_layering_probe.py: imgpipe.understand",
        "engine/_layering_probe.py: imgpipe.understand.check",
    ]
