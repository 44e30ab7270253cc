"""The proof of an exported file: its outputs against the Keras model's, the task's metric, its latency.

An export that loads but answers differently is the most common complaint
about converted models (int8 files that lose accuracy, pre-processing that
differs). So every file is run in its own runtime on the run's validation
images and compared with the Keras model it came from: the largest absolute
difference of the raw outputs, and the task's main metric (accuracy, mean IoU,
mAP50) scored by the task's one scoring path for both.

Example:
    >>> proof = prove(task, compiled_forward(model), runtime, images, truths, metadata)
    >>> proof["max_abs_diff"], proof["metric_keras"], proof["metric_format"]
"""

import time

import numpy as np

from imgpipe.engine.client import per_image

BATCH_SIZE = 32
LATENCY_BATCHES = (1, 32)


def main_metric(task):
    """The key of `task.score` that the proof compares: the task's main metric without `val_`."""
    return task.main_metric.removeprefix("val_")


def raw_outputs(forward, images, batch_size=BATCH_SIZE):
    """float32 outputs of `forward` on `images` [N, H, W, 3], in batches, stacked."""
    return np.concatenate([np.asarray(forward(images[start:start + batch_size], training=False), np.float32)
                           for start in range(0, len(images), batch_size)])


def score(task, forward, images, truths, metadata, batch_size=BATCH_SIZE):
    """The task's main metric of `forward` (a Keras model or a runtime model) on `images`."""
    answers = []
    for start in range(0, len(images), batch_size):
        answers += per_image(task.answers(forward, images[start:start + batch_size], metadata))
    return float(task.score(answers, truths, metadata)[main_metric(task)])


def prove(task, keras_forward, runtime, images, truths, metadata, keras_metric=None):
    """Parity and metric of `runtime` against `keras_forward` on the same float32 images.

    Args:
        keras_forward: the trained model (compiled: `imgpipe.engine.inference.compiled_forward`).
        runtime: the file in its runtime (`imgpipe.engine.export.formats.load_runtime`).
        images: float32 [N, H, W, 3] validation images, RGB 0..255 at the model's size.
        truths: what each answer is compared with (`task.truth`).
        keras_metric: the Keras model's metric when already scored (it is the same for every format).

    Returns:
        dict: max_abs_diff, mean_abs_diff, metric (its name), metric_keras, metric_format, metric_drop.
    """
    difference = np.abs(raw_outputs(keras_forward, images) - raw_outputs(runtime, images))
    before = score(task, keras_forward, images, truths, metadata) if keras_metric is None else keras_metric
    after = score(task, runtime, images, truths, metadata)
    return {"max_abs_diff": float(difference.max()), "mean_abs_diff": float(difference.mean()),
            "metric": main_metric(task), "metric_keras": before, "metric_format": after,
            "metric_drop": before - after}


def latency(forward, images, repeats=10):
    """Milliseconds per image of `forward` at batch 1 and batch 32: the median of `repeats` timed calls.

    Example:
        >>> latency(runtime, images)
        {'batch_1_ms': 0.41, 'batch_32_ms': 0.12}
    """
    timings = {}
    for batch in LATENCY_BATCHES:
        chunk = np.resize(images, (batch, *images.shape[1:])).astype(np.float32)
        forward(chunk, training=False)  # warm-up: graph tracing, allocation
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            np.asarray(forward(chunk, training=False))
            seconds.append(time.perf_counter() - start)
        timings[f"batch_{batch}_ms"] = float(np.median(seconds) / batch * 1000)
    return timings
