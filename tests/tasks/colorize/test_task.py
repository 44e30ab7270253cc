import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import imgpipe
from imgpipe.models.lab import ab_bins, rgb_to_lab
from imgpipe.data.demo import make_landscapes_folder
from imgpipe.engine.export.saved_model import load_export
from imgpipe.tasks.colorize.task import colorized
from tests.engine.test_serving import assert_a_refused_image_gets_no_picture_and_the_other_its_own


@pytest.fixture(scope="module")
def colorize_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("colorize")
    make_landscapes_folder(root / "photos", images=10, size=40, seed=4)
    result = imgpipe.run("colorize", ["train.epochs=2", "train.batch_size=4", "train.verbose=0",
                                      "data.image_size=32", f"train.run_dir={root / 'run'}", "evaluate.robustness=false",
                                      f"export.root={root / 'models'}"], data=root / "photos")
    return result, root


def test_run_reports_colour_metrics_and_baselines(colorize_run):
    result, _ = colorize_run
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert {"val_psnr", "val_ssim", "val_psnr_grey", "val_ssim_grey", "val_colorfulness",
            "val_colorfulness_true", "val_ab_error"} <= set(metrics)
    assert metrics["val_colorfulness_true"] > 10 and metrics["val_psnr_grey"] > 5
    for name in ("curves.png", "samples.png", "augment_preview.png"):
        assert (result.run_dir / name).is_file()


def test_result_keeps_the_full_resolution_lightness():
    rng = np.random.default_rng(0)
    original = rng.uniform(0, 255, (1, 37, 53, 3)).astype(np.float32)
    lightness = rgb_to_lab(original)[..., :1]
    probabilities = tf.nn.softmax(tf.random.normal([1, 8, 8, len(ab_bins())], seed=1))
    result = colorized(probabilities, lightness, 0.38)
    assert result.shape == (1, 37, 53, 3)
    # Out-of-gamut ab may be clipped in RGB, which moves L a little; in-gamut pixels keep it exactly.
    error = np.abs(rgb_to_lab(result).numpy()[..., 0] - lightness.numpy()[..., 0])
    assert np.median(error) < 0.5


def png_bytes(pixels, mode="RGB"):
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


def test_export_answers_png_at_the_original_size_and_matches_the_model(colorize_run):
    result, root = colorize_run
    _, metadata, loaded = load_export(result.export_path)
    assert metadata["task"] == "colorize" and metadata["color_loss"] == "classification"
    photo = np.asarray(Image.open(root / "photos" / "landscape_0000.png").convert("RGB"))
    big = np.asarray(Image.fromarray(photo).resize((90, 70)))
    answer = loaded.signatures["serving_default"](image_bytes=tf.constant([png_bytes(photo, "L"), png_bytes(big)]))
    assert answer["height"].numpy().tolist() == [40, 70] and answer["width"].numpy().tolist() == [40, 90]
    decoded = np.asarray(Image.open(io.BytesIO(answer["image_png_bytes"].numpy()[1])))
    assert decoded.shape == (70, 90, 3)

    from imgpipe.engine.serving import resize_float

    images = tf.constant(big[None].astype(np.float32))
    probabilities = result.model(resize_float(images, [32, 32]), training=False)
    expected = colorized(probabilities, rgb_to_lab(images)[..., :1], 0.38).numpy()[0]
    np.testing.assert_allclose(decoded, np.round(expected), atol=1)
    floats = loaded.signatures["serve_images"](images=images)["image"].numpy()[0]
    np.testing.assert_allclose(floats, expected, atol=0.05)


def test_a_refused_image_gets_no_picture_and_the_other_its_own(colorize_run):
    assert_a_refused_image_gets_no_picture_and_the_other_its_own(colorize_run[0].export_path)


def test_cli_evaluate_and_predict(cli, colorize_run, tmp_path):
    result, root = colorize_run
    code, out, err = cli("evaluate", result.export_path, "--data", root / "photos", "--json",
                         "--report-dir", tmp_path / "report")
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == 10 and {"psnr", "psnr_grey", "ssim", "colorfulness_true"} <= set(report)
    code, out, err = cli("predict", result.export_path, root / "photos" / "landscape_0003.png",
                         "--out", tmp_path / "colour.png", "--json")
    assert code == 0, err
    assert Image.open(json.loads(out)["colour"]).size == (40, 40)


@pytest.mark.slow
def test_l1_loss_option_trains(tmp_path):
    make_landscapes_folder(tmp_path / "photos", images=6, size=32)
    result = imgpipe.run("colorize", ["train.epochs=1", "train.batch_size=4", "train.verbose=0",
                                      "data.image_size=32", "colorize.color_loss=l1", f"train.run_dir={tmp_path / 'r'}",
                                      "export.enabled=false"], data=tmp_path / "photos")
    assert np.isfinite(result.metrics["val_loss"]) and result.model.loss_kind == "l1"


def test_cli_colorize_names_a_missing_folder(cli, tmp_path):
    code, _, err = cli("run", "colorize", "--data", tmp_path / "nowhere", "--epochs", "1")
    assert code == 2 and "nowhere" in err and "Traceback" not in err


@pytest.mark.slow
def test_the_colorization_model_trains_on_two_logical_devices(tmp_path):
    # 9 images: 7 train, 2 validation; the odd training batch is dropped so no replica gets none.
    make_landscapes_folder(tmp_path / "photos", images=9, size=32)
    result = imgpipe.run("colorize", ["train.epochs=1", "train.batch_size=2", "train.verbose=0", "train.devices=2",
                                      "data.image_size=32", f"train.run_dir={tmp_path / 'r'}", "export.enabled=false"],
                         data=tmp_path / "photos")
    assert result.metrics["epochs_run"] == 1 and np.isfinite(result.metrics["val_psnr"])


def test_the_mobilenet_v2_colorizer_sees_only_the_lightness():
    from imgpipe.models import MODELS
    from imgpipe.models.lab import lab_to_rgb
    from imgpipe.tasks.colorize.task import ColorizationModel

    keras.utils.set_random_seed(0)
    bins = len(ab_bins())
    model = ColorizationModel(MODELS.get("unet_mobilenet_v2")((64, 64, 3), bins, weights=None), np.ones(bins))
    rng = np.random.default_rng(0)
    colour = rng.uniform(40, 215, [1, 64, 64, 3]).astype(np.float32)
    lab = rgb_to_lab(colour).numpy()
    grey = lab_to_rgb(np.concatenate([lab[..., :1], np.zeros_like(lab[..., 1:])], -1)).numpy()  # same lightness
    assert model(colour).shape == (1, 64, 64, bins)
    colour_shows = np.abs(model.segmenter(colour).numpy() - model.segmenter(grey).numpy()).max()  # fed as is
    assert np.abs(model(colour).numpy() - model(grey).numpy()).max() < colour_shows / 100  # measured 7e-10, 1e-5
