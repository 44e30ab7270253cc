"""A classification run fits a temperature on half its validation split; every export serves it."""

import json

import numpy as np
import pytest
import tensorflow as tf

import imgpipe
from imgpipe.engine.export.saved_model import load_export
from imgpipe.engine.run_folder import load_run
from imgpipe.understand.calibration import calibration_errors, scale, split_halves, wrong_apart
from tests.conftest import COLOURS, write_image


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """Two epochs on 60 noisy flat-colour images, 30 of them validation (enough to halve), SavedModel and ONNX."""
    root = tmp_path_factory.mktemp("calibrated")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        for index in range(20):
            write_image(root / "images" / name / f"{index}.png",
                        np.clip(np.array(colour) + rng.integers(-90, 90, 3), 0, 255))
    result = imgpipe.run("classify", ["train.epochs=2", "train.batch_size=8", "train.verbose=0", "data.val_split=0.5",
                                      "evaluate.robustness=false", "data.image_size=16",
                                      f"train.run_dir={root / 'run'}", f"export.root={root / 'saved_models'}",
                                      "export.formats=[saved_model,onnx]"], data=root / "images")
    return result, root


def validation_probabilities(result):
    """The trained network's own (uncalibrated) probabilities and labels on the run's validation files."""
    from imgpipe.engine.scoring import split_examples

    run = load_run(result.run_dir)
    data = run.task.read_data(run.recipe)
    images, labels = split_examples(data.val, data.image_size, data.val.count)
    return images, np.asarray(run.model(images.astype(np.float32), training=False)), labels.astype(np.int64)


def test_the_run_records_a_temperature_fitted_on_one_half_and_scored_on_the_other(calibrated_run):
    result, _ = calibrated_run
    calibration = result.metrics["calibration"]
    _, probabilities, labels = validation_probabilities(result)
    fit, report = split_halves(wrong_apart(labels, probabilities.argmax(axis=1) != labels), seed=0)
    assert (calibration["fitted_on"], calibration["reported_on"]) == (len(fit), len(report))
    assert len(fit) + len(report) == 30
    before = calibration_errors(probabilities[report], labels[report])
    assert calibration["before"]["nll"] == pytest.approx(before["nll"], abs=1e-4)
    after = calibration_errors(scale(probabilities[report], calibration["temperature"]), labels[report])
    assert calibration["after"]["ece"] == pytest.approx(after["ece"], abs=1e-4)
    wrong = probabilities.argmax(axis=1) != labels
    assert (calibration["wrong_in_fit"], calibration["wrong_in_report"]) == (wrong[fit].sum(), wrong[report].sum())
    assert calibration["used"] == (wrong[fit].any() and wrong[report].any() and after["nll"] < before["nll"])
    assert (result.run_dir / "reliability.png").is_file()
    assert json.loads((result.run_dir / "metrics.json").read_text())["calibration"] == calibration


def expected_probabilities(probabilities, calibration):
    return scale(probabilities, calibration["temperature"]) if calibration["used"] else probabilities


def test_the_run_s_exports_serve_the_calibrated_probabilities(calibrated_run):
    import onnxruntime

    result, root = calibrated_run
    images, probabilities, _ = validation_probabilities(result)
    calibration = result.metrics["calibration"]
    _, metadata, loaded = load_export(result.export_path)
    served = loaded.signatures["serve_images"](images=tf.constant(images, tf.float32))["probabilities"].numpy()
    np.testing.assert_allclose(served, expected_probabilities(probabilities, calibration), atol=1e-5)
    assert (metadata["temperature_scaling"] or {}).get("temperature") == \
           (calibration["temperature"] if calibration["used"] else None)
    folder = root / "saved_models" / "classify" / "formats" / "1"
    contract = json.loads((folder / "contract.json").read_text())["files"][0]
    assert contract["temperature_scaling"] == metadata["temperature_scaling"]
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    answered = session.run(None, {contract["input"]["name"]: images.astype(np.float32)})[0]
    np.testing.assert_allclose(answered, served, atol=1e-5)


@pytest.fixture
def recorded_temperature(calibrated_run):
    """The run's metrics.json with a used temperature of 0.5 (whatever two epochs fitted), restored after."""
    result, _ = calibrated_run
    path = result.run_dir / "metrics.json"
    original = path.read_text()
    metrics = json.loads(original)
    metrics["calibration"].update(temperature=0.5, used=True)
    path.write_text(json.dumps(metrics))
    yield 0.5
    path.write_text(original)


def test_export_and_export_formats_from_the_run_folder_apply_its_temperature(calibrated_run, recorded_temperature,
                                                                             tmp_path):
    import onnxruntime

    from imgpipe.engine.run_folder import export_run, export_run_formats

    result, _ = calibrated_run
    images, probabilities, _ = validation_probabilities(result)
    _, metadata, loaded = load_export(export_run(result.run_dir, export_dir=tmp_path))
    served = loaded.signatures["serve_images"](images=tf.constant(images, tf.float32))["probabilities"].numpy()
    np.testing.assert_allclose(served, scale(probabilities, recorded_temperature), atol=1e-5)
    assert metadata["temperature_scaling"]["temperature"] == recorded_temperature
    folder, report = export_run_formats(result.run_dir, ["onnx"], export_dir=tmp_path)
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    answered = session.run(None, {session.get_inputs()[0].name: images.astype(np.float32)})[0]
    np.testing.assert_allclose(answered, served, atol=1e-5)
    assert report["files"][0]["max_abs_diff"] < 1e-5  # proven against the calibrated Keras network


def test_evaluate_reports_the_calibration_error_of_the_export(calibrated_run, cli, tmp_path):
    result, root = calibrated_run
    code, out, err = cli("evaluate", result.export_path, "--data", root / "images", "--json",
                         "--report-dir", tmp_path)
    assert code == 0, err
    report = json.loads(out)
    assert 0 < report["ece"] < 1 and report["nll"] > 0 and report["mce"] >= report["ece"]


def test_export_calibrated_false_serves_the_network_s_own_softmax(calibrated_run, recorded_temperature, tmp_path):
    from imgpipe.engine.export.calibrated import served_network

    result, _ = calibrated_run
    images, probabilities, _ = validation_probabilities(result)
    run = load_run(result.run_dir)
    calibration = json.loads((result.run_dir / "metrics.json").read_text())["calibration"]
    network, entries = served_network(run.model, calibration, run.recipe.update(**{"export.calibrated": False}))
    np.testing.assert_allclose(np.asarray(network(images.astype(np.float32))), probabilities, atol=1e-6)
    assert entries == {"temperature_scaling": None, "tta": "none"}
    network, entries = served_network(run.model, calibration, run.recipe)
    np.testing.assert_allclose(np.asarray(network(images.astype(np.float32))),
                               scale(probabilities, recorded_temperature), atol=1e-5)



def test_the_temperature_goes_inside_each_tta_view_before_the_views_are_averaged():
    import keras

    from imgpipe.engine.export.calibrated import served_network

    # A dense layer on the raw pixels: the mirror changes its answer a lot, so the two orders differ.
    network = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                                keras.layers.Dense(3, activation="softmax",
                                                   kernel_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=0))])
    images = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    plain, mirrored = np.asarray(network(images)), np.asarray(network(images[:, :, ::-1]))
    calibration = {"used": True, "temperature": 0.5, "fitted_on": 10}
    served, entries = served_network(network, calibration, imgpipe.load_recipe("classify", ["export.tta=flip"]))
    expected = (scale(plain, 0.5) + scale(mirrored, 0.5)) / 2
    np.testing.assert_allclose(np.asarray(served(images)), expected, atol=1e-6)
    assert np.abs(expected - scale((plain + mirrored) / 2, 0.5)).max() > 1e-3  # the other order differs
    assert entries["tta"] == "flip" and entries["temperature_scaling"]["temperature"] == 0.5
