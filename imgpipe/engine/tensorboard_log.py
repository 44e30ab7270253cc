"""TensorBoard logs in every run folder: `tensorboard --logdir runs` works as Keras users expect.

Keras' own `TensorBoard` callback writes the epoch scalars (losses, metrics,
the learning rate) under `RUN_DIR/tensorboard/train` and `/validation`; after
the run, the pictures the run wrote (augmentation preview, predictions,
confusion matrix, reliability diagram, robustness card) go under
`/pictures`, at the last epoch's step.

Example:
    >>> callbacks.append(epoch_scalars(run_dir))
    >>> log_pictures(run_dir, step=epochs_run - 1)
"""

import pathlib

import keras
import tensorflow as tf

LOG_FOLDER = "tensorboard"


def epoch_scalars(run_dir):
    """Keras' TensorBoard callback on `RUN_DIR/tensorboard`, per epoch (no graph, no profiler: they cost time)."""
    return keras.callbacks.TensorBoard(log_dir=str(pathlib.Path(run_dir) / LOG_FOLDER), write_graph=False,
                                       profile_batch=0, update_freq="epoch")


def log_pictures(run_dir, step):
    """Every PNG at the top of the run folder as an image summary named after its file (`pictures/<stem>`)."""
    run_dir = pathlib.Path(run_dir)
    pictures = sorted(run_dir.glob("*.png"))
    if not pictures:
        return
    writer = tf.summary.create_file_writer(str(run_dir / LOG_FOLDER / "pictures"))
    with writer.as_default():
        for path in pictures:
            image = tf.io.decode_png(path.read_bytes(), channels=3)
            tf.summary.image(path.stem, image[None], step=step)
    writer.close()
