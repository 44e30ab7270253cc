"""Every run writes TensorBoard logs: the epoch scalars Keras logs, then the run's pictures."""

import csv

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import imgpipe


def read_tensors(folder):
    """{tag: [(step, value)]} of a TensorBoard log folder (TF 2 writes scalars and images as tensors)."""
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    return {tag: [(event.step, event.tensor_proto) for event in events.Tensors(tag)]
            for tag in events.Tags()["tensors"]}


def scalar(proto):
    import tensorflow as tf

    return float(tf.make_ndarray(proto))


def test_the_run_s_scalars_and_pictures_are_in_its_tensorboard_folder(class_folder, fast_recipe_args):
    assert imgpipe.load_recipe("classify").train.tensorboard is True  # on unless a recipe turns it off
    # patience=0: three colours reach validation accuracy 1.0 in one epoch at times, and the ceiling would stop there.
    result = imgpipe.run("classify", [*fast_recipe_args, "train.epochs=2", "export.enabled=false",
                                      "train.tensorboard=true", "train.patience=0"], data=class_folder)
    history = list(csv.DictReader((result.run_dir / "history.csv").open()))
    train = read_tensors(result.run_dir / "tensorboard" / "train")
    validation = read_tensors(result.run_dir / "tensorboard" / "validation")
    assert [step for step, _ in train["epoch_loss"]] == [0, 1]
    assert [scalar(value) for _, value in train["epoch_loss"]] == pytest.approx(
        [float(row["loss"]) for row in history], rel=1e-5)
    assert [scalar(value) for _, value in validation["epoch_accuracy"]] == pytest.approx(
        [float(row["val_accuracy"]) for row in history], rel=1e-5)
    # The optimizer's rate at each epoch's end: the cosine schedule falls, and ends where the optimizer is.
    rates = [scalar(value) for _, value in train["epoch_learning_rate"]]
    assert rates[0] > rates[1] == pytest.approx(float(result.model.optimizer.learning_rate), abs=1e-9)
    pictures = read_tensors(result.run_dir / "tensorboard" / "pictures")
    assert {"augment_preview", "confusion_matrix", "curves", "gradcam"} <= set(pictures)
    assert pictures["augment_preview"][0][0] == 1  # at the last epoch's step


def test_train_tensorboard_false_writes_no_logs(class_folder, fast_recipe_args):
    result = imgpipe.run("classify", [*fast_recipe_args, "train.tensorboard=false", "export.enabled=false"],
                         data=class_folder)
    assert not (result.run_dir / "tensorboard").exists()
