"""Task scores every N epochs during training, as epoch metrics (mAP is not a Keras metric).

Scores such as pycocotools' mAP need the whole validation split decoded and
matched, so they cannot be a per-batch Keras metric; this callback runs the
task's one scoring path (`Task.answers` + `Task.score`) every `every` epochs.

Example:
    >>> PeriodicScores(task, val_ds, metadata, every=5, keys=("map", "map50"))
"""

import keras

from imgpipe.engine.inference import CompiledForward
from imgpipe.engine.scoring import model_answers


class PeriodicScores(keras.callbacks.Callback):
    """Adds `val_<key>` for each of `keys` of `task.score` to the epoch logs, computed every `every` epochs.

    Every epoch gets the keys (NaN until the first computation) because
    Keras' CSV logger fixes its columns at the first epoch. The model's forward
    pass is traced once and reused by every scoring (on raccoon detection a new
    trace and batch-norm fold cost 0.6 s of the 1.1 s a scoring took).
    """

    def __init__(self, task, val_ds, metadata, every, keys):
        super().__init__()
        self.task, self.val_ds, self.metadata, self.every, self.keys = task, val_ds, metadata, every, tuple(keys)
        self.forward = None
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        # One instance serves both phases of a pretrained fit: a score of the warm-up's weights must not
        # stand for the first fine-tuned epochs'.
        self.latest = {key: float("nan") for key in self.keys}

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            if self.forward is None or self.forward.model is not self.model:
                self.forward = CompiledForward(self.model, fold=False)
            answers, truths = model_answers(self.task, self.forward, self.val_ds, self.metadata)
            scores = self.task.score(answers, truths, self.metadata)
            self.latest = {key: scores[key] for key in self.keys}
        if logs is not None:
            logs.update({f"val_{key}": value for key, value in self.latest.items()})
