import csv
import json
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import imgpipe
from imgpipe.errors import RecipeError
from imgpipe.engine.recipe import load_recipe
from imgpipe.engine.learning_rate import learning_rate_schedule
from imgpipe.engine.trainer import (Trainer, precision_policy, read_history,
                                    select_strategy)


class StopAfter(keras.callbacks.Callback):
    """Simulates an interruption once `epochs` epochs have completed (and been backed up).

    It keeps the weights the model had when it stopped, which the backup must hold.
    """

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs
        self.weights = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            self.weights = self.model.get_weights()
            raise KeyboardInterrupt("simulated interruption")


class FitRecorder(keras.callbacks.Callback):
    """Records the weights a fit starts from (after the backup callback restored them) and its epochs."""

    def __init__(self):
        super().__init__()
        self.start_weights, self.epochs = None, []

    def on_train_begin(self, logs=None):
        self.start_weights = self.model.get_weights()

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def raw_history_epochs(path):
    """The epoch column of history.csv as written, every row (read_history keeps only the last per epoch)."""
    with open(path, newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def with_callback(monkeypatch, callback):
    """Makes every fit of the trainer also run `callback`, after its own callbacks."""
    from imgpipe.engine import trainer as train

    original = train.Trainer._callbacks
    monkeypatch.setattr(train.Trainer, "_callbacks", lambda self, *a: original(self, *a) + [callback])


@pytest.mark.slow
def test_resume_continues_from_the_backup_to_the_same_total_epochs(class_folder, fast_recipe_args, tmp_path,
                                                                   monkeypatch):
    stop = StopAfter(2)
    with monkeypatch.context() as patch:
        with_callback(patch, stop)
        args = fast_recipe_args + ["train.epochs=4", "train.patience=0"]
        with pytest.raises(KeyboardInterrupt):
            imgpipe.run("classify", args, data=class_folder)
    run_dir = tmp_path / "run"
    assert raw_history_epochs(run_dir / "history.csv") == [0, 1]
    assert not (run_dir / "metrics.json").exists()

    recorder = FitRecorder()
    with_callback(monkeypatch, recorder)
    result = imgpipe.run("classify", resume=True, output=run_dir)
    # A restart from scratch would also end at epochs [0, 1, 2, 3] after read_history's de-duplication;
    # the raw rows, the first epoch and the starting weights tell the two apart.
    assert recorder.epochs == [2, 3]
    assert raw_history_epochs(run_dir / "history.csv") == [0, 1, 2, 3]
    assert len(recorder.start_weights) == len(stop.weights)
    for restored, interrupted in zip(recorder.start_weights, stop.weights):
        np.testing.assert_array_equal(restored, interrupted)
    assert read_history(run_dir / "history.csv")["epoch"] == [0, 1, 2, 3]
    assert result.metrics["epochs_run"] == 4
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 4
    assert not (run_dir / "checkpoints" / "backup_train").exists()


@pytest.mark.slow
def test_resume_refuses_a_finished_run(class_folder, fast_recipe_args, tmp_path):
    imgpipe.run("classify", fast_recipe_args, data=class_folder)
    with pytest.raises(imgpipe.DataError, match="already finished"):
        imgpipe.run("classify", resume=True, output=tmp_path / "run")


class StepRecorder(keras.callbacks.Callback):
    """Records the weights a fit starts from, the learning rate of its first step, and after every step
    the weights and the optimizer's step counter."""

    def __init__(self):
        super().__init__()
        self.initial, self.first_rate, self.step_weights, self.iterations = None, None, [], []

    def on_train_begin(self, logs=None):
        self.initial = self.model.get_weights()

    def on_train_batch_begin(self, batch, logs=None):
        if self.first_rate is None:
            self.first_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_train_batch_end(self, batch, logs=None):
        self.step_weights.append(self.model.get_weights())
        self.iterations.append(int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)))


def seeded_run(monkeypatch, args, data, seed=7):
    """imgpipe.run after `keras.utils.set_random_seed(seed)`: imgpipe seeds its data, not the model's weights."""
    recorder = StepRecorder()
    with monkeypatch.context() as patch:
        with_callback(patch, recorder)
        keras.utils.set_random_seed(seed)
        result = imgpipe.run("classify", args, data=data)
    return result, recorder


# LeNet without dropout and without augmentation: no batch statistics and no randomness of its own.
DETERMINISTIC = ["model.name=lenet", "model.dropout=0", "train.patience=0", "export.enabled=false",
                 "augment.viewpoint=none", "augment.illumination=none", "augment.occlusion=none"]


@pytest.mark.slow
def test_two_devices_take_the_same_steps_as_one_device_with_the_same_global_batch(class_folder, fast_recipe_args,
                                                                                    tmp_path, monkeypatch):
    assert select_strategy(2).num_replicas_in_sync == 2
    # Once seeded, two replicas of 4 images must compute the very gradient of one device's 8, up to the
    # order of float summation (measured: 1.5e-8 apart after 3 AdamW steps). One epoch only: from the
    # second on, Keras' step counter on one device runs one ahead (it counts the end-of-data probe of a
    # dataset of unknown length), so the two schedules part by a step.
    same = fast_recipe_args[:-2] + DETERMINISTIC + ["train.lr_scaling=none"]
    two, two_steps = seeded_run(monkeypatch, same + ["train.devices=2", "train.batch_size=4",
                                                     f"train.run_dir={tmp_path / 'two'}"], class_folder)
    one, one_steps = seeded_run(monkeypatch, same + ["train.devices=1", "train.batch_size=8",
                                                     f"train.run_dir={tmp_path / 'one'}"], class_folder)
    for mine, theirs in zip(two_steps.initial, one_steps.initial):
        np.testing.assert_array_equal(mine, theirs)
    assert two_steps.first_rate == pytest.approx(one_steps.first_rate, rel=1e-6)
    assert two_steps.iterations == one_steps.iterations == [1, 2, 3]  # 24 images, global batch 8
    for two_weights, one_weights in zip(two_steps.step_weights, one_steps.step_weights):
        for mine, theirs in zip(two_weights, one_weights):
            np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6)
    assert two.metrics["val_loss"] == pytest.approx(one.metrics["val_loss"], rel=1e-5)
    # Training moved the weights, so this is not the agreement of two untouched models.
    assert np.abs(two_steps.step_weights[-1][0] - two_steps.initial[0]).max() > 1e-3


@pytest.mark.slow
def test_the_seed_is_what_makes_two_runs_agree(class_folder, fast_recipe_args, tmp_path, monkeypatch):
    """The comparison above holds because the test seeds Keras: imgpipe itself seeds only data and augmentation."""
    # Augmented batches would leave their parallel map in whichever order they finish (deterministic=False).
    args = fast_recipe_args[:-2] + DETERMINISTIC
    _, first = seeded_run(monkeypatch, args + [f"train.run_dir={tmp_path / 'a'}"], class_folder, seed=3)
    _, again = seeded_run(monkeypatch, args + [f"train.run_dir={tmp_path / 'b'}"], class_folder, seed=3)
    _, other = seeded_run(monkeypatch, args + [f"train.run_dir={tmp_path / 'c'}"], class_folder, seed=4)
    for mine, theirs in zip(first.step_weights[-1], again.step_weights[-1]):
        np.testing.assert_array_equal(mine, theirs)
    assert not np.allclose(first.initial[0], other.initial[0])


@pytest.mark.parametrize("scaling, factor", [("linear", 2.0), ("sqrt", 2 ** 0.5), ("none", 1.0)])
def test_lr_scaling_scales_the_peak_rate_for_two_replicas(tmp_path, scaling, factor):
    recipe = load_recipe("classify", ["train.devices=2", "train.learning_rate=0.004", f"train.lr_scaling={scaling}"])
    assert Trainer(recipe, tmp_path).peak_learning_rate == pytest.approx(0.004 * factor, rel=1e-9)


@pytest.mark.slow
def test_the_optimizer_trains_at_the_scaled_peak_rate(class_folder, fast_recipe_args, monkeypatch):
    # 24 training images in 16-image global batches: 2 steps, too few for a warm-up, so step 0 runs at the peak.
    # sqrt gives 0.004 * 1.414: neither the unscaled rate nor the linear one.
    result, steps = seeded_run(monkeypatch, fast_recipe_args + [
        "train.devices=2", "train.learning_rate=0.004", "train.lr_scaling=sqrt", "export.enabled=false"],
        class_folder)
    assert steps.first_rate == pytest.approx(0.004 * 2 ** 0.5, rel=1e-6)


def test_one_mirrored_strategy_per_device_set_so_runs_in_one_process_do_not_collide():
    from imgpipe.engine.trainer import select_strategy

    assert select_strategy(2) is select_strategy(2)
    assert select_strategy(2).num_replicas_in_sync == 2


def test_too_many_devices_is_a_recipe_error():
    with pytest.raises(RecipeError, match="train.devices"):
        select_strategy(64)


@pytest.mark.slow
def test_mixed_precision_path_runs_on_cpu(class_folder, fast_recipe_args):
    assert precision_policy("on") == "mixed_bfloat16"
    assert precision_policy("auto") == "float32"
    result = imgpipe.run("classify", fast_recipe_args + ["train.mixed_precision=on"], data=class_folder)
    assert np.isfinite(result.metrics["val_loss"])
    assert keras.config.dtype_policy().name == "float32"


class PhaseRecorder(keras.callbacks.Callback):
    """Per fit: whether the backbone trains, its weights before and after, the first step's learning rate,
    and the factor the optimizer applies to which of the backbone's variables."""

    def __init__(self):
        super().__init__()
        self.phases = []

    def on_train_begin(self, logs=None):
        backbone = self.model.get_layer("backbone")
        self.phases.append({"trainable": backbone.trainable, "before": backbone.get_weights(), "rate": None})

    def on_train_batch_begin(self, batch, logs=None):
        if self.phases[-1]["rate"] is None:
            optimizer = self.model.optimizer
            slowed = {id(variable) for variable in getattr(optimizer, "backbone_variables", [])}
            backbone_variables = {id(variable) for variable in self.model.get_layer("backbone").trainable_variables}
            self.phases[-1].update(rate=float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
                                   backbone_factor=getattr(optimizer, "backbone_factor", None),
                                   slows_the_backbone=bool(slowed) and slowed == backbone_variables)

    def on_train_end(self, logs=None):
        self.phases[-1]["after"] = self.model.get_layer("backbone").get_weights()


def backbone_weights_file(tmp_path):
    """A MobileNetV3Small backbone and its weights saved to a file: stands in for the ImageNet download."""
    backbone = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3),
                                                   pooling="avg", include_preprocessing=True)
    weights_file = tmp_path / "mobilenet_notop.weights.h5"
    backbone.save_weights(weights_file)
    return backbone, weights_file


@pytest.mark.slow
def test_pretrained_backbone_warm_up_then_fine_tune(class_folder, fast_recipe_args, tmp_path, monkeypatch):
    backbone, weights_file = backbone_weights_file(tmp_path)
    recorder = PhaseRecorder()
    with_callback(monkeypatch, recorder)
    # 24 images in batches of 8: 3 steps per phase, too few for the schedule's warm-up, so step 0 runs at the peak.
    args = fast_recipe_args + ["data.image_size=32", "train.epochs=2", "train.warmup_epochs=1", "train.patience=0",
                               "train.learning_rate=0.002", "train.devices=1", "export.enabled=false",
                               "model.name=mobilenet_v3_small", f"model.weights={weights_file}"]
    result = imgpipe.run("classify", args, data=class_folder)
    run_dir = result.run_dir
    assert (run_dir / "checkpoints" / "warmup_done.weights.h5").exists()
    assert raw_history_epochs(run_dir / "history.csv") == [0, 1]
    warm_up, fine_tune = recorder.phases
    assert not warm_up["trainable"] and fine_tune["trainable"]
    for start, loaded in zip(warm_up["before"], backbone.get_weights()):
        np.testing.assert_array_equal(start, loaded)  # the file's weights, not a fresh initialisation
    for before, after in zip(warm_up["before"], warm_up["after"]):
        np.testing.assert_array_equal(before, after)  # frozen, batch-norm statistics included
    assert any(not np.array_equal(before, after) for before, after in zip(fine_tune["before"], fine_tune["after"]))
    assert warm_up["rate"] == pytest.approx(0.002, rel=1e-6)
    # Fine-tuning: the schedule's peak for the head, a tenth of it for the backbone's variables.
    assert fine_tune["rate"] == pytest.approx(0.002, rel=1e-6)
    assert fine_tune["backbone_factor"] == 0.1 and fine_tune["slows_the_backbone"]


class LayerWeights(keras.callbacks.Callback):
    """Each backbone layer's weights when the last fit began and when it ended."""

    def on_train_begin(self, logs=None):
        self.before = {layer.name: layer.get_weights() for layer in self.model.get_layer("backbone").layers}

    def on_train_end(self, logs=None):
        self.after = {layer.name: layer.get_weights() for layer in self.model.get_layer("backbone").layers}

    def moved(self):
        """Names of the backbone layers whose weights changed in the last fit, in layer order."""
        return [name for name, before in self.before.items()
                if any(not np.array_equal(b, a) for b, a in zip(before, self.after[name]))]


@pytest.mark.slow
def test_fine_tune_fraction_unfreezes_only_the_top_of_the_backbone(class_folder, fast_recipe_args, tmp_path,
                                                                   monkeypatch):
    backbone, weights_file = backbone_weights_file(tmp_path)
    layers = [layer.name for layer in backbone.layers]
    weighted = [layer.name for layer in backbone.layers
                if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)]
    recorder = LayerWeights()
    with_callback(monkeypatch, recorder)
    args = fast_recipe_args + ["data.image_size=32", "train.epochs=2", "train.warmup_epochs=1", "train.patience=0",
                               "train.devices=1", "export.enabled=false", "model.name=mobilenet_v3_small",
                               f"model.weights={weights_file}", "train.fine_tune_fraction=0.5",
                               "train.backbone_rate=0.25"]
    result = imgpipe.run("classify", args, data=class_folder)
    assert result.model.optimizer.backbone_factor == 0.25  # the fine-tuning optimizer takes the recipe's rate
    cut = round(len(layers) * 0.5)
    moved = recorder.moved()
    assert moved, "nothing fine-tuned"
    assert all(layers.index(name) >= cut for name in moved), [n for n in moved if layers.index(n) < cut]
    # Every weighted layer above the cut, batch norm aside, fine-tuned.
    assert set(moved) == {name for name in weighted if layers.index(name) >= cut}


@pytest.mark.slow
def test_a_run_stopped_while_fine_tuning_resumes_there_without_warming_up_again(class_folder, fast_recipe_args,
                                                                                tmp_path, monkeypatch):
    _, weights_file = backbone_weights_file(tmp_path)
    args = fast_recipe_args + ["data.image_size=32", "train.epochs=4", "train.warmup_epochs=1", "train.patience=0",
                               "train.devices=1", "export.enabled=false", "model.name=mobilenet_v3_small",
                               f"model.weights={weights_file}"]
    stop = StopAfter(3)  # epoch 0 warms up, 1 and 2 fine-tune, then the run is interrupted
    with monkeypatch.context() as patch:
        with_callback(patch, stop)
        with pytest.raises(KeyboardInterrupt):
            imgpipe.run("classify", args, data=class_folder)
    run_dir = tmp_path / "run"
    assert raw_history_epochs(run_dir / "history.csv") == [0, 1, 2]

    recorder, phases = FitRecorder(), PhaseRecorder()
    with_callback(monkeypatch, recorder)
    with_callback(monkeypatch, phases)
    imgpipe.run("classify", resume=True, output=run_dir)
    # One fit, the fine-tuning phase from its backup: a warm-up run again would have started at epoch 0, frozen.
    assert recorder.epochs == [3]
    assert len(phases.phases) == 1 and phases.phases[0]["trainable"]
    assert phases.phases[0]["backbone_factor"] == 0.1 and phases.phases[0]["slows_the_backbone"]
    assert len(recorder.start_weights) == len(stop.weights)
    for restored, interrupted in zip(recorder.start_weights, stop.weights):
        np.testing.assert_array_equal(restored, interrupted)
    assert raw_history_epochs(run_dir / "history.csv") == [0, 1, 2, 3]


def test_learning_rate_warms_up_then_decays():
    schedule = learning_rate_schedule(0.01, total_steps=100)
    values = [float(schedule(step)) for step in (0, 5, 50, 99)]
    assert values[0] == 0.0 and values[1] == pytest.approx(0.01)
    assert values[1] > values[2] > values[3] >= 0.0


def test_class_weight_auto_balances_classes():
    from imgpipe.tasks.classify.task import inverse_frequency_weights

    weights = inverse_frequency_weights([0, 0, 0, 1], 2)
    assert weights == {0: pytest.approx(4 / 6, abs=1e-4), 1: 2.0}
    assert 3 * weights[0] == pytest.approx(1 * weights[1], abs=1e-3)


def test_a_backup_cut_short_by_a_kill_falls_back_to_the_one_before(tmp_path):
    from imgpipe.engine.trainer import ResilientBackupAndRestore

    def compiled_model():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        return model

    data = (np.random.default_rng(0).normal(size=(16, 4)).astype("float32"), np.arange(16) % 2)
    backup = tmp_path / "backup"
    backup.mkdir()
    earlier = compiled_model()
    earlier.fit(*data, epochs=1, verbose=0)
    earlier.save_weights(tmp_path / "earlier.weights.h5")
    (tmp_path / "earlier.weights.h5").rename(backup / "latest.weights.h5.bkp")
    (backup / "training_metadata.json.bkp").write_text('{"epoch": 1, "batch": 0}')
    # Killed mid-write: a block of the newest backup never reached the disk. Find a block whose
    # loss makes h5py raise RuntimeError, which Keras' own fallback (OSError only) does not catch.
    complete = (backup / "latest.weights.h5.bkp").read_bytes()
    for offset in range(0, len(complete), 512):
        damaged = complete[:offset] + bytes(len(complete[offset:offset + 512])) + complete[offset + 512:]
        (backup / "latest.weights.h5").write_bytes(damaged)
        try:
            compiled_model().load_weights(backup / "latest.weights.h5")
        except RuntimeError:
            break
        except (OSError, ValueError, KeyError):
            continue
    else:
        pytest.skip("no zeroed block makes this h5py raise RuntimeError")
    (backup / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')

    history = compiled_model().fit(*data, epochs=3, verbose=0,
                                   callbacks=[ResilientBackupAndRestore(str(backup), double_checkpoint=True)])
    assert history.epoch == [1, 2]  # resumed after the previous backup's epoch


class ScriptedValidationScore(keras.callbacks.Callback):
    """A task callback (it runs before early stopping reads the logs) that replaces the monitored metric
    by a script and keeps the weights of every epoch."""

    def __init__(self, metric, values):
        super().__init__()
        self.metric, self.values, self.weights = metric, values, []

    def on_epoch_end(self, epoch, logs=None):
        logs[self.metric] = self.values[epoch]
        self.weights.append(self.model.get_weights())


def test_early_stopping_stops_after_patience_and_restores_the_best_weights(class_folder, fast_recipe_args,
                                                                           monkeypatch):
    from imgpipe.tasks.classify.task import ClassificationTask

    assert ClassificationTask.monitor == ("val_accuracy", "max")
    script = ScriptedValidationScore("val_accuracy", [0.5, 0.9, 0.6, 0.7, 0.95, 1.0])  # best at 1, then two worse
    monkeypatch.setattr(ClassificationTask, "callbacks", lambda self, *args: [script])
    called = time.time()
    result = imgpipe.run("classify", fast_recipe_args + ["train.epochs=6", "train.patience=2",
                                                         "export.enabled=false"], data=class_folder,
                         started=called - 1000)  # as if the command had started 1000 s earlier
    returned = time.time()
    history = read_history(result.run_dir / "history.csv")
    assert raw_history_epochs(result.run_dir / "history.csv") == [0, 1, 2, 3]
    assert history["val_accuracy"] == [0.5, 0.9, 0.6, 0.7]
    assert result.metrics["epochs_run"] == 4
    # wall_seconds: at each epoch's end, counted from `started`; the best epoch's time is the one of epoch 2.
    wall = history["wall_seconds"]
    assert 1000 < wall[0] < wall[1] < wall[2] < wall[3] <= returned - called + 1000
    assert result.metrics["best_epoch"] == 2 and result.metrics["best_epoch_wall_seconds"] == wall[1]
    assert not all(np.array_equal(a, b) for a, b in zip(script.weights[1], script.weights[3]))
    for final, best in zip(result.model.get_weights(), script.weights[1]):
        np.testing.assert_array_equal(final, best)
    checkpoint = keras.models.clone_model(result.model)
    checkpoint.load_weights(result.run_dir / "checkpoints" / "best.weights.h5")
    for saved, best in zip(checkpoint.get_weights(), script.weights[1]):
        np.testing.assert_array_equal(saved, best)


def test_epochs_whose_score_is_nan_are_waited_through_not_taken_as_the_best(class_folder, fast_recipe_args,
                                                                           monkeypatch):
    """A metric scored every few epochs is NaN until its first scoring (PeriodicScores), then repeats."""
    from imgpipe.tasks.classify.task import ClassificationTask

    nan = float("nan")
    script = ScriptedValidationScore("val_accuracy", [nan, nan, 0.6, 0.6, 0.9, 0.9, 0.9, 0.9, 0.95, 0.95])
    monkeypatch.setattr(ClassificationTask, "callbacks", lambda self, *args: [script])
    result = imgpipe.run("classify", fast_recipe_args + ["train.epochs=10", "train.patience=3",
                                                         "export.enabled=false"], data=class_folder)
    # the first 0.9 is the best; three repeats of it are no improvement, so the run stops after them
    assert raw_history_epochs(result.run_dir / "history.csv") == list(range(8))
    assert result.metrics["best_epoch"] == 5
    assert_weights_equal(result.model, script.weights[4])
    checkpoint = keras.models.clone_model(result.model)
    checkpoint.load_weights(result.run_dir / "checkpoints" / "best.weights.h5")
    assert_weights_equal(checkpoint, script.weights[4])


def test_detection_follows_map50_only_where_it_is_scored_and_patience_outlasts_a_scoring():
    from imgpipe.tasks.detect.task import DetectionTask

    task = DetectionTask()
    assert task.monitor_for(load_recipe("detect")) == ("val_map50", "max")  # map_every 5, patience 20, 60 epochs
    for overrides in (["detect.map_every=0"],  # scored only after training
                      ["train.epochs=4"],  # the first scoring would come after the last epoch
                      ["train.patience=4"]):  # would stop at the first scoring's fourth repeat
        assert task.monitor_for(load_recipe("detect", overrides=overrides)) == ("val_loss", "min")
    assert task.monitor_for(load_recipe("detect", overrides=["train.patience=0"])) == ("val_map50", "max")
    assert task.monitor_for(load_recipe("detect"), multi_worker=True) == ("val_loss", "min")


class MonitorSeen(Exception):
    pass


@pytest.mark.slow
def test_detection_keeps_the_epoch_of_the_best_map50_on_one_worker_only(tmp_path, monkeypatch):
    from imgpipe.data.demo import make_detection_folder
    from imgpipe.engine import runner
    from imgpipe.engine.trainer import Trainer
    from imgpipe.tasks.detect.task import DetectionTask

    make_detection_folder(tmp_path / "data", images=12, size=64, seed=3)
    script = ScriptedValidationScore("val_map50", [0.5, 0.1, 0.2, 0.3, 0.4, 0.45])
    monkeypatch.setattr(DetectionTask, "callbacks", lambda self, *args: [script])
    monitors, fit = [], Trainer.fit

    def recording_fit(self, *args, **kwargs):
        monitors.append(kwargs["monitor"])
        if len(monitors) > 1:
            raise MonitorSeen
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", recording_fit)
    args = ["train.epochs=6", "train.patience=2", "train.batch_size=4", "train.verbose=0", "detect.map_every=1",
            "data.image_size=64", "evaluate.robustness=false", "export.enabled=false", "train.suspect_labels=none",
            "train.tensorboard=false"]
    result = imgpipe.run("detect", args + [f"train.run_dir={tmp_path / 'run'}"], data=tmp_path / "data")
    assert monitors == [("val_map50", "max")]
    assert raw_history_epochs(result.run_dir / "history.csv") == [0, 1, 2]
    assert result.metrics["best_epoch"] == 1
    assert_weights_equal(result.model, script.weights[0])
    checkpoint = keras.models.clone_model(result.model)
    checkpoint.load_weights(result.run_dir / "checkpoints" / "best.weights.h5")
    assert_weights_equal(checkpoint, script.weights[0])
    # in a cluster each worker would score mAP alone: the loss, which Keras all-reduces
    monkeypatch.setattr(runner, "is_multi_worker", lambda strategy: True)
    with pytest.raises(MonitorSeen):
        imgpipe.run("detect", args + [f"train.run_dir={tmp_path / 'cluster'}"], data=tmp_path / "data")
    assert monitors[1] == ("val_loss", "min")


def test_a_nan_after_the_first_score_counts_as_no_improvement():
    """A diverged validation loss still stops the run after `patience` epochs, as in Keras."""
    from imgpipe.engine.early_stopping import CeilingEarlyStopping

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    stop = CeilingEarlyStopping(monitor="val_loss", mode="min", patience=2)
    stop.set_model(model)
    stop.on_train_begin()
    for epoch, value in enumerate([1.0, float("nan"), float("nan")]):
        stop.on_epoch_end(epoch, {"val_loss": value})
    assert model.stop_training and stop.stopped_epoch == 2


def test_periodic_scores_start_each_fit_unscored():
    """One instance serves the warm-up and the fine-tuning: the warm-up's score must not stand for later weights."""
    from imgpipe.engine.periodic_scores import PeriodicScores

    scores = PeriodicScores(task=None, val_ds=None, metadata={}, every=5, keys=("map50",))
    scores.latest = {"map50": 0.7}  # what a scoring in the warm-up left
    scores.on_train_begin()
    logs = {}
    scores.on_epoch_end(2, logs)  # not a scoring epoch
    assert np.isnan(logs["val_map50"])


@pytest.mark.parametrize("mirrored", [False, True])
def test_periodic_scores_score_the_weights_of_each_epoch_with_one_trace(mirrored):
    """The scoring graph is traced once and reads the live weights, so each epoch's score is that epoch's model
    (also when the weights are mirrored on two devices, as `train.devices: 2` makes them)."""
    import contextlib

    import tensorflow as tf

    from imgpipe.engine.periodic_scores import PeriodicScores

    class MeanOutput:
        def answers(self, forward, images, metadata):
            return {"output": np.asarray(forward(images, training=False)).reshape(len(images))}

        def truth(self, image, target):
            return target

        def score(self, answers, truths, metadata):
            return {"mean": float(np.mean([answer["output"] for answer in answers]))}

    inference_traces = []

    class CountInferenceTraces(keras.layers.Layer):
        def call(self, x, training=None):
            if not tf.executing_eagerly() and not training:
                inference_traces.append(1)
            return x

    keras.utils.set_random_seed(0)
    strategy = select_strategy(2) if mirrored else None  # the process's one strategy over the two CPUs
    with strategy.scope() if strategy else contextlib.nullcontext():
        inputs = keras.Input((4, 4, 3))
        x = keras.layers.BatchNormalization()(keras.layers.Conv2D(2, 1)(CountInferenceTraces()(inputs)))
        model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(x)))
        model.compile(keras.optimizers.SGD(0.1), "mse")
    images = np.random.default_rng(0).uniform(0, 255, (10, 4, 4, 3)).astype("float32")
    val_ds = tf.data.Dataset.from_tensor_slices((images, np.zeros(10, "float32"))).batch(4)
    scores = PeriodicScores(MeanOutput(), val_ds, {}, every=1, keys=("mean",))
    seen, traces_after = [], []
    inference_traces.clear()  # building the model traced its layers once

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((logs["val_mean"], float(np.mean(model(images, training=False)))))
            traces_after.append(len(inference_traces))  # the eager call above is not a trace

    model.fit(images[:8], np.full(8, 3.0, "float32"), epochs=3, batch_size=4, verbose=0, callbacks=[scores, Record()])
    assert len({score for score, _ in seen}) == 3  # the weights moved, and each scoring saw them
    np.testing.assert_allclose([score for score, _ in seen], [direct for _, direct in seen], rtol=1e-5)
    assert traces_after[0] == traces_after[1] == traces_after[2]  # only the first scoring traced
    if not mirrored:  # a strategy traces more of the model (its symbolic build); the count is kept plain
        assert len(inference_traces) == 2  # batches of 4, then the last of 2: twice, not at each scoring


def test_the_cli_clock_starts_with_the_process_not_with_the_call():
    script = ("import time; time.sleep(1.5); from imgpipe.engine.wall_clock import process_start_time; "
              "print(time.time() - process_start_time())")
    elapsed = float(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                   check=True).stdout)
    assert 1.5 <= elapsed < 10


def test_training_stops_at_the_epoch_that_reaches_a_perfect_score(class_folder, fast_recipe_args, monkeypatch):
    from imgpipe.tasks.classify.task import ClassificationTask

    assert ClassificationTask.monitor_ceiling == 1.0
    script = ScriptedValidationScore("val_accuracy", [0.5, 1.0, 0.9, 1.0, 1.0, 1.0])
    monkeypatch.setattr(ClassificationTask, "callbacks", lambda self, *args: [script])
    result = imgpipe.run("classify", fast_recipe_args + ["train.epochs=6", "train.patience=10",
                                                         "export.enabled=false"], data=class_folder)
    assert raw_history_epochs(result.run_dir / "history.csv") == [0, 1]  # patience alone would run all 6
    assert result.metrics["best_epoch"] == 2
    for final, best in zip(result.model.get_weights(), script.weights[1]):
        np.testing.assert_array_equal(final, best)


def pretrained_args(fast_recipe_args, weights_file, epochs, warmup_epochs):
    return fast_recipe_args + ["data.image_size=32", f"train.epochs={epochs}", f"train.warmup_epochs={warmup_epochs}",
                               "train.patience=10", "train.devices=1", "export.enabled=false",
                               "model.name=mobilenet_v3_small", f"model.weights={weights_file}"]


def assert_weights_equal(model, expected):
    for found, wanted in zip(model.get_weights(), expected):
        np.testing.assert_array_equal(found, wanted)


@pytest.mark.slow
def test_a_warm_up_that_reaches_a_perfect_score_is_not_fine_tuned(class_folder, fast_recipe_args, tmp_path,
                                                                 monkeypatch):
    from imgpipe.tasks.classify.task import ClassificationTask

    _, weights_file = backbone_weights_file(tmp_path)
    script = ScriptedValidationScore("val_accuracy", [0.5, 1.0, 0.9, 1.0, 1.0, 1.0])
    monkeypatch.setattr(ClassificationTask, "callbacks", lambda self, *args: [script])
    result = imgpipe.run("classify", pretrained_args(fast_recipe_args, weights_file, 6, 2), data=class_folder)
    assert raw_history_epochs(result.run_dir / "history.csv") == [0, 1]
    assert result.metrics["best_epoch"] == 2
    assert not result.model.get_layer("backbone").trainable
    assert_weights_equal(result.model, script.weights[1])

    # Killed after the warm-up's weights were kept but before the trained weights and metrics were written:
    # --resume neither fine-tunes nor fails to evaluate the model it loads.
    for finished in [result.run_dir / "metrics.json", *(result.run_dir / "checkpoints").glob("trained_*")]:
        finished.unlink()
    resumed = imgpipe.run("classify", resume=True, output=result.run_dir)
    assert raw_history_epochs(result.run_dir / "history.csv") == [0, 1]
    assert resumed.metrics["val_accuracy"] == result.metrics["val_accuracy"]
    assert_weights_equal(resumed.model, script.weights[1])


@pytest.mark.slow
def test_a_fine_tuning_that_never_beats_the_warm_up_returns_the_warm_up(class_folder, fast_recipe_args, tmp_path,
                                                                       monkeypatch):
    """Each phase's early stopping knows only its own epochs; the run keeps the best of both."""
    from imgpipe.tasks.classify.task import ClassificationTask

    _, weights_file = backbone_weights_file(tmp_path)
    script = ScriptedValidationScore("val_accuracy", [0.9, 0.5, 0.6, 0.7])
    monkeypatch.setattr(ClassificationTask, "callbacks", lambda self, *args: [script])
    result = imgpipe.run("classify", pretrained_args(fast_recipe_args, weights_file, 4, 1), data=class_folder)
    assert raw_history_epochs(result.run_dir / "history.csv") == [0, 1, 2, 3]  # fine-tuning ran
    assert result.metrics["best_epoch"] == 1
    assert not all(np.array_equal(a, b) for a, b in zip(script.weights[0], script.weights[3]))
    assert_weights_equal(result.model, script.weights[0])
    result.model.set_weights(script.weights[3])
    result.model.load_weights(result.run_dir / "checkpoints" / "best.weights.h5")  # what `imgpipe export` reads
    assert_weights_equal(result.model, script.weights[0])
