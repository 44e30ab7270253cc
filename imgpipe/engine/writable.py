"""Output folders that cannot take the run: refused up front, or stopped cleanly when they fill up.

A read-only or forbidden output folder is found before any data is read, by
creating (and removing) a hidden probe folder in it. A disk that fills up
mid-run surfaces deep inside h5py, TensorFlow or the SavedModel writer with
their own messages; `output_guard` turns those into one line naming the folder.
The run folder keeps what was written, so `--resume` can continue once there
is space again; the data folder is never written to.

Example:
    >>> require_writable("runs/classify/demo", "--output")
    >>> with output_guard("runs/classify/demo", "--output"):
    ...     trainer.fit(...)
"""

import contextlib
import errno
import os
import pathlib
import tempfile

from imgpipe.errors import InterruptedWrite, OutputError

# Failures only a write can cause; permission errors are left out because reading
# a user's file can raise them too (and `require_writable` catches them up front).
WRITE_ERRNOS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
                errno.EROFS: "Read-only file system", errno.EFBIG: "File too large"}


def require_writable(folder, option):
    """Raises `OutputError` unless a folder can be made inside `folder` (or its nearest existing parent)."""
    folder = pathlib.Path(folder)
    existing = next((parent for parent in (folder, *folder.parents) if parent.exists()), pathlib.Path("."))
    if not existing.is_dir():
        raise OutputError(f"{folder}: {existing} is a file, not a folder; choose another {option}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".imgpipe-write-test-", dir=existing))
    except OSError as error:
        raise OutputError(f"{folder}: cannot write here ({error.strerror or error}); choose another {option}") \
            from None


@contextlib.contextmanager
def output_guard(folder, option, then=""):
    """Turns a failed write (full disk, read-only, quota) inside the block into an `InterruptedWrite` naming `folder`.

    `then` is appended to the message: what the user can do afterwards.
    """
    try:
        yield
    except OutputError:
        raise
    except Exception as error:  # h5py, TensorFlow and the OS each raise their own types for one cause
        reason = write_failure(error)
        if reason is None:
            raise
        raise InterruptedWrite(f"{folder}: cannot write ({reason}); free some space or choose another {option}"
                               + (f", then {then}" if then else "")) from None


def write_failure(error):
    """The reason if `error` is a failed write (by errno or the OS message TensorFlow and h5py pass on), else None."""
    if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
        return WRITE_ERRNOS[error.errno]
    text = str(error)
    return next((reason for reason in WRITE_ERRNOS.values() if reason in text), None)


def write_atomically(path, write):
    """`write(partial)` beside `path`, then renamed to it: a kill mid-write leaves no half file at `path`.

    Example:
        >>> write_atomically(run_dir / "plan.json", lambda partial: partial.write_text("{}"))
    """
    path = pathlib.Path(path)
    partial = path.with_name(f".partial.{path.name}")
    write(partial)
    os.replace(partial, path)
