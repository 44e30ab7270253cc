import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import imgpipe
from imgpipe.data.demo import make_scenes_folder, make_style_pattern
from imgpipe.engine.export.saved_model import load_export
from imgpipe.tasks.stylize.task import structure_ssim, styled
from tests.engine.test_serving import assert_a_refused_image_gets_no_picture_and_the_other_its_own


@pytest.fixture(scope="module")
def stylize_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stylize")
    make_scenes_folder(root / "photos", images=8, size=40, seed=2)
    return root, make_style_pattern(root / "waves.png", size=48)


@pytest.fixture(scope="module")
def stylize_run(stylize_data):
    """One short run for the whole file; it records each loss network it builds in `result.loss_networks_built`."""
    from imgpipe.tasks.stylize import task as stylize_task

    root, style = stylize_data
    built, original = [], stylize_task.loss_network
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stylize_task, "loss_network", lambda *args, **kwargs: built.append(args) or
                      original(*args, **kwargs))
        result = imgpipe.run("stylize", ["train.epochs=2", "train.batch_size=4", "train.verbose=0",
                                         "data.image_size=32", f"train.run_dir={root / 'run'}", "evaluate.robustness=false",
                                         f"export.root={root / 'models'}", "stylize.max_side=48"],
                             data=root / "photos", style=style, loss_weights="random")
    result.loss_networks_built = built
    return result, root


def test_run_reports_losses_against_the_identity_baseline_and_speed(stylize_run):
    result, _ = stylize_run
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert {"val_content_loss", "val_style_loss", "val_tv_loss", "val_style_loss_identity",
            "val_content_loss_identity", "ms_per_image_256", "val_structure_ssim"} <= set(metrics)
    assert metrics["val_content_loss_identity"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["val_style_loss_identity"] > 0 and metrics["ms_per_image_256"] > 0
    assert metrics["loss_network_weights"] == "random"  # what the loss network used, not the style network's
    for name in ("curves.png", "samples.png", "augment_preview.png"):
        assert (result.run_dir / name).is_file()
    assert "style_loss" in (result.run_dir / "history.csv").read_text().splitlines()[0]


def test_structure_ssim_keeps_a_recoloured_picture_and_rejects_a_flat_mirrored_or_foreign_one(stylize_data):
    root, style = stylize_data
    content = np.asarray(Image.open(style).convert("RGB"), np.float32)  # textured all over, as photos are
    other = np.asarray(Image.open(sorted((root / "photos").rglob("*.png"))[1]).convert("RGB").resize((48, 48)),
                       np.float32)
    tinted = np.clip(content * [1.3, 0.8, 0.5] + [0, 40, 90], 0, 255)  # colours change, edges stay
    assert structure_ssim(content, content) == pytest.approx(1.0)
    assert structure_ssim(tinted, content) > 0.8
    for unrelated in (np.full_like(content, content.mean()), content[:, ::-1], other):
        assert structure_ssim(unrelated, content) < 0.1


def png_bytes(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_export_takes_bytes_and_answers_png_at_the_original_size(stylize_run):
    result, _ = stylize_run
    _, metadata, loaded = load_export(result.export_path)
    assert metadata["task"] == "stylize" and metadata["max_side"] == 48
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (21, 30, 3), dtype=np.uint8)
    large = rng.integers(0, 256, (70, 45, 3), dtype=np.uint8)  # above max_side: styled at 48, resized back
    answer = loaded.signatures["serving_default"](image_bytes=tf.constant([png_bytes(small), png_bytes(large)]))
    assert answer["height"].numpy().tolist() == [21, 70] and answer["width"].numpy().tolist() == [30, 45]
    assert set(answer) == {"image_png_bytes", "height", "width", "status"}
    decoded = [np.asarray(Image.open(io.BytesIO(p))) for p in answer["image_png_bytes"].numpy()]
    assert decoded[0].shape == (21, 30, 3) and decoded[1].shape == (70, 45, 3)

    in_memory = styled(result.model.transformer, small[None], 48).numpy()[0]
    np.testing.assert_allclose(decoded[0], np.round(in_memory), atol=1)
    floats = loaded.signatures["serve_images"](images=tf.constant(small[None].astype(np.float32)))["image"]
    np.testing.assert_allclose(floats.numpy()[0], in_memory, atol=1e-2)


def test_a_refused_image_gets_no_picture_and_the_other_its_own(stylize_run):
    assert_a_refused_image_gets_no_picture_and_the_other_its_own(stylize_run[0].export_path)


def test_cli_predict_writes_the_styled_file(cli, stylize_run, stylize_data, tmp_path):
    result, _ = stylize_run
    root, _ = stylize_data
    photo = root / "photos" / "scene_0001.png"
    code, out, err = cli("predict", result.export_path, photo, "--out", tmp_path / "styled.png", "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert Image.open(answer["styled"]).size == (40, 40)
    code, _, err = cli("predict", result.export_path, photo, photo, "--out", tmp_path / "one.png")
    assert code == 2 and "exactly one input image" in err


def test_cli_evaluate_scores_style_against_the_identity(cli, stylize_run, stylize_data, tmp_path):
    result, _ = stylize_run
    root, _ = stylize_data
    code, out, err = cli("evaluate", result.export_path, "--data", root / "photos", "--json",
                         "--report-dir", tmp_path / "report")
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == 8 and report["style_loss_identity"] > 0 and report["content_loss"] >= 0


def test_cli_gatys_optimisation_writes_an_image(cli, stylize_data, tmp_path):
    root, style = stylize_data
    code, out, err = cli("stylize", root / "photos" / "scene_0000.png", "--style", style, "--out",
                         tmp_path / "gatys.png", "--steps", "3", "--size", "32", "--loss-weights", "random")
    assert code == 0, err
    assert Image.open(tmp_path / "gatys.png").size == (32, 32)


def test_cli_stylize_errors_name_the_problem(cli, stylize_data, tmp_path):
    root, style = stylize_data
    code, _, err = cli("run", "stylize", "--data", root / "photos", "--epochs", "1")
    assert code == 2 and "stylize.style" in err
    code, _, err = cli("run", "stylize", "--data", root / "photos", "--style", tmp_path / "missing.jpg")
    assert code == 2 and "missing.jpg" in err and "Traceback" not in err
    code, _, err = cli("stylize", tmp_path / "nothing.jpg", "--style", style, "--out", tmp_path / "x.png")
    assert code == 2 and "nothing.jpg" in err
    code, _, err = cli("stylize", root / "photos" / "scene_0000.png", "--style", style, "--out", tmp_path / "x.txt")
    assert code == 2 and "--out" in err and "Traceback" not in err


def test_reexport_reloads_the_style_from_the_run_folder(stylize_run, tmp_path):
    from imgpipe.engine.run_folder import export_run

    result, _ = stylize_run
    path = export_run(result.run_dir, export_dir=tmp_path / "models", name="again", weights="last")
    _, metadata, loaded = load_export(path)
    assert metadata["style_image"].endswith("waves.png")
    image = tf.constant(np.full((1, 24, 24, 3), 120.0, np.float32))
    np.testing.assert_allclose(loaded.signatures["serve_images"](images=image)["image"].numpy(),
                               styled(result.model.transformer, image, 48).numpy(), atol=1e-2)


@pytest.mark.slow
def test_the_loss_model_trains_on_two_logical_devices(stylize_data, tmp_path):
    root, style = stylize_data
    result = imgpipe.run("stylize", ["train.epochs=1", "train.batch_size=2", "train.verbose=0", "data.image_size=32",
                                     "train.devices=2", f"train.run_dir={tmp_path / 'run'}", "export.enabled=false"],
                         data=root / "photos", style=style, loss_weights="random")
    assert result.metrics["epochs_run"] == 1 and np.isfinite(result.metrics["val_style_loss"])


def test_loss_network_weights_come_from_the_one_resolver(tmp_path, monkeypatch):
    from imgpipe.errors import RecipeError
    from imgpipe.tasks.stylize.task import StylizeTask

    monkeypatch.setenv("IMGPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("IMGPIPE_OFFLINE", "1")
    monkeypatch.delenv("IMGPIPE_WEIGHTS_DIR", raising=False)
    recipe = imgpipe.load_recipe("stylize")
    assert StylizeTask._loss_weights(recipe, demo=True) == "random"  # the demo falls back
    with pytest.raises(RecipeError, match="no ImageNet weights for vgg16"):
        StylizeTask._loss_weights(recipe, demo=False)  # a user's run asked for imagenet: an error
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "vgg16_imagenet_notop.weights.h5").write_bytes(b"")
    monkeypatch.setenv("IMGPIPE_WEIGHTS_DIR", str(folder))
    expected = str(folder / "vgg16_imagenet_notop.weights.h5")
    assert StylizeTask._loss_weights(recipe, demo=True) == StylizeTask._loss_weights(recipe, demo=False) == expected


def test_a_run_builds_one_loss_network_for_training_and_its_final_scores(stylize_run):
    result, _ = stylize_run
    assert len(result.loss_networks_built) == 1 and np.isfinite(result.metrics["val_style_loss_identity"])


def test_auto_style_weight_follows_the_loss_network_and_is_what_the_run_trains_and_records(stylize_run, stylize_data,
                                                                                            monkeypatch):
    from imgpipe.tasks.stylize.task import StylizeTask

    result, _ = stylize_run  # random features, style weight auto
    assert result.model.loss_weights_.style == 2.0
    _, metadata, _ = load_export(result.export_path)
    assert metadata["loss_weighting"]["style"] == 2.0
    saved = json.loads((result.run_dir / "classes.json").read_text())["state"]
    assert saved["style_weight"] == 2.0

    root, style = stylize_data
    monkeypatch.setattr(StylizeTask, "_loss_weights", staticmethod(lambda recipe, demo: "/w/vgg16.weights.h5"))
    recipe = imgpipe.load_recipe("stylize").update(**{"data.path": str(root / "photos"),
                                                       "stylize.style": str(style)})
    assert StylizeTask().read_data(recipe).state.style_weight == 16.0  # ImageNet features
    assert StylizeTask().read_data(recipe.update(**{"stylize.style_weight": 7})).state.style_weight == 7.0


def test_a_run_folder_from_before_the_photo_plus_change_network_is_refused_by_name(stylize_run, tmp_path):
    import shutil

    from imgpipe.engine.run_folder import load_run
    from imgpipe.errors import RecipeError

    result, _ = stylize_run
    old = tmp_path / "old_run"
    shutil.copytree(result.run_dir, old)
    record = json.loads((old / "classes.json").read_text())
    del record["state"]["network_output"], record["state"]["style_weight"]  # what older versions wrote
    (old / "classes.json").write_text(json.dumps(record))
    with pytest.raises(RecipeError, match="outputs the whole picture.*train it again"):
        load_run(old)
    assert load_run(result.run_dir).model.loss_weights_.style == 2.0  # today's folder rebuilds
