"""Images per second that each input pipeline delivers to the model, at 224x224, from real JPEGs.

What it measures
    A folder of real JPEGs of mixed sizes (the raccoon photos, 200 files of
    about 500x375 px, repeated to --images), two class sub-folders, read at
    224x224 in batches of 32 on this machine's cores. For each contender, one
    whole epoch is iterated with nothing downstream (no model), and the images
    delivered per second are counted over the whole epoch, start-up included:

    keras              keras.utils.image_dataset_from_directory, no augmentation, .prefetch(AUTOTUNE)
    keras + aug layers the same, with keras.layers RandomFlip, RandomRotation(0.1), RandomZoom(0.1),
                       RandomBrightness(0.2), RandomContrast(0.2) mapped in tf.data (AUTOTUNE)
    imgpipe epoch 1    imgpipe's classification pipeline (`make_dataset`) with its default
                       augmentation (viewpoint medium, illumination medium, occlusion light),
                       first epoch: decode + resize + fill the cache + augment
    imgpipe epoch 2    the same pipeline's second epoch: from the cache, freshly augmented
    ..., no aug        both epochs again without augmentation: what decoding alone costs (epoch 1)
                       and what the cache alone delivers (epoch 2), to show which stage bounds the rate

    Each row also has the CPU time the process spent per image (every thread: tf.data's, OpenCV's)
    and how many cores that kept busy. On N cores no pipeline delivers more than N / cost images a
    second, so the cost says what a faster schedule could and could not win.

    Targets (issue 8): imgpipe epoch 1 >= 1.0x keras (unaugmented); >= 3x keras + aug layers;
    epoch 2 >= 2x epoch 1. The contenders run in turn, --repeats times, best figure kept.

How to run (from the repository root; about 40 seconds on 2 cores with the defaults)
    .venv/bin/python benchmarks/input_pipeline.py
    .venv/bin/python benchmarks/input_pipeline.py --images 400 --repeats 1   # quicker

Needs ../shared/data/raccoon/images; the JPEG folder is written to --workdir.
"""

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import jpeg_class_folder, machine_summary, print_table  # noqa: E402
from imgpipe.engine.augment import Augmenter  # noqa: E402
from imgpipe.data.folders import scan_class_folders  # noqa: E402
from imgpipe.data.images import DEFAULT_MAX_PIXELS  # noqa: E402
from imgpipe.data.sources import ImageSet  # noqa: E402
from imgpipe.engine.pipeline import make_dataset  # noqa: E402

SIZE = (224, 224)
BATCH = 32


def cpu_seconds():
    """CPU time this process has used, all threads (tf.data's included), user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def epoch_rate(dataset):
    """(images per second, CPU milliseconds per image) over one whole epoch of `dataset`, first batch included.

    The first batch is timed too: imgpipe's shuffle buffer (after the cache) fills
    with decoded images before it yields, so most of its first epoch's decoding
    happens before the first batch appears. The CPU cost shows what bounds a rate:
    on N cores no pipeline delivers more than N / cost images a second.
    """
    images, start, cpu_start = 0, time.perf_counter(), cpu_seconds()
    for images_batch, _ in dataset:
        images += int(images_batch.shape[0])
    return images / (time.perf_counter() - start), 1000 * (cpu_seconds() - cpu_start) / images


def keras_dataset(folder, augmentation=None):
    dataset = keras.utils.image_dataset_from_directory(folder, image_size=SIZE, batch_size=BATCH, seed=1337,
                                                       verbose=False)
    if augmentation is not None:
        dataset = dataset.map(lambda images, labels: (augmentation(images, training=True), labels),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def keras_augmentation_layers():
    """Keras' own layers for what imgpipe's default families do (flip, rotate, zoom, brightness, contrast)."""
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal"),
        keras.layers.RandomRotation(0.1),
        keras.layers.RandomZoom(0.1),
        keras.layers.RandomBrightness(0.2, value_range=(0, 255)),
        keras.layers.RandomContrast(0.2),
    ])


def imgpipe_rates(folder, augmenter):
    """`epoch_rate` of the first and the second epoch of imgpipe's training pipeline with `augmenter`."""
    paths, labels, _, headers, _ = scan_class_folders(folder, max_pixels=DEFAULT_MAX_PIXELS)
    image_set = ImageSet.from_files(paths, labels, headers)
    dataset, _ = make_dataset(image_set, list(SIZE), BATCH, training=True, augmenter=augmenter, cache="memory")
    return epoch_rate(dataset), epoch_rate(dataset)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=800, help="JPEGs in the folder (the 200 photos repeated)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all contenders; the best is kept")
    parser.add_argument("--workdir", default="/tmp/imgpipe-bench/input", help="where the JPEG folder is written")
    args = parser.parse_args()
    folder = jpeg_class_folder(os.path.join(args.workdir, f"jpegs{args.images}"), args.images)
    augmentation = keras_augmentation_layers()
    best, cost = {}, {}
    for _ in range(args.repeats):
        measured = {"keras": epoch_rate(keras_dataset(folder)),
                    "keras + aug layers": epoch_rate(keras_dataset(folder, augmentation))}
        measured["imgpipe epoch 1"], measured["imgpipe epoch 2"] = imgpipe_rates(folder, Augmenter())
        measured["imgpipe epoch 1, no aug"], measured["imgpipe epoch 2, no aug"] = imgpipe_rates(folder, None)
        for name, (rate, cpu_ms) in measured.items():
            if rate > best.get(name, 0.0):
                best[name], cost[name] = rate, cpu_ms

    print(machine_summary())
    print("command: " + " ".join(sys.argv))
    print_table(f"input pipeline, {args.images} JPEGs at {SIZE[0]}x{SIZE[1]}, batch {BATCH}, best of {args.repeats}",
                ["pipeline", "images/s", "vs keras", "vs keras + aug", "CPU ms/image", "cores busy"],
                [[name, rate, f"{rate / best['keras']:.2f}x", f"{rate / best['keras + aug layers']:.2f}x",
                  f"{cost[name]:.2f}", f"{rate * cost[name] / 1000:.2f}"] for name, rate in best.items()])
    targets = [("imgpipe epoch 1 >= 1.0x keras", best["imgpipe epoch 1"] / best["keras"], 1.0),
               ("imgpipe epoch 1 >= 3x keras + aug layers", best["imgpipe epoch 1"] / best["keras + aug layers"], 3.0),
               ("imgpipe epoch 2 >= 2x epoch 1", best["imgpipe epoch 2"] / best["imgpipe epoch 1"], 2.0)]
    print_table("targets", ["target", "ratio", "met"],
                [[name, f"{ratio:.2f}x", "yes" if ratio >= goal else "no"] for name, ratio, goal in targets])


if __name__ == "__main__":
    main()
