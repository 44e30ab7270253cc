"""Does training through `imgpipe run` cost anything compared with a hand-written `model.fit`?

The issue's target: imgpipe trains at >= 0.95 x the images per second of the
`model.fit` a competent Keras user would write, for classification and for
segmentation. Both sides train the same network (imgpipe's registered
builder), compiled the same way (AdamW on the same warm-up + cosine schedule,
imgpipe's loss and metrics), with the same batch size, image size, number of
epochs and an 80/20 split of the same files, validating after every epoch.
Augmentation is off on both sides, because the question is what the engine
costs, not what augmenting costs; one more imgpipe row with the recipe's
default augmentation is shown for information.

What it measures
    s/epoch   the median duration of epochs 2..E: the steady state, after
              file decoding (cached from then on) and graph tracing. An
              epoch is everything `fit` does per epoch: the training steps,
              the validation pass and every callback, measured from one
              epoch's end to the next. The median, because on a shared
              machine a few epochs are slowed by other work.
    images/s  training images / s/epoch.
    with 1st  training images x epochs / the whole fit (compile + `fit`),
              first epoch included; for imgpipe that is
              `RunResult.metrics["train_seconds"]`.
    ratio     imgpipe / hand-written, best run of each side.

    Below the table, for each task, the time imgpipe's per-epoch callbacks
    (imgpipe/engine/trainer.py, `Trainer._callbacks`: backup for --resume, last and
    best weights, history.csv) take on the trained model, timed alone: the
    part of an imgpipe epoch that a plain `model.fit` does not have.

    imgpipe reports no per-epoch times, but it appends one row to
    RUN/history.csv (Keras' `CSVLogger`, flushed) as each epoch ends; a
    thread watches that file every 10 ms and takes the moment a row appears
    as the end of that epoch. The hand-written side records its epoch ends
    with a callback. imgpipe's reading, preview, final evaluation and plots
    happen outside `fit` and are timed by neither figure.

The two sides
    imgpipe        `imgpipe.run(task, overrides=[augment.*=none, train.patience=0,
                   train.verbose=0, export.enabled=false, model.weights=none, evaluate.robustness=false],
                   data=..., epochs=E, image_size=...)`, in this process. No early
                   stopping, so every run trains E epochs; no export or robustness
                   card (the latter only where imgpipe has that key), since
                   neither is training.
    hand-written   classification: `keras.utils.image_dataset_from_directory`
                   (80/20 split) with `.cache().prefetch(AUTOTUNE)`;
                   segmentation: file paths -> `decode_png` + resize -> cache ->
                   shuffle -> batch -> prefetch. Then `model.fit(train,
                   validation_data=val, epochs=E)`, nothing else.

Data (default run; --quick shrinks it)
    classification  256 real JPEGs of mixed sizes (`common.jpeg_class_folder`,
                    from ../shared/data/raccoon/images) in two class folders;
                    small_cnn at 64x64, batch 32, 6 epochs.
    segmentation    ../shared/data/membrane: 30 greyscale 512x512 PNGs with
                    binary masks (images/ + masks/); unet at 128x128, batch 4,
                    6 epochs.

Both sides run in this process, alternating which goes first, `--repeats`
times; the best run of each side is kept, since on a shared machine noise
only ever slows a run down. On a busy machine the ratio still moves by 0.2
from one invocation to the next: read the per-fit epoch times it prints
before trusting a verdict.

How to run (from the repository root)
    .venv/bin/python benchmarks/training_throughput.py            # about 5 minutes on 2 CPU cores
    .venv/bin/python benchmarks/training_throughput.py --quick    # about a minute; a smoke test, not a measurement

The default run took 5 min 25 s, and --quick 70 s, on 2 cores that other
jobs kept busy. --quick trains tiny images for 2 epochs, once per side,
without the augmented row; most of its time is graph tracing, which no image
size shortens. `--tasks classify` or `--tasks segment` runs one task.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import dataclasses
import pathlib
import shlex
import shutil
import sys
import tempfile
import threading
import time

import keras
import numpy as np
import tensorflow as tf

import imgpipe
from imgpipe.models import MODELS
from imgpipe.engine.registry import TASKS
from imgpipe.tasks.classify.task import SparseCrossentropyWithSmoothing
from imgpipe.tasks.segment.task import PixelAccuracy, SegmentationLoss
from imgpipe.engine.trainer import Trainer, learning_rate_schedule

from common import jpeg_class_folder, machine_summary, peak_rss_mib, print_table

SEED = 1337
VAL_FRACTION = 0.2
TARGET_RATIO = 0.95
NO_AUGMENTATION = ["augment.viewpoint=none", "augment.illumination=none", "augment.occlusion=none"]
# model.weights=none: the hand-written side trains imgpipe's from-scratch model, so imgpipe must too, even
# where ImageNet weights would make `auto` choose a pretrained one (classification from 64 px, segmentation 96).
QUIET_RUN = ["train.patience=0", "train.verbose=0", "export.enabled=false", "model.weights=none"]
# Runs after `fit` (26 evaluations of the validation set) and is timed by neither figure.
ROBUSTNESS_CARD_OFF = "evaluate.robustness=false"
MEMBRANE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "membrane"
HISTORY_POLL_SECONDS = 0.01
CALLBACK_TIMING_EPOCHS = 3


@dataclasses.dataclass(frozen=True)
class Workload:
    """What both sides train on for one task.

    Attributes:
        image_size: int, the side of the square model input.
        epochs: int, epochs per fit (2 or more: the first is not in the steady state).
        jpeg_count: int, classification only: JPEGs written to the class folders
            (segmentation trains on all of membrane).
    """

    image_size: int
    epochs: int
    jpeg_count: int = 0


# Sized so the full run stays within about 5 minutes on 2 CPU cores; the
# first epoch (decoding, tracing) is a large share of it.
WORKLOADS = {
    "default": {"classify": Workload(image_size=64, epochs=6, jpeg_count=256),
                "segment": Workload(image_size=128, epochs=6)},
    "quick": {"classify": Workload(image_size=32, epochs=2, jpeg_count=64),
              "segment": Workload(image_size=32, epochs=2)},
}


@dataclasses.dataclass
class FitTiming:
    """One training run: how many images an epoch trains on, when each epoch ended, how long the fit took."""

    train_images: int
    epoch_ends: list
    fit_seconds: float

    @property
    def steady_seconds_per_epoch(self):
        """The median duration of epochs 2..E (needs E >= 2)."""
        return float(np.median(np.diff(self.epoch_ends)))

    @property
    def steady_images_per_second(self):
        return self.train_images / self.steady_seconds_per_epoch

    @property
    def whole_fit_images_per_second(self):
        return self.train_images * len(self.epoch_ends) / self.fit_seconds


class EpochEndClock(keras.callbacks.Callback):
    """The hand-written side's epoch ends, as `time.perf_counter()` values."""

    def __init__(self):
        super().__init__()
        self.epoch_ends = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(time.perf_counter())


class HistoryWatcher:
    """imgpipe's epoch ends, seen from outside: the moments RUN/history.csv gains a row.

    imgpipe's `CSVLogger` writes and flushes one row when an epoch ends, so
    watching the file times imgpipe's epochs without changing how it trains.
    Use as a context manager around `imgpipe.run`.

    Example:
        >>> with HistoryWatcher(run_dir / "history.csv") as watcher:
        ...     imgpipe.run("classify", output=str(run_dir), epochs=3)
        >>> len(watcher.epoch_ends)
        3
    """

    def __init__(self, history_csv):
        self.history_csv = pathlib.Path(history_csv)
        self.epoch_ends = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()

    def _watch(self):
        size_seen, rows_seen = -1, 0
        while not self._stop.wait(HISTORY_POLL_SECONDS):
            try:
                size = self.history_csv.stat().st_size
            except FileNotFoundError:
                continue
            if size == size_seen:
                continue
            now = time.perf_counter()
            size_seen = size
            # The first line is the header; each further complete line is an epoch.
            rows = max(self.history_csv.read_bytes().count(b"\n") - 1, 0)
            self.epoch_ends += [now] * (rows - rows_seen)
            rows_seen = rows


# === imgpipe ===

def quiet_run_overrides(task):
    """QUIET_RUN, plus the robustness card switched off where this imgpipe has one (it only saves time)."""
    try:
        imgpipe.load_recipe(task, [ROBUSTNESS_CARD_OFF])
    except imgpipe.RecipeError:
        return list(QUIET_RUN)
    return QUIET_RUN + [ROBUSTNESS_CARD_OFF]


def imgpipe_fit(task, data_path, workload, run_dir, augment):
    """Trains through `imgpipe.run` with the recipe's defaults, or without augmentation when `augment` is false.

    Returns (`FitTiming`, the trained model).
    """
    overrides = quiet_run_overrides(task) + ([] if augment else NO_AUGMENTATION)
    shutil.rmtree(run_dir, ignore_errors=True)  # imgpipe refuses a run folder that holds a finished run
    keras.utils.clear_session()
    with HistoryWatcher(run_dir / "history.csv") as watcher:
        result = imgpipe.run(task, overrides, data=str(data_path), epochs=workload.epochs,
                             image_size=workload.image_size, output=str(run_dir))
    shutil.rmtree(run_dir, ignore_errors=True)
    if len(watcher.epoch_ends) != workload.epochs:
        sys.exit(f"saw {len(watcher.epoch_ends)} epoch ends in {run_dir / 'history.csv'}, "
                 f"expected {workload.epochs}")
    return FitTiming(result.metrics["images_train"], watcher.epoch_ends, result.metrics["train_seconds"]), result.model


def imgpipe_callback_seconds(task, model, run_dir):
    """Seconds imgpipe's per-epoch callbacks take at the end of one epoch on `model`, timed without training.

    The logs improve every epoch, so the best-weights checkpoint is written
    each time, as it is while a short run keeps improving. `Trainer._callbacks`
    is private; it is used because these must be exactly the callbacks
    `imgpipe.run` trains with.
    """
    recipe = imgpipe.load_recipe(task, quiet_run_overrides(task))
    trainer = Trainer(recipe, run_dir)
    trainer.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    metric, mode = TASKS.get(task).monitor
    callbacks = keras.callbacks.CallbackList(trainer._callbacks("train", (metric, mode)), model=model)
    callbacks.on_train_begin()
    seconds = []
    for epoch in range(CALLBACK_TIMING_EPOCHS):
        logs = {"loss": 1.0, metric: float(epoch if mode == "max" else -epoch)}
        started = time.perf_counter()
        callbacks.on_epoch_end(epoch, logs)
        seconds.append(time.perf_counter() - started)
    callbacks.on_train_end()
    shutil.rmtree(run_dir, ignore_errors=True)
    return min(seconds)


# === Hand-written ===

def compiled_like_imgpipe(model, recipe, steps_per_epoch, loss, metrics):
    """`model` compiled as imgpipe's trainer compiles it: AdamW on a warm-up + cosine schedule."""
    settings = recipe.train
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(settings.learning_rate, steps_per_epoch * settings.epochs),
        weight_decay=settings.weight_decay)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model


def timed_fit(build_and_compile, train_ds, val_ds, train_images, epochs):
    """Compiles (timed, as imgpipe's `train_seconds` includes its compile) and fits with an epoch clock."""
    clock = EpochEndClock()
    started = time.perf_counter()
    model = build_and_compile()
    # shuffle=False only silences Keras' warning: a tf.data.Dataset is never reshuffled by `fit`.
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=[clock], shuffle=False, verbose=0)
    return FitTiming(train_images, clock.epoch_ends, time.perf_counter() - started)


def hand_written_classification(folder, workload):
    """`image_dataset_from_directory` + cache + prefetch, then small_cnn's `model.fit`."""
    recipe = imgpipe.load_recipe("classify", [f"train.epochs={workload.epochs}"])
    size = (workload.image_size, workload.image_size)
    keras.utils.clear_session()
    keras.utils.set_random_seed(SEED)
    train_ds, val_ds = keras.utils.image_dataset_from_directory(
        folder, validation_split=VAL_FRACTION, subset="both", seed=SEED, image_size=size,
        batch_size=recipe.train.batch_size, verbose=False)
    train_images, class_count = len(train_ds.file_paths), len(train_ds.class_names)
    train_ds = train_ds.cache().prefetch(tf.data.AUTOTUNE)
    val_ds = val_ds.cache().prefetch(tf.data.AUTOTUNE)
    steps_per_epoch = int(np.ceil(train_images / recipe.train.batch_size))

    def build_and_compile():
        model = MODELS.get("small_cnn")(size + (3,), class_count, dropout=recipe.model.dropout)
        return compiled_like_imgpipe(
            model, recipe, steps_per_epoch,
            loss=SparseCrossentropyWithSmoothing(class_count, recipe.options.label_smoothing),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])

    return timed_fit(build_and_compile, train_ds, val_ds, train_images, workload.epochs)


def membrane_pairs(folder):
    """(image paths, mask paths) of images/*.png with their masks/<same name>."""
    images = sorted((folder / "images").glob("*.png"))
    masks = [folder / "masks" / image.name for image in images]
    missing = [mask for mask in masks if not mask.is_file()]
    if not images or missing:
        sys.exit(f"segmentation needs {folder}/images/*.png with a mask of the same name in {folder}/masks/; "
                 f"{'none found' if not images else f'{missing[0]} is missing'}")
    return [str(path) for path in images], [str(path) for path in masks]


def mask_pipeline(image_paths, mask_paths, size, batch_size, training):
    """Decode + resize once (cached), then shuffle each epoch when training, batch, prefetch."""
    def load_pair(image_path, mask_path):
        image = tf.image.resize(tf.io.decode_png(tf.io.read_file(image_path), channels=3), size)
        mask = tf.image.resize(tf.io.decode_png(tf.io.read_file(mask_path), channels=1), size, method="nearest")
        # membrane masks are binary (0 / 255), read as classes 0 and 1 as imgpipe reads them.
        return image, tf.cast(mask[..., 0] >= 128, tf.int32)

    dataset = tf.data.Dataset.from_tensor_slices((image_paths, mask_paths))
    dataset = dataset.map(load_pair, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if training:
        dataset = dataset.shuffle(len(image_paths), seed=SEED)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def hand_written_segmentation(folder, workload):
    """A tf.data pipeline over image and mask files, then unet's `model.fit`."""
    recipe = imgpipe.load_recipe("segment", [f"train.epochs={workload.epochs}"])
    size = (workload.image_size, workload.image_size)
    keras.utils.clear_session()
    keras.utils.set_random_seed(SEED)
    image_paths, mask_paths = membrane_pairs(folder)
    order = np.random.default_rng(SEED).permutation(len(image_paths))
    val_count = max(1, round(len(order) * VAL_FRACTION))
    train_index, val_index = order[val_count:], order[:val_count]
    batch_size = recipe.train.batch_size
    train_ds = mask_pipeline([image_paths[i] for i in train_index], [mask_paths[i] for i in train_index],
                             size, batch_size, training=True)
    val_ds = mask_pipeline([image_paths[i] for i in val_index], [mask_paths[i] for i in val_index],
                           size, batch_size, training=False)
    steps_per_epoch = int(np.ceil(len(train_index) / batch_size))

    def build_and_compile():
        model = MODELS.get("unet")(size + (3,), 2, dropout=recipe.model.dropout)
        return compiled_like_imgpipe(
            model, recipe, steps_per_epoch,
            loss=SegmentationLoss(2, dice_weight=recipe.options.dice_weight),
            metrics=[keras.metrics.MeanIoU(2, sparse_y_pred=False, name="mean_iou"), PixelAccuracy()])

    return timed_fit(build_and_compile, train_ds, val_ds, len(train_index), workload.epochs)


HAND_WRITTEN = {"classify": hand_written_classification, "segment": hand_written_segmentation}


# === Comparison ===

def report_progress(task, what, timing):
    """One line per fit, so a reader of a noisy run can see which epochs the machine slowed."""
    epochs = " ".join(f"{seconds:.2f}" for seconds in np.diff(timing.epoch_ends))
    print(f"{task}: {what}: fit {timing.fit_seconds:.1f} s, epochs 2.. took {epochs} s", flush=True)


def compare(task, data_path, workload, repeats, workdir, with_augmentation):
    """Table rows for one task (hand-written, imgpipe, imgpipe with augmentation) and imgpipe's callback seconds."""
    runs = {"hand-written": [], "imgpipe": []}
    for repeat in range(repeats):
        # Alternating the order spreads whatever the machine is doing over both sides.
        order = ["imgpipe", "hand-written"] if repeat % 2 == 0 else ["hand-written", "imgpipe"]
        for side in order:
            if side == "imgpipe":
                timing, trained_model = imgpipe_fit(task, data_path, workload, workdir / "run", augment=False)
            else:
                timing = HAND_WRITTEN[task](data_path, workload)
            runs[side].append(timing)
            report_progress(task, f"{side}, run {repeat + 1} of {repeats}", timing)
    callback_seconds = imgpipe_callback_seconds(task, trained_model, workdir / "callbacks")
    if with_augmentation:
        timing = imgpipe_fit(task, data_path, workload, workdir / "run", augment=True)[0]
        runs["imgpipe, default augmentation"] = [timing]
        report_progress(task, "imgpipe with the recipe's augmentation", timing)

    hand_written = max(runs["hand-written"], key=lambda run: run.steady_images_per_second)
    hand_whole = max(run.whole_fit_images_per_second for run in runs["hand-written"])
    rows = []
    for side, timings in runs.items():
        best = max(timings, key=lambda run: run.steady_images_per_second)
        whole = max(run.whole_fit_images_per_second for run in timings)
        ratios = ["", ""] if side == "hand-written" else \
            [best.steady_images_per_second / hand_written.steady_images_per_second, whole / hand_whole]
        rows.append([task, side, best.train_images, best.steady_seconds_per_epoch, best.steady_images_per_second,
                     whole, *ratios])
    return rows, callback_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run: checks the script works")
    parser.add_argument("--tasks", default="classify,segment", help="comma-separated: classify, segment")
    parser.add_argument("--repeats", type=int, default=None, help="runs per side (default 2, 1 with --quick)")
    parser.add_argument("--membrane", type=pathlib.Path, default=MEMBRANE, help="images/ + masks/ folder")
    parser.add_argument("--workdir", type=pathlib.Path,
                        default=pathlib.Path(tempfile.gettempdir()) / "imgpipe_training_throughput")
    args = parser.parse_args()
    tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
    unknown = sorted(set(tasks) - set(HAND_WRITTEN))
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(HAND_WRITTEN)}")
    repeats = args.repeats or (1 if args.quick else 2)
    workloads = WORKLOADS["quick" if args.quick else "default"]
    if "segment" in tasks and not (args.membrane / "images").is_dir():
        sys.exit(f"segmentation needs the membrane data set in {args.membrane} (images/ + masks/); "
                 f"it is absent. Pass --membrane DIR or --tasks classify")

    tf.get_logger().setLevel("ERROR")  # retracing notices from imgpipe's final evaluation, run after run
    started = time.perf_counter()
    rows, callback_seconds = [], {}
    for task in tasks:
        workload = workloads[task]
        if task == "classify":
            data_path = jpeg_class_folder(args.workdir / f"jpegs_{workload.jpeg_count}", workload.jpeg_count)
        else:
            data_path = args.membrane
        task_rows, callback_seconds[task] = compare(task, data_path, workload, repeats, args.workdir,
                                                    with_augmentation=not args.quick)
        rows += task_rows

    print(f"\n$ {shlex.join([sys.executable] + sys.argv)}")
    print(machine_summary())
    for task in tasks:
        workload = workloads[task]
        print(f"{task}: {workload.image_size}x{workload.image_size}, {workload.epochs} epochs, "
              f"batch {imgpipe.load_recipe(task).train.batch_size}, best of {repeats} run(s) per side")
    print_table("training throughput (s/epoch and images/s: epochs 2..E; with 1st: the whole fit)",
                ["task", "side", "train images", "s/epoch", "images/s", "with 1st", "ratio", "ratio with 1st"], rows)
    print()
    for task, side, _, seconds_per_epoch, _, _, ratio, _ in rows:
        if side == "imgpipe":
            verdict = "meets" if ratio >= TARGET_RATIO else "misses"
            print(f"{task}: imgpipe at {ratio:.2f} x hand-written {verdict} the {TARGET_RATIO} target; its "
                  f"per-epoch callbacks alone take {callback_seconds[task]:.2f} s of its {seconds_per_epoch:.2f} s "
                  f"epochs")
    print(f"{time.perf_counter() - started:.0f} s in all, peak memory {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
