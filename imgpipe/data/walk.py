"""Walking a data folder the way users lay them out: symlinked folders followed, each real folder once.

Example:
    >>> for folder, files in walk_folders("./images"): ...
"""

import os


def walk_folders(top):
    """`os.walk(top)` that follows symlinked folders, each real folder once, hidden ones left out.

    Users link data sets into a folder, so links are followed; a link back up the
    tree would make a plain `os.walk(followlinks=True)` endless.

    Example:
        >>> for folder, files in walk_folders("./images"): ...
    """
    seen = set()
    for folder, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not _is_ancestor(os.path.realpath(os.path.join(folder, d)), real))
        yield folder, sorted(name for name in files if not name.startswith("."))


def _is_ancestor(candidate, folder):
    """Whether `candidate` is `folder` or above it: a link there leads back into the walk."""
    return folder == candidate or folder.startswith(candidate.rstrip(os.sep) + os.sep)
