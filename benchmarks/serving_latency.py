"""How much of a served classification request is image decoding? `serving_default` against the bare model.

What it measures
    A classify model (default small_cnn) is trained for one epoch at 224x224 with
    `imgpipe.run` on real raccoon JPEGs and exported; its weights do not matter
    for latency. Then, for batches of 1 and of 32 images, milliseconds per call of:

    - serving: the export's `serving_default` signature, loaded with
      `tf.saved_model.load(path).signatures["serving_default"]` and called on the
      encoded JPEG bytes of the raccoon photos (200 colour and greyscale photos,
      154 to 2000 pixels a side); it decodes, resizes and classifies inside the
      SavedModel.
    - model only: the network the export holds (the trained Keras model with its batch
      norms folded, `imgpipe.models.fold_batch_norm`) on the same photos already decoded and
      resized to float32 [B, 224, 224, 3] (by `imgpipe.engine.serving.decode_batch`, so
      its pixels are the ones the signature computes), called two ways:
      `model(images, training=False)` as it is (eager: one Python dispatch per
      layer), and that call wrapped in a `tf.function`, a graph as the
      SavedModel's. The eager overhead can exceed a small model's compute at
      batch 1, so the ratio and the decode share are taken against the graph call.
    - checked against unchecked, both as one `tf.function` from bytes to
      probabilities around the same model: the current decode (`decode_batch`:
      header checks, EXIF, the tf.data decode that drops failures, `with_status`)
      and the decode as it was before serving was hardened (one `tf.map_fn`, no
      checks; `unchecked_decode`). Their ratio is the hardening's cost to a
      normal request; the target is at most 5 %.
      It is given two ways: the ratio of the two medians, and the median of
      the paired differences (the two graphs run one after the other on the
      same request, so a burst of load from elsewhere hits both) over the
      unchecked median. At batch 1 the ratio of medians varied by about 3
      points between runs on an idle machine.
    - decode only, two diagnostic rows that tell whether the serving decode is
      slower than it need be: the signature's own decode (`decode_batch`) and the
      training pipeline's decode of the same bytes (`decode_jpeg_scaled` at
      Pillow's DCT scale, then `resize_uint8`'s area shrink), each in a
      `tf.function`.

    Each call takes the next photos in turn, so a median covers the mix of sizes.
    Every path is warmed up (tracing, thread pools, oneDNN kernels) before it is
    timed, and the paths take turns call by call, so a burst of load from other
    processes on a shared machine hits all of them alike. The table gives the
    median and 90th-percentile milliseconds per call, the median per image, the
    ratio to the graph model-only median and the decode share of the medians:
        serving rows: (serving - model only, graph) / serving    by difference
        decode rows:  decode only / serving                      measured directly
    With a model as costly as small_cnn at 224x224, the difference is within
    the noise of a shared machine at batch 32; the decode rows are not.

How to run (from the repository root)
    .venv/bin/python benchmarks/serving_latency.py            # 4 to 5 minutes on 2 CPU cores
    .venv/bin/python benchmarks/serving_latency.py --quick    # 64x64, few calls: under half a minute
    .venv/bin/python benchmarks/serving_latency.py --model lenet --workdir /tmp/bench/serving

Scratch data (training images, the run, the export) goes under WORKDIR and is
rebuilt on each run.
"""

import argparse
import os
import pathlib
import shutil
import statistics
import sys
import time

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import tensorflow as tf  # noqa: E402 - after TF_CPP_MIN_LOG_LEVEL

import imgpipe  # noqa: E402
from imgpipe.data.images import plain_jpeg_scale  # noqa: E402
from imgpipe.engine.pipeline import DCT_SCALES, decode_jpeg_for_size, decode_jpeg_scaled, resize_uint8  # noqa: E402
from imgpipe.engine.serving import decode_batch, with_status  # noqa: E402
from imgpipe.models.fold_batch_norm import fold_batch_norm  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import RACCOON_IMAGES, jpeg_class_folder, machine_summary, print_table  # noqa: E402

BATCH_SIZES = (1, 32)
SERVING = "serving_default (JPEG bytes)"
MODEL_IN_GRAPH = "model only, graph"
DECODE_AS_SERVING = "decode only, as serving does"
CHECKED = "checked decode + model"
UNCHECKED = "unchecked decode + model (before issue 16)"
MAX_PIXELS = 25_000_000
# (image side, training images, warm-up calls, timed calls per path for batch 1 and for batch 32)
SETTINGS = {
    "default": dict(image_side=224, training_images=64, warmup_calls=3, timed_calls={1: 200, 32: 15}),
    "quick": dict(image_side=64, training_images=16, warmup_calls=2, timed_calls={1: 15, 32: 4}),
}


def train_and_export(workdir, image_side, training_images, model_name):
    """One epoch of `classify` on raccoon JPEGs; returns (Keras model, export version folder)."""
    images = jpeg_class_folder(workdir / "images", training_images)
    for folder in ("run", "saved_models"):
        shutil.rmtree(workdir / folder, ignore_errors=True)
    result = imgpipe.run("classify", overrides=[
        "train.epochs=1", "train.verbose=0", "train.patience=0", f"data.image_size={image_side}",
        "augment.viewpoint=none", "augment.illumination=none", "augment.occlusion=none",
        f"model.name={model_name}", f"train.run_dir={workdir / 'run'}", f"export.root={workdir / 'saved_models'}",
    ], data=str(images))
    return result.model, result.export_path


def request_batches(photo_bytes, batch_size):
    """Batches of encoded photos, each photo in turn, enough batches to use every photo once."""
    count = -(-len(photo_bytes) // batch_size)
    return [[photo_bytes[(number * batch_size + offset) % len(photo_bytes)] for offset in range(batch_size)]
            for number in range(count)]


def training_decoder(size):
    """The training pipeline's decode in a graph: (JPEG bytes [B], DCT scale index [B]) -> uint8 [B, H, W, 3]."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32)])
    def decode(image_bytes, scale_indices):
        return tf.map_fn(lambda pair: resize_uint8(decode_jpeg_scaled(pair[0], pair[1]), size),
                         (image_bytes, scale_indices), fn_output_signature=tf.TensorSpec(size + [3], tf.uint8))

    return decode


def graph_model(model, size):
    """`model(images, training=False)` in a `tf.function`, traced once for any batch size."""

    @tf.function(input_signature=[tf.TensorSpec([None] + size + [3], tf.float32)])
    def predict(images):
        return model(images, training=False)

    return predict


def serving_decoder(size):
    """The serving signature's decode as a graph function: JPEG bytes [B] -> float32 [B, H, W, 3]."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def decode(image_bytes):
        return decode_batch(image_bytes, size, MAX_PIXELS).images

    return decode


def unchecked_decode(image_bytes, size):
    """The serving decode as it was before issue 16 (commit 546db1e), for the overhead row.

    One `tf.map_fn` over the batch: a JPEG decoded at its DCT scale, anything
    else by `tf.io.decode_image`, then `resize_uint8`. No header check, no EXIF,
    no status: one bad image fails the whole batch.
    """

    def one(single):
        def other():
            image = tf.io.decode_image(single, channels=3, expand_animations=False, dtype=tf.uint8)
            image.set_shape([None, None, 3])
            return image

        image = tf.cond(tf.io.is_jpeg(single), lambda: decode_jpeg_for_size(single, size), other)
        image.set_shape([None, None, 3])
        return tf.cast(resize_uint8(image, size), tf.float32)

    return tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec(size + [3], tf.float32))


def served_model(model, size, checked):
    """Bytes -> probabilities in one graph, with the checked (current) or the unchecked (old) decode."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(image_bytes):
        if not checked:
            return {"probabilities": model(unchecked_decode(image_bytes, size), training=False)}
        batch = decode_batch(image_bytes, size, MAX_PIXELS)
        return with_status({"probabilities": model(batch.images, training=False)}, batch.status, MAX_PIXELS)

    return serve


def request_paths(batches, size, serve, model):
    """{path name: fn(call number) -> answer}, each call on the next of `batches` (lists of JPEG bytes)."""
    encoded = [tf.constant(batch) for batch in batches]
    decode_for_serving, decode_for_training = serving_decoder(size), training_decoder(size)
    model_in_graph = graph_model(model, size)
    decoded = [decode_for_serving(batch) for batch in encoded]
    # The header parse that picks the DCT scale is Python; it is left out of the timed training decode.
    # Training hands the rare JPEG that is not plain (EXIF-rotated, CMYK) to Pillow; here it decodes at full scale.
    scale_indices = [tf.constant([DCT_SCALES.index(plain_jpeg_scale(image, size) or 1) for image in batch])
                     for batch in batches]

    def nth(items, number):
        return items[number % len(items)]

    checked, unchecked = served_model(model, size, checked=True), served_model(model, size, checked=False)
    return {
        SERVING: lambda n: serve(image_bytes=nth(encoded, n)),
        CHECKED: lambda n: checked(nth(encoded, n)),
        UNCHECKED: lambda n: unchecked(nth(encoded, n)),
        MODEL_IN_GRAPH: lambda n: model_in_graph(nth(decoded, n)),
        "model only, eager Keras call": lambda n: model(nth(decoded, n), training=False),
        DECODE_AS_SERVING: lambda n: decode_for_serving(nth(encoded, n)),
        "decode only, as training does": lambda n: decode_for_training(nth(encoded, n), nth(scale_indices, n)),
    }


def table_rows(timings, batch_size):
    """Rows of the table for one batch size: median, p90, per image, ratio to the graph model, decode share."""
    medians = {name: statistics.median(values) for name, values in timings.items()}
    serving, model_only = medians[SERVING], medians[MODEL_IN_GRAPH]
    rows = []
    for name, values in timings.items():
        if name == SERVING:
            share = f"{(serving - model_only) / serving:.0%}"
        elif name == CHECKED:
            paired = statistics.median(checked - unchecked for checked, unchecked in zip(values, timings[UNCHECKED]))
            share = (f"{medians[CHECKED] / medians[UNCHECKED] - 1:+.1%} vs unchecked, "
                     f"paired {paired:+.2f} ms = {paired / medians[UNCHECKED]:+.1%}")
        elif name.startswith("decode"):
            share = f"{medians[name] / serving:.0%}"
        else:
            share = ""
        rows.append([name, batch_size, medians[name], percentile(values, 0.9), medians[name] / batch_size,
                     f"{medians[name] / model_only:.2f}x", share])
    return rows


def time_in_turns(paths, calls, warmup_calls):
    """Milliseconds of each call of each path; the paths are called in turn, after `warmup_calls` untimed rounds.

    Args:
        paths: {name: fn(call number) -> tensor or dict of tensors}; the result is
            fetched to the host so that the time covers the whole computation.

    Returns:
        {name: [milliseconds, ...]} with `calls` entries per path.
    """
    timings = {name: [] for name in paths}
    for number in range(warmup_calls + calls):
        for name, call in paths.items():
            started = time.perf_counter()
            answer = call(number)
            for tensor in (answer.values() if isinstance(answer, dict) else [answer]):
                tensor.numpy()
            if number >= warmup_calls:
                timings[name].append((time.perf_counter() - started) * 1000)
    return timings


def percentile(values, fraction):
    """The `fraction` quantile of `values`, interpolated between the nearest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64x64 model, few calls: under a minute, for development")
    parser.add_argument("--model", default="small_cnn", help="classify model to export (default: small_cnn)")
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/bench/serving"))
    args = parser.parse_args()
    settings = SETTINGS["quick" if args.quick else "default"]
    size = [settings["image_side"]] * 2

    print(machine_summary())
    print("$", " ".join([sys.executable] + sys.argv))
    trained, export_path = train_and_export(args.workdir.resolve(), settings["image_side"],
                                            settings["training_images"], args.model)
    model = fold_batch_norm(trained)  # what the export serves, so the rows differ only in the decode
    serve = tf.saved_model.load(str(export_path)).signatures["serving_default"]
    photos = sorted(RACCOON_IMAGES.glob("*.jpg"))
    photo_bytes = [photo.read_bytes() for photo in photos]
    print(f"model {args.model} at {size[0]}x{size[1]}, export {export_path}; requests: {len(photos)} raccoon JPEGs")

    rows = []
    for batch_size in BATCH_SIZES:
        paths = request_paths(request_batches(photo_bytes, batch_size), size, serve, model)
        calls = settings["timed_calls"][batch_size]
        print(f"batch {batch_size}: {settings['warmup_calls']} warm-up + {calls} timed calls per path", flush=True)
        timings = time_in_turns(paths, calls, settings["warmup_calls"])
        rows += table_rows(timings, batch_size)

    print_table(f"serving latency, {args.model} at {size[0]}x{size[1]} (ms; ratio = median / graph model-only median)",
                ["path", "batch", "median ms", "p90 ms", "ms/image", "ratio", "decode share"], rows)
    print("decode share: serving rows (serving - model only, graph) / serving; decode rows: decode / serving;")
    print(f"the '{CHECKED}' row: its overhead over '{UNCHECKED}' (the same model and graph otherwise).")


if __name__ == "__main__":
    main()
