"""`imgpipe check`: can this folder be trained on, and what in it will hurt the model?

    recipe -> the task's reader (the blocking checks `imgpipe run` makes, same messages)
           -> every file decoded once (unreadable, wrong extension, modes, EXIF)
           -> exact and perceptual-hash duplicates, and those across the split
           -> the task's own findings (class balance, mask values, boxes)

The data is only read. The report is trainable (exit 0) unless the reader
refuses the data or no training image decodes (exit 2); everything else is a
warning a user may accept.

Example:
    >>> report = check_data("../shared/data/raccoon")
    >>> report.task, report.trainable, len(report.leaking)
    ('detect', True, 0)
    >>> print(render(report))
"""

import contextlib
import dataclasses
import logging
import pathlib
import time

from imgpipe.data.duplicates import NEAR_DUPLICATE_BITS, duplicate_groups, leaking
from imgpipe.data.folders import list_images
from imgpipe.data.inventory import mode_counts, other_files, scan_files
from imgpipe.errors import DataError, ImgpipeError
from imgpipe.engine.runner import resolve_recipe
from imgpipe.engine.registry import TASKS

log = logging.getLogger("imgpipe")

LISTED = 10  # files named per finding in the text report (all of them in --json)


@dataclasses.dataclass
class CheckReport:
    """What `check_data` found; `error` is the one-line reason the data cannot be trained on, or None."""

    data: str
    task: str
    error: object = None
    images: int = 0
    unreadable: list = dataclasses.field(default_factory=list)
    extension_mismatches: list = dataclasses.field(default_factory=list)
    modes: dict = dataclasses.field(default_factory=dict)
    exif_rotated: int = 0
    other_files: dict = dataclasses.field(default_factory=dict)
    split: dict = dataclasses.field(default_factory=dict)
    duplicates: list = dataclasses.field(default_factory=list)
    leaking: list = dataclasses.field(default_factory=list)
    reader_warnings: list = dataclasses.field(default_factory=list)
    findings: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def trainable(self):
        return self.error is None

    def to_dict(self):
        return {**dataclasses.asdict(self), "trainable": self.trainable}


def guess_task(path):
    """The first registered task (by `TaskSpec.guess_order`) that recognises the folder's layout."""
    for spec in sorted(TASKS.specs(), key=lambda spec: spec.guess_order):
        if spec.recognises is not None and spec.recognises(path):
            return spec.name
    raise DataError(f"{path}: no task recognises this layout; name one with --task ({', '.join(TASKS.names())})")


def check_data(data, task=None, overrides=(), near_duplicate_bits=NEAR_DUPLICATE_BITS, workers=None, **shortcuts):
    """Inspects the data folder `data` for `task` (guessed from the layout when None).

    Args:
        data: str or path of the data folder, as `imgpipe run --data` takes it.
        task: a registered task name (`imgpipe recipes`), or None to guess it from the layout.
        overrides: recipe `key=value` strings (data.val_split, data.max_pixels, ...).
        near_duplicate_bits: pHash bits two images may differ in and still count as copies
            (negative: exact copies only).
        workers: decoding threads (default: a few more than the CPUs).
        **shortcuts: as `imgpipe.run` takes them (style=...).

    Returns:
        `CheckReport`.

    Raises:
        RecipeError: a recipe key or value is wrong (nothing has been read then).
    """
    started = time.perf_counter()
    task = task or guess_task(data)
    recipe = resolve_recipe(task, overrides, data=str(data), **shortcuts)
    task_object = TASKS.get(task, key="task")()
    report = CheckReport(data=str(data), task=task)
    with captured_warnings() as messages:
        try:
            examples = task_object.read_examples(recipe)
        except ImgpipeError as error:
            report.error, examples = str(error), None
    report.reader_warnings = [m for m in messages if not m.startswith("skipped ")]
    root = pathlib.Path(data)
    paths = list_images(root) if root.is_dir() else []
    files = scan_files(paths, recipe.data.max_pixels, workers)
    report.images = len(files)
    report.unreadable = [f.problem for f in files if f.problem]
    report.extension_mismatches = [f"{f.path}: a {f.format} file named {pathlib.Path(f.path).suffix}"
                                   for f in files if f.extension_mismatch]
    report.modes = mode_counts(files)
    report.exif_rotated = sum(f.exif_rotated for f in files)
    report.other_files = other_files(root, paths) if root.is_dir() else {}
    if examples is not None:
        _check_examples(report, task_object, recipe, examples, files, near_duplicate_bits)
    report.seconds = round(time.perf_counter() - started, 2)
    return report


def _check_examples(report, task_object, recipe, examples, files, near_duplicate_bits):
    split_of = {path: "train" for path in examples.train.paths or ()}
    split_of.update({path: "val" for path in examples.val.paths or ()})
    report.split = {"training": examples.train.count, "validation": examples.val.count}
    undecodable = {f.path for f in files if f.problem}
    if examples.train.is_files and all(path in undecodable for path in examples.train.paths):
        report.error = f"{examples.source}: no training image could be decoded"
        return
    used = [f for f in files if f.path in split_of]
    groups = duplicate_groups(used, near_duplicate_bits)
    report.duplicates = [{"files": g.paths, "exact": g.exact} for g in groups]
    report.leaking = [{"files": g.paths, "exact": g.exact, "splits": [split_of[p] for p in g.paths]}
                      for g in leaking(groups, split_of)]
    try:
        report.findings = task_object.describe_data(recipe, examples)
    except ImgpipeError as error:
        report.error = str(error)


@contextlib.contextmanager
def captured_warnings():
    """Collects the imgpipe logger's warnings (the readers' own messages) instead of printing them."""
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                messages.append(record.getMessage())

    handlers, propagate = log.handlers[:], log.propagate
    log.handlers[:] = [Collect()]
    log.propagate = False
    try:
        yield messages
    finally:
        log.handlers[:] = handlers
        log.propagate = propagate


def render(report):
    """The report as the readable text `imgpipe check` prints."""
    lines = [f"imgpipe check {report.data} (task {report.task}, {report.seconds:.1f} s)", ""]
    row = "  {:<30} {}".format
    decodable = report.images - len(report.unreadable)
    lines.append(row("image files", f"{report.images} ({decodable} decode, {len(report.unreadable)} do not)"))
    if report.split:
        lines.append(row("split", f"{report.split['training']} training, {report.split['validation']} validation"))
    lines.append(row("image modes", ", ".join(f"{name} {count}" for name, count in report.modes.items()) or "-"))
    lines.append(row("EXIF-rotated images", f"{report.exif_rotated} (turned upright when read)"))
    if report.other_files:
        lines.append(row("other files, not read", ", ".join(f"{n} {s}" for s, n in report.other_files.items())))
    lines.append(row("exact or near duplicates", f"{len(report.duplicates)} group(s)"))
    lines.append(row("duplicates across the split", f"{len(report.leaking)} group(s)"
                     + (" (LEAKAGE: validation scores will be too high)" if report.leaking else "")))
    for title, value in report.findings.items():
        if not isinstance(value, list):
            lines.append(row(title, value))
    for title, value in report.findings.items():
        if isinstance(value, list):
            lines += ["", f"{title}:"] + ["  " + line for line in _table(value)]
    for title, items in (("cannot be decoded (skipped in training)", report.unreadable),
                         ("content differs from the extension (read by content)", report.extension_mismatches),
                         ("duplicates across the split", [_group(g) for g in report.leaking]),
                         ("other duplicates", [_group(g) for g in report.duplicates
                                               if g["files"] not in [leak["files"] for leak in report.leaking]]),
                         ("warnings from the reader", report.reader_warnings)):
        if items:
            lines += ["", f"{title} ({len(items)}):"] + [f"  {item}" for item in items[:LISTED]]
            if len(items) > LISTED:
                lines.append(f"  ... and {len(items) - LISTED} more (all of them with --json)")
    lines.append("")
    lines.append(f"error: {report.error}" if report.error else "trainable: yes"
                 + (" (with the warnings above)" if _has_warnings(report) else ""))
    return "\n".join(lines)


def _group(group):
    splits = group.get("splits")
    named = [f"{path} [{split}]" for path, split in zip(group["files"], splits)] if splits else group["files"]
    return ("same bytes: " if group["exact"] else "look alike: ") + ", ".join(named)


def _has_warnings(report):
    return bool(report.unreadable or report.extension_mismatches or report.leaking or report.duplicates
                or report.reader_warnings)


def _table(rows):
    columns = list(rows[0])
    cells = [[str(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    aligned = [" ".join(text.ljust(width) if i == 0 else text.rjust(width)
                        for i, (text, width) in enumerate(zip(line, widths))) for line in [columns] + cells]
    return aligned
