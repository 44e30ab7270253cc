"""Does a classification run's memory stay bounded when it streams, and what does the in-memory cache cost?

What it measures
    Peak resident memory (RSS) of `imgpipe run classify` on a folder of 10,000
    real JPEGs (the raccoon photos repeated, `common.jpeg_class_folder`) at
    224x224, run as a child process once per `data.cache` setting:

    - none: every pass decodes the files again; nothing is kept.
    - disk: decoded images go to a cache file in the run folder (the kernel's
      page cache, which RSS does not count, holds what it keeps of it).
    - auto: `imgpipe.engine.pipeline.cache_mode` picks memory for a split when its
      count x H x W x 3 bytes fit min(4 GiB, a quarter of physical memory); on
      a machine with 6 GiB or more, all 10,000 x 224 x 224 x 3 bytes = 1436 MiB
      are held in memory. The table says what auto picked here.

    Two references: a child that only imports TensorFlow, Keras and imgpipe
    (the baseline), and a `none` run on 3,000 of the images: if streaming is
    bounded, its peak equals the 10,000-image peak.

    The peak is the kernel's high-water mark of that one child (`os.wait4`'s
    `ru_maxrss`). RSS is also sampled from /proc every 0.2 s and shown at a
    quarter, half and three quarters of the run's wall time, so that a flat
    line can be told from a climbing one (a cache filling up); for `disk`
    the largest size the cache files reached is shown too.

What each run is, and why
    imgpipe run classify --data FOLDER --image-size 224 --epochs 1 --batch-size 64
        --no-export --model memory_probe --set train.patience=0 --set train.verbose=0
        --set augment.viewpoint=none --set augment.illumination=none
        --set augment.occlusion=none --set data.cache=MODE [--set evaluate.robustness=false]
    One epoch reads every image once (the validation split keeps its default
    20%), which is what fills a cache. The whole benchmark has to finish in a
    few minutes on 2 CPU cores, and no registered classifier trains 8,000
    images at 224x224 that fast: small_cnn runs 32-filter convolutions at
    full resolution (183 s for 1,000 images here, half an hour for 10,000),
    strided_cnn trained 80 images/s at 200 px (100 s for 8,000, on a shared CPU),
    and lenet, the cheapest, took 219 s per run (122 s in `model.fit`) on a
    busy machine, about 11 minutes for the three. So the child registers
    `memory_probe`, one stride-4 convolution of 8 filters under imgpipe's
    softmax head (under a million multiply-adds per image), and then runs
    imgpipe's own command line: every step of a run (reading, the tf.data pipeline and its cache,
    `model.fit`, evaluation) is imgpipe's, and the memory above the baseline
    is the pipeline's rather than a model's activations. `--model lenet`
    (or any registered classifier) runs the installed `imgpipe` with that
    model instead. Augmentation is off: it changes pixels, not what is held.
    Where the installed imgpipe has it, the end-of-run robustness card is off
    too (`--set evaluate.robustness=false`): 26 evaluations of 200 perturbed
    validation images that added 24 s and about 350 MiB of peak to a
    3,000-image run here, and are not the question.

How to run (from the repository root)
    .venv/bin/python benchmarks/memory.py            # about 3.5 minutes on 2 CPU cores
    .venv/bin/python benchmarks/memory.py --quick    # 200 images at 64x64: under a minute
    .venv/bin/python benchmarks/memory.py --modes none,auto --model lenet

The JPEG folders under WORKDIR (default /tmp/bench/memory) are reused between
runs; the run folders and their logs are rewritten.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import jpeg_class_folder, machine_summary, print_table  # noqa: E402

MIB = 2**20
SAMPLE_SECONDS = 0.2
CACHE_MODES = ("none", "disk", "auto")
PROBE_MODEL = "memory_probe"
# What this file does when it is the measured child: imgpipe's command line with the probe model registered.
AS_IMGPIPE = "--as-imgpipe"
BASELINE_IMPORTS = "import tensorflow, keras, imgpipe, imgpipe.engine.runner"
# End-of-run extras that are not the question here, switched off where this version of imgpipe has them.
OPTIONAL_OVERRIDES = ("evaluate.robustness=false",)
SETTINGS = {
    "default": dict(images=10_000, control_images=3_000, image_side=224, batch_size=64),
    "quick": dict(images=200, control_images=None, image_side=64, batch_size=32),
}


# === The measured child ===

def register_probe_model():
    """Registers `memory_probe`: a classifier that costs almost nothing, so a run's memory is its pipeline's."""
    import keras
    from keras import layers

    from imgpipe.models import MODELS
    from imgpipe.models.classifiers import classification_head

    @MODELS.register(PROBE_MODEL, task="classify", family="benchmark")
    def build_memory_probe(input_shape, num_classes, weights=None, dropout=0.0):
        inputs = keras.Input(input_shape, name="image")
        x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
        x = layers.Conv2D(8, 3, strides=4, name="probe_conv")(x)
        return keras.Model(inputs, classification_head(x, num_classes, dropout), name=PROBE_MODEL)


def imgpipe_with_probe_model(arguments):
    """Runs `imgpipe ARGUMENTS` (its console entry point) after registering the probe model."""
    register_probe_model()
    from imgpipe.cli import entry_point

    sys.argv = ["imgpipe"] + list(arguments)
    entry_point()


def accepted_overrides(overrides):
    """Those of `overrides` that this imgpipe's classify recipe accepts (keys come and go between versions)."""
    from imgpipe import RecipeError, load_recipe

    accepted = []
    for override in overrides:
        try:
            load_recipe("classify", [override])
        except RecipeError:
            continue
        accepted.append(override)
    return accepted


def classify_command(folder, run_dir, cache, settings, model_name):
    """The command line of one measured `imgpipe run classify`."""
    if model_name == PROBE_MODEL:
        imgpipe_cli = [sys.executable, str(pathlib.Path(__file__).resolve()), AS_IMGPIPE]
    else:
        imgpipe_cli = [str(pathlib.Path(sys.executable).parent / "imgpipe")]
    overrides = ["train.patience=0", "train.verbose=0", "augment.viewpoint=none", "augment.illumination=none",
                 "augment.occlusion=none", f"data.cache={cache}"] + accepted_overrides(OPTIONAL_OVERRIDES)
    return imgpipe_cli + [
        "-q", "run", "classify", "--data", str(folder), "--output", str(run_dir), "--no-export",
        "--model", model_name, "--image-size", str(settings["image_side"]), "--epochs", "1",
        "--batch-size", str(settings["batch_size"])] + [part for override in overrides for part in ("--set", override)]


# === Watching it ===

class MemoryWatch:
    """Samples a process's RSS (and the size of a folder) from /proc in a thread until stopped.

    Example:
        >>> watch = MemoryWatch(process.pid, run_dir / "cache").start()
        >>> os.wait4(process.pid, 0); watch.stop()
        >>> watch.rss_at(0.5), watch.largest_folder_bytes
    """

    def __init__(self, pid, folder=None):
        self.pid = pid
        self.folder = folder
        self.samples = []
        self.largest_folder_bytes = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stopped.set()
        self._thread.join()

    def rss_at(self, fraction):
        """RSS in MiB of the sample nearest `fraction` (0..1) of the watched time."""
        if not self.samples:
            return float("nan")
        end = self.samples[-1][0]
        return min(self.samples, key=lambda sample: abs(sample[0] - fraction * end))[1]

    def _sample(self):
        started = time.perf_counter()
        while not self._stopped.is_set():
            rss = _resident_mib(self.pid)
            if rss is not None:
                self.samples.append((time.perf_counter() - started, rss))
            if self.folder is not None:
                self.largest_folder_bytes = max(self.largest_folder_bytes, _folder_bytes(self.folder))
            self._stopped.wait(SAMPLE_SECONDS)


def _resident_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass  # the process has just exited
    return None


def _folder_bytes(folder):
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass  # TensorFlow renames its temporary cache files as it writes them
    return total


def measure_child(command, log_path, watched_folder=None):
    """Runs `command` with its output in `log_path`; returns (peak RSS MiB, wall seconds, MemoryWatch).

    Exits with the end of the log when the command fails.
    """
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        watch = MemoryWatch(process.pid, watched_folder).start()
        # wait4 gives this child's own high-water mark; RUSAGE_CHILDREN is the largest of all children so far.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        watch.stop()
    if process.returncode != 0:
        tail = "".join(pathlib.Path(log_path).read_text().splitlines(keepends=True)[-20:])
        sys.exit(f"$ {' '.join(command)}\nfailed with exit status {process.returncode}; end of {log_path}:\n{tail}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started, watch


# === The benchmark ===

def measure_run(label, images, mode, settings, model_name, workdir):
    """One measured classify run on `images` JPEGs with data.cache=`mode`; returns a dict of its figures."""
    from imgpipe.engine.pipeline import cache_mode

    folder = jpeg_class_folder(workdir / f"jpegs_{images}", images)
    run_dir = workdir / f"run_{label}"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = classify_command(folder, run_dir, mode, settings, model_name)
    print(f"{label}: $ {' '.join(command)}", flush=True)
    peak_mib, wall_seconds, watch = measure_child(command, workdir / f"run_{label}.log", run_dir / "cache")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # make_dataset decides for each split on its own.
    size = [settings["image_side"]] * 2
    train_cache = cache_mode(metrics["images_train"], size, mode)
    val_cache = cache_mode(metrics["images_validation"], size, mode)
    used = train_cache if train_cache == val_cache else f"train {train_cache}, val {val_cache}"
    return {
        "mode": mode, "images": images, "used": used, "peak": peak_mib, "wall_seconds": wall_seconds,
        "fit_seconds": metrics["train_seconds"],
        "rss_quarters": [watch.rss_at(fraction) for fraction in (0.25, 0.5, 0.75)],
        "disk_cache_mib": watch.largest_folder_bytes / MIB if "disk" in used else "",
    }


def table_rows(baseline_mib, runs, none_peak):
    """The table: the baseline, then each run with its peak above the baseline and its ratio to `none_peak`."""
    rows = [["imports only", "", "", "", "", "", "", "", baseline_mib, 0.0, "", ""]]
    for run in runs:
        ratio = f"{run['peak'] / none_peak:.2f}x" if none_peak else ""
        rows.append([run["mode"], run["images"], run["used"], run["wall_seconds"], run["fit_seconds"],
                     *run["rss_quarters"], run["peak"], run["peak"] - baseline_mib, ratio, run["disk_cache_mib"]])
    return rows


def main():
    if sys.argv[1:2] == [AS_IMGPIPE]:
        imgpipe_with_probe_model(sys.argv[2:])  # exits with imgpipe's own status
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 images at 64x64: under a minute, for development")
    parser.add_argument("--modes", default=",".join(CACHE_MODES),
                        help="data.cache settings to run, comma-separated (default: none,disk,auto)")
    parser.add_argument("--model", default=PROBE_MODEL,
                        help=f"classifier to train (default: {PROBE_MODEL}, see the docstring; or lenet, ...)")
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/bench/memory"))
    args = parser.parse_args()
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = sorted(set(modes) - {"none", "disk", "auto", "memory"})
    if unknown:
        parser.error(f"--modes: unknown data.cache {unknown[0]!r}; choose from none, disk, auto, memory")
    settings = SETTINGS["quick" if args.quick else "default"]
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    side, images, control_images = settings["image_side"], settings["images"], settings["control_images"]
    decoded_mib = images * side * side * 3 / MIB

    print(machine_summary())
    print("$", " ".join([sys.executable] + sys.argv))
    print(f"{images} JPEGs at {side}x{side}: {decoded_mib:.0f} MiB decoded; model {args.model}, "
          f"batch {settings['batch_size']}, 1 epoch")
    baseline_mib, _, _ = measure_child([sys.executable, "-c", BASELINE_IMPORTS], workdir / "baseline.log")
    runs = [measure_run(mode, images, mode, settings, args.model, workdir) for mode in modes]
    if control_images and "none" in modes:
        runs.append(measure_run("none_control", control_images, "none", settings, args.model, workdir))
    peaks = {(run["mode"], run["images"]): run["peak"] for run in runs}
    none_peak = peaks.get(("none", images))

    print_table(f"peak RSS (MiB) of `imgpipe run classify`, {side}x{side}, {args.model}, batch "
                f"{settings['batch_size']}, 1 epoch; vs none = peak / peak of none on {images} images",
                ["data.cache", "images", "used", "wall s", "fit s", "RSS @1/4", "RSS @1/2", "RSS @3/4", "peak RSS",
                 "peak - baseline", "vs none", "disk cache MiB"], table_rows(baseline_mib, runs, none_peak))
    if none_peak:
        for (mode, count), peak in peaks.items():
            if count == images and mode != "none":
                print(f"{mode} - none: {peak - none_peak:+.0f} MiB "
                      f"(the {images} images decoded: {decoded_mib:.0f} MiB)")
        if control_images:
            print(f"none on {images} - none on {control_images} images: "
                  f"{none_peak - peaks[('none', control_images)]:+.0f} MiB")


if __name__ == "__main__":
    main()
