"""What every benchmark needs: a folder of real JPEGs, the machine's description, a ratio table.

The benchmarks compare imgpipe with hand-written Keras on the same machine in
the same run, so only ratios are meant to travel between machines.

Example:
    >>> folder = jpeg_class_folder("/tmp/bench/jpegs", count=800)
    >>> print_table("input pipeline", ["pipeline", "images/s", "ratio"], rows)
"""

import os
import pathlib
import platform
import resource
import shutil
import sys
import time

RACCOON_IMAGES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "raccoon" / "images"


def jpeg_class_folder(root, count, classes=2, source=RACCOON_IMAGES):
    """`root/class_<k>/<n>.jpg`: `count` real JPEGs of mixed sizes, the source photos repeated as needed.

    Reuses the folder when it already holds `count` images; exits with a message when the
    source folder (../shared/data/raccoon/images) is absent.
    """
    root = pathlib.Path(root)
    photos = sorted(pathlib.Path(source).glob("*.jpg"))
    if not photos:
        sys.exit(f"benchmark needs real JPEGs in {source}; that folder is absent or empty")
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) == count:
        return root
    shutil.rmtree(root, ignore_errors=True)
    for index in range(count):
        folder = root / f"class_{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photos[index % len(photos)], folder / f"{index:06d}.jpg")
    return root


def machine_summary():
    """One line: CPU model, cores usable by this process, Python, TensorFlow and Keras versions."""
    import keras
    import tensorflow as tf

    model = platform.processor() or platform.machine()
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return (f"{model}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}")


def images_per_second(dataset, batches, warmup=2):
    """Images per second delivered by iterating `dataset` (of (images, targets) batches).

    The first `warmup` batches (graph tracing, thread pools, the first file reads) are
    not timed; `batches` more are.
    """
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        images += int(batch[0].shape[0])
    return images / (time.perf_counter() - start)


def peak_rss_mib():
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_table(title, header, rows):
    """Prints a plain, aligned table; numbers are right-aligned."""
    cells = [[str(cell) for cell in header]] + [[_format(cell) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    print(f"\n{title}")
    for number, row in enumerate(cells):
        print("  " + "  ".join(cell.rjust(width) if number and _is_number(cell) else cell.ljust(width)
                               for cell, width in zip(row, widths)))
        if number == 0:
            print("  " + "  ".join("-" * width for width in widths))


def _format(cell):
    if isinstance(cell, float):
        return f"{cell:.2f}" if abs(cell) < 100 else f"{cell:.0f}"
    return str(cell)


def _is_number(text):
    try:
        float(text.rstrip("x%"))
    except ValueError:
        return False
    return True
