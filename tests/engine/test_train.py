import json

import keras
import numpy as np
import pytest

import imgpipe
from imgpipe.errors import RecipeError
from imgpipe.engine.trainer import learning_rate_schedule, precision_policy, read_history, select_strategy


class StopAfter(keras.callbacks.Callback):
    """Simulates an interruption once `epochs` epochs have completed (and been backed up)."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt("simulated interruption")


def test_resume_continues_to_the_same_total_epochs(class_folder, fast_recipe_args, tmp_path, monkeypatch):
    from imgpipe.engine import trainer as train

    original = train.Trainer._callbacks
    monkeypatch.setattr(train.Trainer, "_callbacks", lambda self, *a: original(self, *a) + [StopAfter(2)])
    args = fast_recipe_args + ["train.epochs=4", "train.patience=0"]
    with pytest.raises(KeyboardInterrupt):
        imgpipe.run("classify", args, data=class_folder)
    run_dir = tmp_path / "run"
    assert len(read_history(run_dir / "history.csv")["epoch"]) == 2
    assert not (run_dir / "metrics.json").exists()

    monkeypatch.setattr(train.Trainer, "_callbacks", original)
    resumed_epochs = []
    monkeypatch.setattr(train.Trainer, "_fit_phase",
                        _recording(train.Trainer._fit_phase, resumed_epochs))
    result = imgpipe.run("classify", resume=True, output=run_dir)
    history = read_history(run_dir / "history.csv")
    assert history["epoch"] == [0, 1, 2, 3]
    assert result.metrics["epochs_run"] == 4
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 4
    assert not (run_dir / "checkpoints" / "backup_train").exists()


def _recording(fit_phase, calls):
    def record(self, model, *args, **kwargs):
        calls.append(args)
        return fit_phase(self, model, *args, **kwargs)

    return record


def test_resume_refuses_a_finished_run(class_folder, fast_recipe_args, tmp_path):
    imgpipe.run("classify", fast_recipe_args, data=class_folder)
    with pytest.raises(imgpipe.DataError, match="already finished"):
        imgpipe.run("classify", resume=True, output=tmp_path / "run")


def test_two_logical_devices_train_under_mirrored_strategy(class_folder, fast_recipe_args):
    strategy = select_strategy(2)
    assert strategy.num_replicas_in_sync == 2
    result = imgpipe.run("classify", fast_recipe_args + ["train.devices=2", "train.epochs=2"], data=class_folder)
    assert np.isfinite(result.metrics["val_loss"])
    assert 0.0 <= result.metrics["val_accuracy"] <= 1.0
    assert result.metrics["epochs_run"] == 2
    one_device = imgpipe.run("classify", [arg for arg in fast_recipe_args if not arg.startswith("train.run_dir")] +
                             ["train.devices=1", "train.epochs=2", f"train.run_dir={result.run_dir}_one"],
                             data=class_folder)
    # Same data and seed; twice the global batch at twice the learning rate: losses of one order.
    assert 0.5 < result.metrics["val_loss"] / one_device.metrics["val_loss"] < 2.0


def test_one_mirrored_strategy_per_device_set_so_runs_in_one_process_do_not_collide():
    from imgpipe.engine.trainer import select_strategy

    assert select_strategy(2) is select_strategy(2)
    assert select_strategy(2).num_replicas_in_sync == 2


def test_too_many_devices_is_a_recipe_error():
    with pytest.raises(RecipeError, match="train.devices"):
        select_strategy(64)


def test_mixed_precision_path_runs_on_cpu(class_folder, fast_recipe_args):
    assert precision_policy("on") == "mixed_bfloat16"
    assert precision_policy("auto") == "float32"
    result = imgpipe.run("classify", fast_recipe_args + ["train.mixed_precision=on"], data=class_folder)
    assert np.isfinite(result.metrics["val_loss"])
    assert keras.config.dtype_policy().name == "float32"


def test_pretrained_backbone_warm_up_then_fine_tune(class_folder, fast_recipe_args, tmp_path):
    # A local backbone weights file stands in for the ImageNet download.
    backbone = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3),
                                                   pooling="avg", include_preprocessing=True)
    weights_file = tmp_path / "mobilenet_notop.weights.h5"
    backbone.save_weights(weights_file)
    args = fast_recipe_args + ["data.image_size=32", "train.epochs=2", "train.warmup_epochs=1",
                               "model.name=mobilenet_v3_small", f"model.weights={weights_file}"]
    result = imgpipe.run("classify", args, data=class_folder)
    run_dir = result.run_dir
    assert (run_dir / "checkpoints" / "warmup_done.weights.h5").exists()
    assert read_history(run_dir / "history.csv")["epoch"] == [0, 1]


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
