"""LiteRT, ONNX and OpenVINO exports of a tiny classifier: each file in its own runtime, against the Keras model."""

import json

import numpy as np
import pytest

import imgpipe
from imgpipe.engine.export import formats as format_files
from imgpipe.engine.export import proof as proofs
from imgpipe.engine.run_folder import load_run
from imgpipe.errors import ExportError

CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def formats_run(tmp_path_factory):
    """A two-epoch classification run that exports a SavedModel and every other format (export.formats)."""
    from tests.conftest import COLOURS, write_image

    root = tmp_path_factory.mktemp("formats")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        for index in range(10):
            write_image(root / "images" / name / f"{index}.png",
                        np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255))
    result = imgpipe.run("classify", ["train.epochs=2", "train.batch_size=8", "train.verbose=0",
                                      "evaluate.robustness=false", "data.image_size=16x20",
                                      f"train.run_dir={root / 'run'}", f"export.root={root / 'saved_models'}",
                                      "export.formats=all"], data=root / "images")
    return result, root


def formats_folder(root, version=1):
    return root / "saved_models" / "classify" / "formats" / str(version)


def random_images(count=6):
    """float32 images at the run's size, RGB 0..255 (what a caller of the files sends)."""
    rng = np.random.default_rng(1)
    return rng.uniform(0, 255, (count, 16, 20, 3)).astype(np.float32)


def test_a_run_writes_the_saved_model_and_every_format_beside_it(formats_run):
    result, root = formats_run
    assert result.export_path == root / "saved_models" / "classify" / "1"
    folder = formats_folder(root)
    report = json.loads((folder / "export_report.json").read_text())
    assert [(entry["format"], entry["file"]) for entry in report["files"]] == [
        ("litert", "model_float32.tflite"), ("onnx", "model.onnx"), ("openvino", "openvino/model.xml")]
    # The SavedModel's versions are what TF Serving sees: formats/ is not an integer folder.
    assert sorted(p.name for p in (root / "saved_models" / "classify").iterdir()) == ["1", "formats"]


def test_each_file_answers_like_the_keras_model_in_its_own_runtime(formats_run):
    """The files are read back here with each runtime's own API, not imgpipe's wrappers."""
    import onnxruntime
    import openvino
    from ai_edge_litert.interpreter import Interpreter

    result, root = formats_run
    folder = formats_folder(root)
    images = random_images()
    expected = load_run(result.run_dir).model(images, training=False).numpy()

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: images})[0]

    interpreter = Interpreter(model_path=str(folder / "model_float32.tflite"))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    interpreter.invoke()
    litert_out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    compiled = openvino.Core().compile_model(str(folder / "openvino" / "model.xml"), "CPU",
                                             {"INFERENCE_PRECISION_HINT": "f32"})
    openvino_out = compiled(images)[0]

    for output in (onnx_out, litert_out, openvino_out):
        np.testing.assert_allclose(output, expected, atol=1e-5)


def test_the_report_holds_parity_metric_and_latency_measured_in_each_runtime(formats_run):
    result, root = formats_run
    report = json.loads((formats_folder(root) / "export_report.json").read_text())
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert report["images"] == 6 and report["metric"] == "accuracy"
    # The Keras row is the run's own validation accuracy, scored the same way.
    assert report["keras"]["metric"] == pytest.approx(metrics["val_accuracy"])
    for entry in report["files"]:
        assert entry["max_abs_diff"] < 1e-5
        assert entry["metric_format"] == entry["metric_keras"] == report["keras"]["metric"]
        assert entry["batch_1_ms"] > 0 and entry["batch_32_ms"] > 0
        assert entry["size_bytes"] == format_files.file_size(formats_folder(root) / entry["file"])


def test_the_contract_says_how_to_feed_each_file_without_imgpipe(formats_run):
    result, root = formats_run
    folder = formats_folder(root)
    contract = json.loads((folder / "contract.json").read_text())["files"]
    import onnxruntime

    onnx_input = onnxruntime.InferenceSession(str(folder / "model.onnx")).get_inputs()[0].name
    by_format = {entry["format"]: entry for entry in contract}
    assert set(by_format) == {"litert", "onnx", "openvino"}
    onnx = by_format["onnx"]
    assert onnx["input"] == {"name": onnx_input, "dtype": "float32", "shape": [-1, 16, 20, 3], "layout": "NHWC",
                             "channel_order": "RGB", "range": [0, 255],
                             "scaling": "none (the network rescales inside)"}
    assert onnx["class_names"] == CLASSES
    assert "softmax" in onnx["output"]["meaning"]
    assert any("EXIF" in step for step in onnx["caller_must"])
    assert any("25000000 pixels" in step for step in onnx["caller_must"])
    assert onnx["calibration"] is None
    assert onnx["tolerance"]["max_abs_diff_vs_keras"] < 1e-5


def test_int8_calibrates_on_training_images_and_says_so(formats_run, cli, monkeypatch):
    result, root = formats_run
    calibrated = []
    real = format_files._converter_options

    def spy(name, quantization, calibration_images):
        if calibration_images is not None:
            calibrated.append(len(calibration_images))
        return real(name, quantization, calibration_images)

    monkeypatch.setattr(format_files, "_converter_options", spy)
    code, out, err = cli("export", result.run_dir, "--format", "litert", "--quantize", "int8",
                         "--allow-metric-drop")
    assert code in (0, None), err
    assert calibrated == [24]  # the 24 training images (30 - 6 held out), none of the validation images
    folder = formats_folder(root, 2)
    contract = json.loads((folder / "contract.json").read_text())["files"][0]
    assert contract["file"] == "model_int8.tflite"
    assert contract["calibration"]["images"] == 24 and contract["calibration"]["split"] == "train"
    assert "model_int8.tflite" in out and str(folder) in out
    assert not (root / "saved_models" / "classify" / "2").exists()  # no new SavedModel version was asked for


def test_an_int8_file_that_loses_accuracy_is_refused_and_nothing_is_written(formats_run, cli, monkeypatch):
    result, root = formats_run
    real_prove = proofs.prove

    def losing(*args, **kwargs):
        proof = real_prove(*args, **kwargs)
        return {**proof, "metric_format": proof["metric_keras"] - 0.2, "metric_drop": 0.2}

    monkeypatch.setattr(proofs, "prove", losing)
    before = sorted(p.name for p in (root / "saved_models" / "classify" / "formats").iterdir())
    code, _, err = cli("export", result.run_dir, "--format", "litert", "--quantize", "int8")
    assert code == 2
    assert "accuracy drops" in err and "0.2000 > export.max_metric_drop 0.01" in err
    assert sorted(p.name for p in (root / "saved_models" / "classify" / "formats").iterdir()) == before

    code, _, err = cli("export", result.run_dir, "--format", "litert", "--quantize", "float16")
    assert code in (0, None), err  # float files are not refused for a drop


def test_a_missing_runtime_names_the_package_to_install(formats_run, cli, monkeypatch):
    result, root = formats_run
    real_find_spec = format_files.importlib.util.find_spec
    monkeypatch.setattr(format_files.importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnxruntime" else real_find_spec(name, *args))
    before = sorted(p.name for p in (root / "saved_models" / "classify").iterdir())
    code, _, err = cli("export", result.run_dir, "--format", "saved_model", "--format", "onnx")
    assert code == 2
    assert err.strip() == "error: --format onnx needs onnxruntime: pip install 'imgpipe[onnx]'"
    assert sorted(p.name for p in (root / "saved_models" / "classify").iterdir()) == before


def test_a_failed_conversion_names_the_op_and_leaves_no_file(formats_run, cli, monkeypatch):
    import keras

    result, root = formats_run

    def half_written(self, filepath, format, **kwargs):
        with open(filepath, "wb") as handle:
            handle.write(b"half")
        raise RuntimeError("could not convert\n'tf.Foo' op is neither a custom op nor a flex op")

    monkeypatch.setattr(keras.Model, "export", half_written)
    before = sorted(p.name for p in (root / "saved_models" / "classify" / "formats").iterdir())
    code, _, err = cli("export", result.run_dir, "--format", "onnx")
    assert code == 2
    assert err.strip() == "error: onnx: conversion failed ('tf.Foo' op is neither a custom op nor a flex op)"
    assert sorted(p.name for p in (root / "saved_models" / "classify" / "formats").iterdir()) == before


def test_quantizing_a_format_other_than_litert_is_refused():
    with pytest.raises(ExportError, match="onnx exports float32 only"):
        format_files.convert(None, "onnx", "int8", "/nonexistent")


def test_predict_and_evaluate_take_each_file_and_answer_as_the_saved_model_does(formats_run, cli, tmp_path):
    result, root = formats_run
    images = sorted(str(path) for path in (root / "images").rglob("*.png"))[::7]

    def predictions(export):
        code, out, err = cli("predict", export, *images, "--top-k", "3", "--json")
        assert code in (0, None), err
        return [json.loads(line) for line in out.splitlines()]

    def accuracy(export):
        code, out, err = cli("evaluate", export, "--data", root / "images", "--json",
                             "--report-dir", tmp_path / export.name)
        assert code in (0, None), err
        return json.loads(out)["accuracy"]

    expected, expected_accuracy = predictions(result.export_path), accuracy(result.export_path)
    for name in ("model.onnx", "model_float32.tflite", "openvino/model.xml"):
        answers = predictions(formats_folder(root) / name)
        assert [[p["class_name"] for p in a["predictions"]] for a in answers] == \
               [[p["class_name"] for p in a["predictions"]] for a in expected]
        np.testing.assert_allclose([[p["score"] for p in a["predictions"]] for a in answers],
                                   [[p["score"] for p in a["predictions"]] for a in expected], atol=1e-5)
        assert accuracy(formats_folder(root) / name) == expected_accuracy


def test_a_corrupt_file_is_named_with_exit_2(formats_run, cli, tmp_path):
    result, root = formats_run
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(formats_folder(root), copy)
    (copy / "model.onnx").write_bytes(b"not a model")
    code, _, err = cli("predict", copy / "model.onnx", next((root / "images").rglob("*.png")))
    assert code == 2
    assert err.startswith(f"error: {copy / 'model.onnx'}: cannot load it (")


def test_a_task_without_a_raw_output_contract_exports_only_the_saved_model(formats_run, monkeypatch):
    from imgpipe.engine.export.deploy import export_formats

    result, _ = formats_run
    run = load_run(result.run_dir)
    monkeypatch.setattr(type(run.task), "raw_output_contract", lambda self, metadata: None)
    with pytest.raises(ExportError, match="classify: exports only saved_model"):
        export_formats(run.task, run.model, run.data, run.recipe, None, ["onnx"])


def test_the_robustness_card_of_a_format_file_is_refused_in_one_line(formats_run, cli):
    result, root = formats_run
    code, _, err = cli("evaluate", formats_folder(root) / "model.onnx", "--data", root / "images", "--robustness")
    assert code == 2 and err.strip().endswith("--robustness runs on a SavedModel export (saved_models/<name>/<version>)")


def test_tta_is_inside_the_saved_model_and_every_file_and_evaluate_scores_what_they_serve(formats_run, cli, tmp_path):
    """`imgpipe export --tta flip+scales`: every artefact answers as the wrapped in-memory network, and
    `imgpipe evaluate` reports the figure that network gives on the folder's decoded files."""
    import tensorflow as tf

    from imgpipe.engine.export.saved_model import load_export
    from imgpipe.engine.serving import decode_batch
    from imgpipe.models.test_time_augmentation import with_test_time_augmentation
    from imgpipe.tasks.classify.task import classification_report

    result, root = formats_run
    run = load_run(result.run_dir)
    wrapped = with_test_time_augmentation(run.model, "flip+scales")
    images = np.round(random_images())  # serve_images rounds as the training pipeline does
    expected = np.asarray(wrapped(images))
    assert np.abs(expected - np.asarray(run.model(images))).max() > 1e-3  # the views change the answer

    code, out, err = cli("export", result.run_dir, "--export-dir", tmp_path, "--tta", "flip+scales", "--format", "all")
    assert code in (0, None), err
    version, metadata, loaded = load_export(tmp_path / "classify" / "1")
    assert metadata["tta"] == "flip+scales"
    served = loaded.signatures["serve_images"](images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    folder = tmp_path / "classify" / "formats" / "1"
    contracts = json.loads((folder / "contract.json").read_text())["files"]
    for contract in contracts:
        assert contract["tta"] == "flip+scales" and contract["tta_inside"].startswith("yes")
        np.testing.assert_allclose(format_files.load_runtime(contract["format"], folder / contract["file"])(images),
                                   expected, atol=1e-4)

    files = sorted((root / "images").rglob("*.png"))
    decoded = decode_batch(tf.constant([path.read_bytes() for path in files]), [16, 20], 25_000_000).images
    truths = [CLASSES.index(path.parent.name) for path in files]
    in_memory, _ = classification_report(truths, np.asarray(wrapped(decoded)), CLASSES)
    for export in (version, folder / "model.onnx"):
        code, out, err = cli("evaluate", export, "--data", root / "images", "--json", "--report-dir", tmp_path / "r")
        assert code in (0, None), err
        report = json.loads(out)
        assert report["tta"] == "flip+scales"
        assert report["accuracy"] == in_memory["accuracy"]
        assert report["nll"] == pytest.approx(in_memory["nll"], abs=1e-5)
