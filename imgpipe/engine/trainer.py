"""The one trainer every task uses: strategy, precision, optimizer, callbacks, `model.fit`, resume.

A task says what its model, loss and metrics are; the trainer decides how to
train them: on every GPU of the machine (`MirroredStrategy`), in mixed
precision where the hardware gains from it, with a warm-up + cosine learning
rate, early stopping that restores the best weights, and a backup every epoch
so that `--resume` continues an interrupted run to the same total epochs.

With pretrained weights the backbone is first frozen for `train.warmup_epochs`
while the new head learns, then everything is fine-tuned (or only the top
`train.fine_tune_fraction` of the backbone's layers): the backbone at
`train.backbone_rate` times the learning rate, the layers built on it at the full rate
(`imgpipe.engine.backbone_rate`). Each phase has its own backup, so a run can
be resumed in either.

Example:
    >>> trainer = Trainer(recipe, run_dir)
    >>> with trainer.strategy.scope():
    ...     model = build_model()
    >>> history = trainer.fit(model, compile_settings, train_ds, val_ds, steps_per_epoch)
"""

import contextlib
import csv
import functools
import json
import logging
import math
import os
import pathlib
import shutil
import tempfile
import time

import keras
import tensorflow as tf

from imgpipe.engine.backbone_rate import BackboneRateAdamW
from imgpipe.engine.batch_norm_momentum import fit_batch_norm_momentum
from imgpipe.engine.best_checkpoint import BestWeightsCheckpoint
from imgpipe.engine.distributed.cluster import cluster_from_environment
from imgpipe.engine.early_stopping import CeilingEarlyStopping, at_least_as_good
from imgpipe.engine.learning_rate import learning_rate_schedule
from imgpipe.engine.progress_bar import KnownStepsProgbarLogger
from imgpipe.engine.tensorboard_log import epoch_scalars
from imgpipe.engine.time_budget import TimeBudget
from imgpipe.errors import RecipeError
from imgpipe.models.backbones import set_trainable
from imgpipe.engine.distributed.keras_multiworker import AverageMovingStatistics, is_multi_worker, multi_worker_fit
from imgpipe.engine.wall_clock import WallSecondsLogger, time_to_best
from imgpipe.engine.writable import write_atomically

log = logging.getLogger("imgpipe")

BACKBONE_LAYER = "backbone"


def select_strategy(devices="auto"):
    """The `tf.distribute` strategy for `train.devices`.

    'auto' mirrors over all GPUs when there are several; a count N mirrors over
    the first N GPUs (or N logical CPU devices on a machine without GPUs, which
    is how the multi-device path is tested); a list names the devices. When
    `TF_CONFIG` describes a cluster of several workers, every worker trains with
    `MultiWorkerMirroredStrategy` over its local GPUs (or its CPU), whatever
    `devices` says; it must then be called before TensorFlow runs its first
    operation (`imgpipe.run` does).

    Example:
        >>> select_strategy(["/cpu:0", "/cpu:1"]).num_replicas_in_sync
        2
    """
    if cluster_from_environment() is not None:
        return _multi_worker()
    gpus = tf.config.list_logical_devices("GPU")
    if devices == "auto":
        names = [gpu.name for gpu in gpus]
    elif isinstance(devices, int):
        pool = gpus or tf.config.list_logical_devices("CPU")
        if devices > len(pool):
            kind = "GPUs" if gpus else "CPU devices"
            raise RecipeError(f"train.devices: asked for {devices} devices, this machine has {len(pool)} {kind}")
        names = [device.name for device in pool[:devices]]
    else:
        names = list(devices)
    if len(names) > 1:
        return _mirrored(tuple(names))
    if len(names) == 1 and devices != "auto":
        return tf.distribute.OneDeviceStrategy(names[0])
    return tf.distribute.get_strategy()


@functools.lru_cache(maxsize=None)
def _mirrored(names):
    """One MirroredStrategy per device set and process.

    A second MirroredStrategy over the same devices restarts the collective
    instance keys, and its all-reduces then collide with the first one's
    ("Shape mismatch in the collective instance"): a notebook running two
    trainings would fail on the second. Reusing the strategy avoids that.
    """
    return tf.distribute.MirroredStrategy(devices=list(names))


@functools.lru_cache(maxsize=None)
def _multi_worker():
    """The process's one MultiWorkerMirroredStrategy (collectives are configured once, at start-up)."""
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        raise RecipeError(f"TF_CONFIG: multi-worker training must start before TensorFlow runs anything "
                          f"(in a notebook, create the run first): {error}") from None


def precision_policy(setting="auto"):
    """'mixed_float16' on GPUs with tensor cores (compute capability 7.0+), else 'float32'.

    'on' forces mixed precision ('mixed_bfloat16' on a CPU, which is how the
    path is tested); 'off' keeps float32.
    """
    if setting == "off":
        return "float32"
    gpus = tf.config.list_physical_devices("GPU")
    if setting == "on":
        return "mixed_float16" if gpus else "mixed_bfloat16"
    for gpu in gpus:
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if capability >= (7, 0):
            return "mixed_float16"
    return "float32"


@contextlib.contextmanager
def dtype_policy(name):
    """Sets Keras' global dtype policy for the block and restores the previous one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class Trainer:
    """Trains a compiled-by-task model with `model.fit`, on the strategy it chose.

    Args:
        recipe: the resolved `Recipe` (train section used).
        run_dir: pathlib.Path of the run directory (checkpoints, history.csv).
        resume: bool, continue from the backups in `run_dir`.
        started: `time.time()` the `wall_seconds` column counts from (default: now).
    """

    def __init__(self, recipe, run_dir, resume=False, backup_from=None, started=None):
        self.settings = recipe.train
        self.run_dir = pathlib.Path(run_dir)
        self.resume = resume
        self.strategy = select_strategy(self.settings.devices)
        self.policy = precision_policy(self.settings.mixed_precision)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        # A worker other than the chief restores from the chief's backups and writes none, so that
        # after a restart every worker resumes at the same epoch with the same weights.
        self.backup_from = pathlib.Path(backup_from) if backup_from else None
        self.started = time.time() if started is None else started

    @property
    def replicas(self):
        return self.strategy.num_replicas_in_sync

    @property
    def peak_learning_rate(self):
        """`train.learning_rate` scaled for the replicas by `train.lr_scaling` (the batch grows with them)."""
        factor = {"linear": self.replicas, "sqrt": self.replicas ** 0.5, "none": 1}[self.settings.lr_scaling]
        return self.settings.learning_rate * factor

    @property
    def global_batch_size(self):
        """Per-device batch times replicas: each device keeps the batch size the recipe names."""
        return self.settings.batch_size * self.replicas

    def fit(self, model, compile_settings, train_ds, val_ds, steps_per_epoch, monitor=("val_loss", "min"),
            class_weight=None, callbacks=(), fixed_steps=None, pretrained=True, monitor_ceiling=None):
        """Compiles and fits `model` (built under `self.strategy.scope()`), in one or two phases.

        Args:
            model: keras.Model built in the strategy scope.
            compile_settings: dict of `loss`, `metrics` (and anything else for `compile`).
            train_ds, val_ds: batched datasets.
            steps_per_epoch: int, batches per training epoch (for the schedule).
            monitor: (metric name, 'min' or 'max') for early stopping and the best checkpoint.
            class_weight: optional {class index: weight}.
            callbacks: the task's own callbacks, run before the history is written.
            fixed_steps: optional (training, validation) steps per epoch, for datasets that repeat
                (multi-worker training, where every worker must take the same number of steps).
            pretrained: the backbone starts from pretrained weights; only then is it frozen for the
                warm-up (a randomly initialised backbone frozen would only hold the head back).
            monitor_ceiling: the best value `monitor` can take; a phase stops at the epoch reaching it.

        Returns:
            dict with `history` (metric -> list, all epochs of this run including
            resumed ones), `epochs_run`, `train_seconds`, `warmup_epochs`, the lowest
            `batch_norm_momentum` it set (None for none), `time_budget` (`TimeBudget.record`,
            None without one), and `best_epoch` with its
            `best_epoch_wall_seconds` (`imgpipe.engine.wall_clock.time_to_best`).
        """
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        epochs = self.settings.epochs
        backbone = _find_backbone(model)
        warmup = min(self.settings.warmup_epochs, epochs - 1) if backbone is not None and pretrained else 0
        warmup_done = self.checkpoint_dir / "warmup_done.weights.h5"
        warmup_best = self.checkpoint_dir / "warmup_done.json"
        # Keras deletes its backup when fit ends, so without this a run killed in its evaluation, robustness
        # card or export would train again from epoch 0 on --resume. Not in a multi-worker run: every worker
        # must take the same path, and only the chief writes.
        trained = self.checkpoint_dir / f"trained_{epochs}_epochs.weights.h5"  # not for a resume to more epochs
        steps = fixed_steps[0] if fixed_steps else steps_per_epoch
        momentum = fit_batch_norm_momentum(model, steps)
        if momentum["layers"]:
            log.info("batch norm momentum %s in %d layers (%d steps an epoch)", momentum["momentum"],
                     momentum["layers"], steps)
        budget = self._time_budget()
        budget_record = self.checkpoint_dir / "time_budget.json"
        started = time.perf_counter()
        if self.resume and trained.exists() and not is_multi_worker(self.strategy):
            log.info("resume: training had finished; its final weights come from %s", trained)
            model.load_weights(trained)
            self._compile_for_evaluation(model, compile_settings)
            if budget is not None and budget_record.exists():  # where the budget stopped that training
                budget.stopped_after = json.loads(budget_record.read_text())["stopped_after_epoch"]
        else:
            warmed = None  # the warm-up's best monitored value, as its weights in warmup_done score it
            if warmup and self.resume and warmup_done.exists():
                model.load_weights(warmup_done)
                warmed = _read_best(warmup_best, monitor)
            elif warmup:
                set_trainable(backbone, False)
                warmed = self._fit_phase(model, compile_settings, train_ds, val_ds, "warmup", 0, warmup,
                                         self.peak_learning_rate, steps_per_epoch, monitor, class_weight, callbacks,
                                         fixed_steps, monitor_ceiling=monitor_ceiling, budget=budget)
                save_weights_atomically(model, warmup_done)
                _write_best(warmup_best, monitor, warmed)
            # Early stopping across the two phases. Not in a multi-worker run, where every worker must take the
            # same path and a kill can leave the workers' records one epoch apart.
            across = warmed is not None and bool(self.settings.patience) and not is_multi_worker(self.strategy)
            if across and monitor_ceiling is not None and at_least_as_good(warmed, monitor_ceiling, monitor[1]):
                log.info("the warm-up reached the best %s there is (%s): no fine-tuning", monitor[0], monitor_ceiling)
                self._compile_for_evaluation(model, compile_settings)  # a resumed model was never compiled
            elif budget is not None and not budget.room_for_an_epoch():  # no fine-tuning epoch fits
                if budget.stopped_after is None:
                    budget.stop(budget.epochs_run or warmup)  # early stopping may have ended the warm-up sooner
            else:
                if backbone is not None and pretrained:  # its batch norm stays frozen (inference mode) while tuning
                    set_trainable(backbone, True, self.settings.fine_tune_fraction)
                tuned = self._fit_phase(model, compile_settings, train_ds, val_ds, "train", warmup, epochs,
                                        self.peak_learning_rate, steps_per_epoch, monitor, class_weight, callbacks,
                                        fixed_steps, slow_backbone=backbone if warmup else None,
                                        monitor_ceiling=monitor_ceiling, budget=budget)
                if across and tuned is not None and at_least_as_good(warmed, tuned, monitor[1]):
                    log.info("fine-tuning never beat the warm-up's %s %.4f: the run keeps the warm-up's weights",
                             monitor[0], warmed)
                    model.load_weights(warmup_done)
                    save_weights_atomically(model, self.checkpoint_dir / "best.weights.h5")
            if not is_multi_worker(self.strategy):
                if budget is not None:
                    record = json.dumps(budget.record())
                    write_atomically(budget_record, lambda partial: partial.write_text(record))
                save_weights_atomically(model, trained)
        history = read_history(self.run_dir / "history.csv")
        return {
            "history": history,
            "epochs_run": len(history.get("epoch", [])),
            "train_seconds": round(time.perf_counter() - started, 2),
            "warmup_epochs": warmup,
            "batch_norm_momentum": momentum["momentum"],
            "time_budget": budget.record() if budget is not None else None,
            **time_to_best(history, monitor),
        }

    def _time_budget(self):
        """The `TimeBudget` of `train.time_budget`, counted from the command's start; None without one."""
        if self.settings.time_budget is None:
            return None
        if is_multi_worker(self.strategy):
            raise RecipeError("train.time_budget: not in a multi-worker job (each worker would plan its epochs "
                              "from its own clock); set train.epochs instead")
        return TimeBudget(self.settings.time_budget, self.started)

    def _compile_for_evaluation(self, model, compile_settings):
        """Evaluation needs the loss and metrics; the optimizer is never used."""
        with self.strategy.scope():
            model.compile(optimizer=keras.optimizers.AdamW(), **compile_settings)

    def _fit_phase(self, model, compile_settings, train_ds, val_ds, phase, first_epoch, last_epoch, peak,
                   steps_per_epoch, monitor, class_weight, task_callbacks, fixed_steps=None, slow_backbone=None,
                   monitor_ceiling=None, budget=None):
        """One `model.fit` from `first_epoch` to `last_epoch`; `slow_backbone` trains at `train.backbone_rate`;
        with a `budget` (`TimeBudget`), the epochs that fit in it.

        Returns the best `monitor` value its early stopping saw, the one of the weights it restored (None
        without early stopping, or when it saw none: a resumed phase sees only the epochs after the resume).
        """
        with self.strategy.scope():
            schedule = learning_rate_schedule(peak, steps_per_epoch * (last_epoch - first_epoch))
            if slow_backbone is None:
                optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=self.settings.weight_decay)
            else:
                optimizer = BackboneRateAdamW(slow_backbone.trainable_variables, self.settings.backbone_rate,
                                              learning_rate=schedule, weight_decay=self.settings.weight_decay)
            model.compile(optimizer=optimizer, **compile_settings)
        callbacks = self._callbacks(phase, monitor, task_callbacks, monitor_ceiling)
        if budget is not None:
            plan_file = self.checkpoint_dir / f"time_budget_{phase}.json"
            if not self.resume:
                plan_file.unlink(missing_ok=True)  # a plan from an earlier run in this folder
            callbacks.append(budget.callback(schedule, steps_per_epoch, first_epoch, last_epoch, plan_file))
        with multi_worker_fit(model, self.strategy):
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=last_epoch,
                initial_epoch=first_epoch,
                steps_per_epoch=fixed_steps[0] if fixed_steps else None,
                validation_steps=fixed_steps[1] if fixed_steps else None,
                callbacks=callbacks + [KnownStepsProgbarLogger(fixed_steps[0] if fixed_steps else steps_per_epoch)],
                class_weight=class_weight,
                shuffle=False,  # the pipeline shuffles, seeded
                verbose=self.settings.verbose,
            )
        stopping = [callback for callback in callbacks if isinstance(callback, CeilingEarlyStopping)]
        best = stopping[0].best if stopping and stopping[0].best_weights is not None else None
        return None if best is None or math.isnan(best) else float(best)

    def _callbacks(self, phase, monitor, task_callbacks=(), monitor_ceiling=None):
        metric, mode = monitor
        history_csv = self.run_dir / "history.csv"
        callbacks = ([AverageMovingStatistics(self.strategy)] if is_multi_worker(self.strategy) else []) + \
            list(task_callbacks) + [
            WallSecondsLogger(self.started),  # before the CSVLogger, which writes the column
            # Optimizer state and epoch counter, every epoch; two copies so a
            # kill during the write still leaves a loadable one.
            ResilientBackupAndRestore(str(self.checkpoint_dir / f"backup_{phase}"), double_checkpoint=True)
            if self.backup_from is None else ChiefBackupReader(str(self.backup_from / f"backup_{phase}")),
            keras.callbacks.CSVLogger(str(history_csv), append=True),
            # The last epoch's weights are in the backup while training runs; a third
            # copy every epoch cost 0.2 s per epoch of a 7M-parameter U-Net.
            LastWeightsAtEnd(self.checkpoint_dir / "last.weights.h5"),
            BestWeightsCheckpoint(
                str(self.checkpoint_dir / "best.weights.h5"),
                save_weights_only=True,
                save_best_only=True,
                monitor=metric,
                mode=mode,
            ),
            keras.callbacks.TerminateOnNaN(),
        ]
        # One log per job: a worker other than the chief (it restores from the chief's backup) writes none,
        # as its weights and metrics are the chief's.
        if self.settings.tensorboard and self.backup_from is None:
            callbacks.append(epoch_scalars(self.run_dir))
        if self.settings.patience:
            callbacks.append(
                CeilingEarlyStopping(monitor=metric, mode=mode, patience=self.settings.patience,
                                     restore_best_weights=True, ceiling=monitor_ceiling)
            )
        return callbacks


def save_weights_atomically(model, path):
    """`model.save_weights(path)` written beside it and renamed: a kill mid-write leaves no half file at `path`."""
    write_atomically(path, model.save_weights)


class ResilientBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' `BackupAndRestore`, falling back to the previous backup whatever error the latest one raises.

    Keras falls back only on `OSError`; a weights file whose blocks were not
    all written when the process was killed makes h5py raise `RuntimeError`
    ("addr overflow", seen when a worker of a multi-worker run was killed) or
    Keras `ValueError`/`KeyError`, and the resumed run would stop there.
    """

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except (OSError, RuntimeError, ValueError, KeyError) as error:
            if not os.path.exists(self._prev_weights_path):
                raise
            log.warning("backup %s is unreadable (%s); resuming from the one before it", self._weights_path,
                        str(error).splitlines()[0])
            shutil.copyfile(self._prev_weights_path, self._weights_path)
            if os.path.exists(self._prev_training_metadata_path):
                shutil.copyfile(self._prev_training_metadata_path, self._training_metadata_path)
            self._load_model()


class ChiefBackupReader(ResilientBackupAndRestore):
    """A non-chief worker's backup callback: restores from the chief's backup, never writes or deletes it.

    Its weights are the chief's at every epoch end (training is synchronous), so
    the chief's backup is its own. When the newest backup is unreadable it
    reads the one before without copying, as the chief does.
    """

    def __init__(self, backup_dir):
        super().__init__(backup_dir, double_checkpoint=True)

    def on_train_begin(self, logs=None):
        try:
            self._load_model()
        except (OSError, RuntimeError, ValueError, KeyError):
            if not os.path.exists(self._prev_weights_path):
                raise
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            with tempfile.TemporaryDirectory() as folder:  # Keras loads only files named *.weights.h5
                copy = shutil.copyfile(self._prev_weights_path, os.path.join(folder, "previous.weights.h5"))
                self.model.load_weights(copy)
            if os.path.exists(self._prev_training_metadata_path):
                with open(self._prev_training_metadata_path) as handle:
                    self.model._initial_epoch = json.loads(handle.read())["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


class LastWeightsAtEnd(keras.callbacks.Callback):
    """Writes `last.weights.h5` when a training phase ends, before early stopping restores the best weights.

    An interrupted run has no such file; `imgpipe.engine.run_folder.load_run` then takes
    the last epoch's weights from the `--resume` backup.
    """

    def __init__(self, path):
        super().__init__()
        self.path = pathlib.Path(path)

    def on_train_end(self, logs=None):
        self.model.save_weights(str(self.path), overwrite=True)


def _read_best(path, monitor):
    """The warm-up's best `monitor` value recorded in `path` by `_write_best`, or None."""
    try:
        record = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record.get("best") if record.get("monitor") == monitor[0] else None


def _write_best(path, monitor, best):
    """Records the warm-up's best value beside its weights, so a resumed run compares what those weights
    scored (history.csv can hold epochs from before a kill that the weights no longer reflect)."""
    write_atomically(path, lambda partial: partial.write_text(json.dumps({"monitor": monitor[0], "best": best})))


def read_history(path):
    """history.csv as {column: [values]}; a resumed run's repeated epochs keep their last row."""
    path = pathlib.Path(path)
    if not path.exists():
        return {}
    rows = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("epoch") not in (None, "", "epoch"):
                rows[int(row["epoch"])] = row
    columns = {}
    for epoch in sorted(rows):
        for key, value in rows[epoch].items():
            columns.setdefault(key, []).append(float(value) if value not in ("", None) else float("nan"))
    return columns


def _find_backbone(model):
    """The layer named `backbone`, looked for in nested models too (a colorizer wraps a segmenter)."""
    for layer in model.layers:
        if layer.name == BACKBONE_LAYER:
            return layer
        if isinstance(layer, keras.Model):
            found = _find_backbone(layer)
            if found is not None:
                return found
    return None


def make_deterministic(seed):
    """`train.deterministic`: seeds Python, NumPy, TensorFlow and Keras and turns on TensorFlow's op
    determinism, so two runs on the same machine give the same weights and metrics.

    Op determinism stays on for the rest of the process (TensorFlow cannot turn it off) and makes some
    ops slower; the augmentation is seeded per image either way.
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def training_devices(trainer):
    """The devices the trainer's strategy trains on; the default strategy's is the first GPU, else the CPU."""
    try:
        return list(trainer.strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy has no device list
        return [(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))[0].name]


def environment_summary(trainer):
    """One line on where training runs, for the log."""
    devices = ", ".join(training_devices(trainer))
    return f"training on {trainer.replicas} replica(s) [{devices}], policy {trainer.policy}, " \
           f"global batch {trainer.global_batch_size}, pid {os.getpid()}"
