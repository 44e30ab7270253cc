"""Errors a user can cause, kept apart from bugs.

The CLI turns these into one line and exit status 2; anything else is a bug
and keeps its traceback. Every message names the file or recipe key at fault.
"""


class ImgpipeError(Exception):
    """Base class of the errors a user can cause and fix."""


class RecipeError(ImgpipeError):
    """A recipe key, type or value is wrong; the message names the key."""


class DataError(ImgpipeError):
    """The data cannot be trained on; the message names the file or folder."""


class ExportError(ImgpipeError):
    """An export cannot be read or written; the message names the folder."""


class OutputError(ImgpipeError):
    """An output folder cannot be written (full, read-only, not permitted); the message names it."""


class InterruptedWrite(OutputError):
    """A write failed part-way (disk full); libraries may still hold the half-written files open."""
