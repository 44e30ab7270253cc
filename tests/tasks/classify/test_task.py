import numpy as np
import pytest

import imgpipe
from imgpipe.tasks.classify.task import SparseCrossentropyWithSmoothing, classification_report


def test_report_against_hand_computed_values():
    labels = np.array([0, 0, 1, 1, 2])
    probabilities = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    metrics, matrix = classification_report(labels, probabilities, ["a", "b", "c"])
    assert matrix.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["precision/a"] == pytest.approx(1 / 2) and metrics["recall/a"] == pytest.approx(1 / 2)
    assert metrics["f1/c"] == pytest.approx(1.0)
    assert metrics["support/b"] == 2
    assert "top5_accuracy" not in metrics


def test_top5_accuracy_with_five_classes_or_more():
    # Class 4 has the lowest score of six, so only it falls outside the top five.
    probabilities = np.tile([0.3, 0.2, 0.1, 0.05, 0.04, 0.31], (3, 1))
    metrics, _ = classification_report(np.array([0, 5, 4]), probabilities, list("abcdef"))
    assert metrics["top5_accuracy"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(1 / 3)


def test_smoothed_loss_against_hand_computed_value():
    loss = SparseCrossentropyWithSmoothing(num_classes=2, label_smoothing=0.2)
    value = float(loss(np.array([1]), np.array([[0.25, 0.75]], dtype="float32")))
    expected = -(0.1 * np.log(0.25) + 0.9 * np.log(0.75))
    assert value == pytest.approx(expected, rel=1e-4)


def test_recipe_loaded_changed_and_run_from_python(class_folder, tmp_path):
    recipe = imgpipe.load_recipe("classify").override(["train.epochs=1", "train.verbose=0", "data.image_size=16",
                                                       "augment.occlusion=strong", "model.name=lenet"])
    recipe = recipe.update(**{"data.path": class_folder, "train.run_dir": tmp_path / "run",
                              "export.root": tmp_path / "models"})
    result = imgpipe.run(recipe)
    assert result.recipe.model.name == "lenet"
    assert result.export_path == tmp_path / "models" / "classify" / "1"
    assert set(result.metrics) >= {"val_accuracy", "val_loss", "epochs_run", "train_seconds", "export_path"}
    assert result.model.name == "lenet"


def test_grad_cam_samples_take_the_classes_in_turn():
    import tensorflow as tf

    from imgpipe.tasks.classify.task import images_across_classes

    labels = np.array([0] * 6 + [1] * 3 + [2])
    images = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1) * np.ones((1, 2, 2, 3), np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    chosen_images, chosen_labels = images_across_classes(dataset, 5, 3)
    assert chosen_labels.tolist() == [0, 1, 2, 0, 1]
    assert chosen_images[:, 0, 0, 0].tolist() == [0, 6, 9, 1, 7]
