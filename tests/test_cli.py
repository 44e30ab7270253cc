import contextlib
import io
import json
import pathlib
import sys

import numpy as np
import pytest

from tests.conftest import write_image

FAST = ["--epochs", "1", "--batch-size", "8", "--image-size", "16", "--set", "train.verbose=0", "--no-robustness"]


@pytest.fixture(scope="module")
def module_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def module_class_folder(module_folder):
    """The class_folder fixture's images, made once for the module."""
    from tests.conftest import COLOURS

    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        for index in range(10):
            jitter = np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255)
            write_image(module_folder / "images" / name / f"{name}_{index}.png", jitter)
    return module_folder / "images"


@pytest.fixture(scope="module")
def exported(module_class_folder, module_folder):
    """One `imgpipe run` through the CLI, trained and exported once for the module's tests."""
    from imgpipe.cli import entry_point

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["imgpipe", "run", "classify", "--data", str(module_class_folder),
                                    "--output", str(module_folder / "run"),
                                    "--export-dir", str(module_folder / "saved_models"), "--name", "colours",
                                    *FAST, "--set", "train.epochs=3", "--set", "train.patience=0"])
        output = io.StringIO()
        with contextlib.redirect_stdout(output), pytest.raises(SystemExit) as exit_info:
            entry_point()
    assert exit_info.value.code == 0
    return module_folder / "saved_models" / "colours" / "1", output.getvalue()


def test_run_prints_metrics_run_dir_and_export(exported, module_folder):
    export_path, out = exported
    assert "val_accuracy" in out and "val_loss" in out
    assert f"run directory: {module_folder / 'run'}" in out
    assert f"export:        {export_path}" in out
    # 30 images, 6 of them validation: too few to halve for a temperature, and the line says so.
    assert "calibration:   not fitted: 6 validation images, fewer than 20" in out
    run_dir = module_folder / "run"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val_accuracy", "val_loss", "epochs_run", "train_seconds", "export_path"):
        assert key in metrics
    for name in ("recipe.yaml", "history.csv", "curves.png", "augment_preview.png", "confusion_matrix.png"):
        assert (run_dir / name).is_file(), name


def test_evaluate_reports_per_class_metrics_as_json(cli, exported, module_class_folder, tmp_path):
    export_path, _ = exported
    code, out, err = cli("evaluate", export_path, "--data", module_class_folder, "--json",
                         "--report-dir", tmp_path / "evaluation")
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == 30
    # The numbers are the export's own answers on the 30 images, counted here from `predict`.
    code, lines, err = cli("predict", export_path, *sorted(module_class_folder.rglob("*.png")), "--json")
    assert code == 0, err
    answers = [json.loads(line) for line in lines.strip().splitlines()]
    truth = [pathlib.Path(answer["file"]).parent.name for answer in answers]
    predicted = [answer["predictions"][0]["class_name"] for answer in answers]
    assert report["accuracy"] == pytest.approx(np.mean([t == p for t, p in zip(truth, predicted)]), abs=1e-6)
    for name in ("red", "green", "blue"):
        hits = sum(t == p == name for t, p in zip(truth, predicted))
        assert report[f"recall/{name}"] == pytest.approx(hits / truth.count(name), abs=1e-6)
        if predicted.count(name):
            assert report[f"precision/{name}"] == pytest.approx(hits / predicted.count(name), abs=1e-6)
    assert {"precision/red", "recall/green", "f1/blue"} <= set(report)
    assert (tmp_path / "evaluation" / "confusion_matrix.png").is_file()

    code, out, _ = cli("evaluate", export_path, "--data", module_class_folder, "--report-dir", tmp_path / "e2")
    assert code == 0 and "precision" in out and "red" in out


def test_predict_prints_names_and_scores(cli, exported, module_class_folder):
    export_path, _ = exported
    images = sorted((module_class_folder / "red").iterdir())[:2]
    code, out, err = cli("predict", export_path, *images, "--top-k", "3", "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [line["file"] for line in lines] == [str(path) for path in images]
    assert all(len(line["predictions"]) == 3 for line in lines)
    assert {p["class_name"] for p in lines[0]["predictions"]} == {"red", "green", "blue"}
    assert sum(p["score"] for p in lines[0]["predictions"]) == pytest.approx(1.0, abs=1e-3)

    code, out, _ = cli("predict", export_path, images[0])
    assert code == 0 and out.startswith(f"{images[0]}: ")


def test_predict_names_each_refused_file_with_its_reason_and_answers_the_rest(cli, exported, tmp_path,
                                                                               module_class_folder):
    export_path, _ = exported
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    good = sorted((module_class_folder / "red").iterdir())[0]
    code, out, err = cli("predict", export_path, good, bad)
    assert code == 2 and "Traceback" not in err
    assert out.splitlines()[1] == f"{bad}: not answered (not an image)"
    assert out.splitlines()[0].startswith(f"{good}: ") and "not answered" not in out.splitlines()[0]
    assert f"refused 1 of 2 files (first: {bad}: not an image)" in err


@pytest.mark.parametrize(
    "args, named",
    [
        (["run", "classify", "--data", "/no/such/folder"], "/no/such/folder"),
        (["run", "classify", "--set", "train.epochz=3"], "train.epochz"),
        (["run", "classify", "--epochs", "-1"], "train.epochs"),
        (["run", "classify", "--image-size", "0"], "data.image_size"),
        (["run", "classify", "--model", "resnet9000"], "resnet9000"),
        (["run", "classify", "--image-size", "96", "--weights", "imagenet"], "no ImageNet weights for mobilenet_v2"),
        (["run", "no_such_recipe"], "no_such_recipe"),
        (["evaluate", "/no/such/export", "--data", "."], "/no/such/export"),
        (["predict", "/no/such/export", "x.jpg"], "/no/such/export"),
    ],
)
def test_user_errors_exit_2_with_one_line_naming_the_problem(cli, args, named):
    code, _, err = cli(*args)
    assert code == 2
    assert named in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_flat_folder_and_single_class_exit_2(cli, tmp_path):
    for index in range(3):
        write_image(tmp_path / "flat" / f"{index}.png", (0, 0, 0))
        write_image(tmp_path / "single" / "cat" / f"{index}.png", (0, 0, 0))
    for folder, message in (("flat", "no class sub-folders"), ("single", "at least two classes")):
        code, _, err = cli("run", "classify", "--data", tmp_path / folder, *FAST)
        assert code == 2 and message in err and str(tmp_path / folder) in err and "Traceback" not in err


def test_unknown_option_is_a_usage_error(cli):
    code, _, err = cli("run", "classify", "--epoch", "3")
    assert code == 2 and "--epoch" in err


@pytest.mark.slow
def test_recipes_and_models_are_listed(cli):
    code, out, _ = cli("recipes")
    assert code == 0 and "classify" in out and "strided_cnn" in out
    code, out, _ = cli("recipes", "--keys")
    assert code == 0 and "train.epochs" in out
    code, out, _ = cli("models", "--task", "classify", "--image-size", "75")
    assert code == 0
    for name in ("lenet", "alexnet", "vgg16", "vgg19", "inception_v3", "resnet50", "resnet152",
                 "mobilenet_v3_small", "efficientnet_b0", "small_cnn", "strided_cnn"):
        assert name in out
    from imgpipe.models import MODELS

    for name in ("small_cnn", "strided_cnn", "lenet"):
        expected = MODELS.get(name)((75, 75, 3), 10).count_params()
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert row.split()[-1] == f"{expected:,}"
