"""Grad-CAM finds the evidence for a class; gradient ascent raises the activation it climbs."""

import numpy as np
import keras
import pytest

from imgpipe.errors import RecipeError
from imgpipe.understand.explain.visualise import (class_score, feature_layer, grad_cam, maximise_filter, region_score,
                             top_activating, write_filter_grid, write_grad_cam_grid)
from imgpipe.models import MODELS


def brightness_model():
    """Class 0 = how much is bright, class 1 = how much is dark: two fixed 1x1 filters, pooled, no mixing."""
    inputs = keras.Input((16, 16, 3))
    detectors = keras.layers.Conv2D(2, 1, activation="relu", name="detectors")
    features = detectors(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    head = keras.layers.Dense(2, name="scores")
    model = keras.Model(inputs, head(pooled))
    detectors.set_weights([np.array([[[[1, -1]] * 3]], np.float32).reshape(1, 1, 3, 2) / (3 * 255),
                           np.array([0, 1], np.float32)])
    head.set_weights([np.eye(2, dtype=np.float32), np.zeros(2, np.float32)])
    return model


def bright_square_image():
    image = np.zeros((1, 16, 16, 3), np.float32)
    image[0, 2:8, 3:9] = 255
    return image, np.s_[2:8, 3:9]


def test_grad_cam_highlights_the_region_that_drives_each_class():
    model, (image, square) = brightness_model(), bright_square_image()
    inside = np.zeros((16, 16), bool)
    inside[square] = True
    bright, chosen = grad_cam(model, image, score=class_score(0))
    dark, _ = grad_cam(model, image, score=class_score(1))
    assert chosen.tolist() == [0]
    assert bright[0][inside].mean() > 0.9 and bright[0][~inside].mean() < 0.1
    assert dark[0][~inside].mean() > 0.9 and dark[0][inside].mean() < 0.1


def test_by_default_the_predicted_class_is_explained():
    model, (image, _) = brightness_model(), bright_square_image()
    _, chosen = grad_cam(model, image)
    assert chosen.tolist() == [1]  # 36 of 256 pixels are bright: the dark score wins


def test_region_score_explains_a_segmented_region():
    inputs = keras.Input((16, 16, 3))
    detectors = keras.layers.Conv2D(2, 1, activation="relu", name="detectors")
    outputs = keras.layers.Conv2D(2, 1, name="logits")(detectors(inputs))
    model = keras.Model(inputs, outputs)
    detectors.set_weights([np.array([[[[1, -1]] * 3]], np.float32).reshape(1, 1, 3, 2) / (3 * 255),
                           np.array([0, 1], np.float32)])
    model.get_layer("logits").set_weights([np.eye(2, dtype=np.float32).reshape(1, 1, 2, 2), np.zeros(2, np.float32)])
    image, square = bright_square_image()
    heat, _ = grad_cam(model, image, score=region_score(0))
    assert feature_layer(model).name == "detectors"
    assert heat[0][square].mean() > 0.9 and heat[0].mean() < 0.3


def test_gradient_ascent_increases_the_filter_activation():
    # Seeded: an untrained model drawn at random failed the 0.01 rise once in a suite run (seeds 0-11 pass).
    keras.utils.set_random_seed(0)
    model = MODELS.get("small_cnn")((32, 32, 3), 3, weights=None)
    _, trace = maximise_filter(model, "stage2_b_conv", 5, steps=15)
    assert trace[-1] > trace[0] + 0.01 and trace[-1] >= np.mean(trace[:len(trace) // 2])


def test_top_activating_images_rank_by_the_filter():
    model = brightness_model()
    images = np.stack([np.full((16, 16, 3), value, np.float32) for value in (10, 250, 120)])
    assert top_activating(model, "detectors", 0, images, 2).tolist() == [1, 2]
    assert top_activating(model, "detectors", 1, images, 1).tolist() == [0]


def test_grids_are_written_and_an_unknown_layer_is_named(tmp_path):
    model = MODELS.get("small_cnn")((32, 32, 3), 3, weights=None)
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype(np.float32)
    assert write_grad_cam_grid(model, images, ["a", "b", "c"], tmp_path / "cam.png").stat().st_size > 1000
    assert write_filter_grid(model, "stage1_b_conv", images, tmp_path / "filters.png", filters=2, top=2,
                             steps=3).is_file()
    with pytest.raises(RecipeError, match="'nope' is not a spatial layer"):
        feature_layer(model, "nope")


@pytest.mark.slow
def test_a_classification_run_leaves_a_grad_cam_grid_and_explain_reads_the_run(cli, class_folder, tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = cli("run", "classify", "--data", class_folder, "--epochs", "1", "--image-size", "16",
                       "--output", run_dir, "--no-export", "--no-robustness", "--set", "train.verbose=0")
    assert code == 0, err
    assert (run_dir / "gradcam.png").stat().st_size > 1000
    image = next(class_folder.glob("red/*.png"))
    code, out, err = cli("explain", run_dir, "--image", image, "--class", "green", "--filters", "stage1_b_conv")
    assert code == 0, err
    assert f"{image}: " in out and (run_dir / "explain" / "gradcam.png").is_file()
    assert (run_dir / "explain" / "filters_stage1_b_conv.png").is_file()
    code, _, err = cli("explain", run_dir, "--image", image, "--class", "purple")
    assert code == 2 and "--class: 'purple' is not a class of this run" in err
    code, _, err = cli("explain", run_dir, "--image", tmp_path / "missing.jpg")
    assert code == 2 and "missing.jpg" in err and "Traceback" not in err


def test_a_nested_backbone_is_explained_through_the_outer_graph():
    inner_input = keras.Input((16, 16, 3))
    backbone = keras.Model(inner_input, keras.layers.Conv2D(4, 3, padding="same")(inner_input), name="backbone")
    inputs = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(pooled))
    heat, _ = grad_cam(model, np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)))
    assert feature_layer(model).name == "backbone" and heat.shape == (2, 16, 16) and heat.max() > 0
