import csv
import io
import json

import albumentations as A
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import imgpipe
from imgpipe.engine import augment
from imgpipe.engine.augment import Augmenter
from imgpipe.tasks.detect.coco_eval import coco_map, detection_hits
from imgpipe.tasks.detect.task import score_calibration
from imgpipe.understand.calibration import describe, image_halves
from imgpipe.data.boxes import pad_boxes, unpad_boxes
from imgpipe.data.demo import make_detection_folder
from imgpipe.engine.export.saved_model import load_export
from imgpipe.models.centernet import CenterNetLoss, decode_detections, render_targets
from imgpipe.engine.serving import decode_batch


def only(transform):
    """A FAMILIES table whose viewpoint family is just `transform` and the others are empty."""
    return {"viewpoint": lambda strength: [transform], "illumination": lambda strength: [],
            "occlusion": lambda strength: []}


def test_a_horizontal_flip_moves_the_box_exactly(monkeypatch):
    monkeypatch.setattr(augment, "FAMILIES", only(A.HorizontalFlip(p=1.0)))
    image = np.zeros((30, 40, 3), np.uint8)
    target = pad_boxes(np.array([[2, 5, 12, 20], [30, 0, 40, 30]], np.float32), np.array([0, 1]), 4)
    flipped_image, flipped = Augmenter(target_kind="boxes").apply(image, target, seed=1)
    boxes, classes = unpad_boxes(flipped)
    np.testing.assert_allclose(boxes, [[28, 5, 38, 20], [0, 0, 10, 30]], atol=1e-4)
    assert classes.tolist() == [0, 1] and flipped.shape == (4, 5) and flipped_image.shape == (30, 40, 3)


def test_boxes_pushed_out_of_the_image_are_dropped(monkeypatch):
    shift = A.Affine(translate_px={"x": 30, "y": 0}, p=1.0)
    monkeypatch.setattr(augment, "FAMILIES", only(shift))
    target = pad_boxes(np.array([[25, 5, 35, 15], [0, 0, 5, 10]], np.float32), np.array([0, 1]), 3)
    _, moved = Augmenter(target_kind="boxes").apply(np.zeros((20, 40, 3), np.uint8), target, seed=0)
    boxes, classes = unpad_boxes(moved)
    # The first box leaves the 40-wide image; the second lands at x 30..35.
    assert classes.tolist() == [1]
    np.testing.assert_allclose(boxes, [[30, 0, 35, 10]], atol=1e-4)


def test_viewpoint_policy_keeps_each_box_on_its_object():
    image = np.zeros((64, 64, 3), np.uint8)
    image[20:40, 10:30] = 255
    target = pad_boxes(np.array([[10, 20, 30, 40]], np.float32), np.array([0]), 2)
    augmenter = Augmenter("strong", "none", "none", target_kind="boxes")
    checked = 0
    for seed in range(20):
        moved_image, moved = augmenter.apply(image, target, seed)
        boxes, _ = unpad_boxes(moved)
        if len(boxes) == 0:
            continue
        checked += 1
        x0, y0, x1, y1 = np.round(boxes[0]).astype(int)
        white = moved_image[..., 0] > 128
        inside = white[max(y0 - 2, 0): y1 + 2, max(x0 - 2, 0): x1 + 2].sum()
        assert inside >= 0.9 * white.sum(), f"seed {seed}: the box {boxes[0]} lost its object"
    assert checked >= 15, f"only {checked} of 20 augmentations kept the box"


def test_rendered_targets_decode_back_to_the_boxes():
    boxes = np.array([[[8, 12, 40, 36, 1], [44, 4, 60, 28, 0], [0, 0, 0, 0, -1]]], np.float32)
    heat, index, regression, valid = render_targets(tf.constant(boxes), num_classes=2, output_size=(16, 16))
    assert valid.numpy().tolist() == [[True, True, False]]
    assert float(tf.reduce_max(heat[0, :, :, 1])) == pytest.approx(1.0)
    # A "network" that outputs exactly the targets: logits of the heat map, regressions at the centres.
    logits = np.log(np.clip(heat.numpy(), 1e-6, 1 - 1e-6) / (1 - np.clip(heat.numpy(), 1e-6, 1 - 1e-6)))
    raw = np.zeros((1, 16 * 16, 4), np.float32)
    raw[0, index.numpy()[0, :2]] = regression.numpy()[0, :2]
    outputs = np.concatenate([logits, raw.reshape(1, 16, 16, 4)], axis=-1)
    found, scores, classes, count = decode_detections(tf.constant(outputs), num_classes=2, min_score=0.5)
    assert int(count[0]) == 2
    order = np.argsort(classes.numpy()[0, :2])
    np.testing.assert_allclose(found.numpy()[0, :2][order], [[44, 4, 60, 28], [8, 12, 40, 36]], atol=1e-3)

    loss = CenterNetLoss(2)
    assert float(loss(tf.constant(boxes), tf.constant(outputs))) < 0.05
    assert float(loss(tf.constant(boxes), tf.zeros_like(outputs))) > 1.0


def test_decode_suppresses_overlapping_peaks_of_one_class_and_keeps_other_classes():
    outputs = np.full((1, 8, 8, 2 + 4), -10.0, np.float32)
    outputs[..., 2:4] = np.log(8.0)  # every cell predicts a 32x32 box (8 cells of stride 4)
    outputs[..., 4:] = 0.0  # centred on its cell
    outputs[0, 2, 2, 0] = 3.0  # class 0 centred at (8, 8): box -8..24
    outputs[0, 2, 4, 0] = 2.5  # class 0 at x 16, a separate peak; IoU 0.6 with the first -> suppressed
    outputs[0, 2, 6, 0] = 2.0  # class 0 at x 24; IoU 1/3 with the first -> kept
    outputs[0, 6, 6, 1] = 1.0  # class 1 at (24, 24): overlaps the last class-0 box, but another class
    boxes, scores, classes, count = decode_detections(tf.constant(outputs), num_classes=2, min_score=0.1)
    kept = int(count[0])
    got = sorted(zip(classes.numpy()[0, :kept].tolist(), boxes.numpy()[0, :kept].round(3).tolist()))
    assert got == [(0, [-8.0, -8.0, 24.0, 24.0]), (0, [8.0, -8.0, 40.0, 24.0]), (1, [8.0, 8.0, 40.0, 40.0])]
    np.testing.assert_allclose(scores.numpy()[0, :kept], 1 / (1 + np.exp([-3.0, -2.0, -1.0])), rtol=1e-5)


def test_coco_map_of_perfect_and_half_found_predictions():
    truth = [(np.array([[10, 10, 50, 50], [60, 60, 90, 95]]), np.array([0, 1])),
             (np.array([[5, 5, 25, 40]]), np.array([0]))]
    perfect = [(boxes, np.ones(len(boxes)), classes) for boxes, classes in truth]
    result = coco_map(truth, perfect, ["cat", "dog"])
    assert result["map"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0)
    assert result["ap/cat"] == pytest.approx(1.0) and result["ap50/dog"] == pytest.approx(1.0)

    # Only the first cat found: recall 0.5 at precision 1 -> 51 of COCO's 101 recall points.
    half = [(truth[0][0][:1], [0.9], [0]), (np.zeros((0, 4)), [], [])]
    result = coco_map(truth, half, ["cat", "dog"])
    assert result["ap50/cat"] == pytest.approx(51 / 101)
    assert result["ap50/dog"] == pytest.approx(0.0)
    assert coco_map(truth, [(np.zeros((0, 4)), [], [])] * 2, ["cat", "dog"])["map"] == 0.0


def test_each_detection_is_scored_right_where_map50_would_count_it():
    truth = [(np.array([[10, 10, 50, 50], [60, 60, 90, 95]]), np.array([0, 1])),
             (np.array([[5, 5, 25, 40]]), np.array([0]))]
    found = [(np.array([[11, 10, 50, 52], [60, 60, 90, 95], [12, 10, 50, 50], [0, 0, 9, 9]]),
              np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 0, 1])),  # a dog taken for a cat, a duplicate, a miss
             (np.array([[5, 5, 25, 40]]), np.array([0.5]), np.array([0]))]
    scores, hits, images = detection_hits(truth, found, ["cat", "dog"])
    right = {(round(s, 2), i): h for s, h, i in zip(scores, hits, images)}
    assert right == {(0.9, 0): 1, (0.7, 0): 0, (0.8, 0): 0, (0.6, 0): 0, (0.5, 1): 1}


def test_detection_scores_are_calibrated_on_half_the_images_and_reported_not_served(tmp_path):
    # Scores of 0.3 on boxes that are right 80 % of the time: no temperature can lift 0.3 over 0.5.
    rng = np.random.default_rng(0)
    truth, found, right = [], [], rng.random(40) < 0.8
    for index in range(40):
        box = rng.integers(0, 50, 2)
        box = np.concatenate([box, box + 30])[None]
        truth.append((box, np.array([0])))
        found.append((box if right[index] else box + 200, np.array([0.3]), np.array([0])))
    answers = [{"boxes": boxes, "scores": scores, "class_ids": classes, "num_detections": 1}
               for boxes, scores, classes in found]
    record = score_calibration(answers, truth, ["cat"], tmp_path)
    assert record["unit"] == "validation detections" and record["fitted_on"] + record["reported_on"] == 40
    # one bin: its confidence is the score, its accuracy the share of right boxes among the held-out images'
    fit, report = image_halves(np.arange(40), seed=0)
    assert record["before"]["ece"] == pytest.approx(abs(0.3 - right[report].mean()))
    # the logistic map lifts 0.3 to the share right in the fitting half, which the other half is scored against
    assert record["after"]["ece"] == pytest.approx(abs(right[fit].mean() - right[report].mean()), abs=1e-3)
    assert record["used"] is False and record["why"].startswith("not served: the served boxes")
    assert describe(record).startswith("logistic (Platt) on the score's log-odds fitted on 20 validation detections")
    assert (tmp_path / "reliability.png").is_file()


@pytest.fixture(scope="module")
def detect_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    make_detection_folder(root / "data", images=12, size=64, seed=3)
    result = imgpipe.run("detect", ["train.epochs=2", "train.batch_size=4", "train.verbose=0", "detect.map_every=1",
                                    "data.image_size=64", "detect.score_threshold=0.0", "detect.max_detections=7",
                                    "evaluate.robustness=false", f"train.run_dir={root / 'run'}", f"export.root={root / 'models'}"],
                         data=root / "data")
    return result, root


def test_run_writes_map_metrics_and_pictures(detect_run):
    result, _ = detect_run
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert {"val_map", "val_map50", "val_ap/circle", "val_ap50/square"} <= set(metrics)
    assert 0.0 <= metrics["val_map"] <= metrics["val_map50"] <= 1.0
    history = (result.run_dir / "history.csv").read_text().splitlines()
    assert "val_map50" in history[0] and len(history) == 3
    for name in ("curves.png", "augment_preview.png", "predictions.png", "suspect_labels.png"):
        assert (result.run_dir / name).is_file()
    # every validation image's boxes ranked, most suspect first; the detection scores' calibration reported
    rows = list(csv.DictReader((result.run_dir / "suspect_labels.csv").open()))
    assert len(rows) == metrics["images_validation"] and set(rows[0]) == {"file", "score", "given_boxes", "sure_boxes"}
    assert [float(row["score"]) for row in rows] == sorted(float(row["score"]) for row in rows)
    assert "skipped" in metrics["calibration"] or metrics["calibration"]["used"] is False


def encoded(picture):
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    return buffer.getvalue()


def test_export_answers_in_original_pixels_and_matches_the_in_memory_model(detect_run):
    result, root = detect_run
    _, metadata, loaded = load_export(result.export_path)
    assert metadata["class_names"] == ["circle", "square", "triangle"]
    assert metadata["score_threshold"] == 0.0 and metadata["max_detections"] == 7
    base = np.asarray(Image.open(root / "data" / "images" / "shapes_0000.png").convert("RGB"))
    big = np.asarray(Image.fromarray(base).resize((200, 120)))
    answer = loaded.signatures["serving_default"](image_bytes=tf.constant([encoded(base), encoded(big)]))
    assert answer["boxes"].shape[:2] == (2, 7) and answer["num_detections"].numpy().max() <= 7

    images = decode_batch(tf.constant([encoded(base), encoded(big)]), [64, 64], 25_000_000).images
    boxes, scores, classes, counts = decode_detections(result.model(images, training=False), 3, max_detections=7,
                                                       min_score=0.0)
    np.testing.assert_array_equal(answer["num_detections"].numpy(), counts.numpy())
    np.testing.assert_allclose(answer["scores"].numpy(), scores.numpy(), atol=1e-5)
    np.testing.assert_allclose(answer["boxes"].numpy()[0], np.clip(boxes.numpy()[0], 0, 64), atol=1e-3)
    scale = np.array([200 / 64, 120 / 64, 200 / 64, 120 / 64])
    expected_big = np.clip(boxes.numpy()[1] * scale, 0, [200, 120, 200, 120])
    count = int(counts[1])
    np.testing.assert_allclose(answer["boxes"].numpy()[1][:count], expected_big[:count], atol=1e-2)
    names = answer["class_names"].numpy()[0][: int(counts[0])]
    assert [n.decode() for n in names] == [metadata["class_names"][c] for c in classes.numpy()[0][: int(counts[0])]]


def test_a_refused_image_finds_no_objects_and_the_other_gets_its_own_answer(detect_run):
    result, root = detect_run
    serve = load_export(result.export_path)[2].signatures["serving_default"]
    good = encoded(np.asarray(Image.open(root / "data" / "images" / "shapes_0000.png").convert("RGB")))
    alone = serve(image_bytes=tf.constant([good]))
    mixed = serve(image_bytes=tf.constant([good[:40], good]))
    assert mixed["status"].numpy().tolist() == [b"truncated", b"ok"]
    assert int(mixed["num_detections"][0]) == 0 and set(mixed["class_names"].numpy()[0]) == {b""}
    assert not mixed["boxes"].numpy()[0].any() and set(mixed["class_ids"].numpy()[0]) == {-1}
    for key in ("boxes", "scores", "num_detections"):
        np.testing.assert_allclose(mixed[key].numpy()[1], alone[key].numpy()[0], atol=1e-5)


def test_cli_evaluate_and_predict_draw_boxes(cli, detect_run, tmp_path):
    result, root = detect_run
    code, out, err = cli("evaluate", result.export_path, "--data", root / "data", "--json",
                         "--report-dir", tmp_path / "report")
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == 12 and 0.0 <= report["map50"] <= 1.0 and "ap/triangle" in report

    image = root / "data" / "images" / "shapes_0001.png"
    code, out, err = cli("predict", result.export_path, image, "--out", tmp_path / "drawn", "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["file"] == str(image) and len(answer["objects"]) <= 7
    assert all(set(o) == {"class_name", "score", "box"} for o in answer["objects"])
    assert Image.open(answer["drawn"]).size == (64, 64)


def test_cli_predict_draws_into_runs_predict_by_default(cli, detect_run, tmp_path, monkeypatch):
    result, root = detect_run
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("predict", result.export_path, root / "data" / "images" / "shapes_0002.png")
    assert code == 0, err
    assert (tmp_path / "runs" / "predict" / "detect" / "shapes_0002_boxes.png").is_file()


def test_cli_detect_names_a_broken_annotation_file(cli, tmp_path):
    make_detection_folder(tmp_path / "data", images=4, size=32)
    (tmp_path / "data" / "annotations" / "shapes_0002.xml").write_text("<annotation><object>")
    code, _, err = cli("run", "detect", "--data", tmp_path / "data", "--epochs", "1")
    assert code == 2 and "shapes_0002.xml" in err and "Traceback" not in err


@pytest.mark.slow
def test_detection_on_two_logical_devices_follows_one_device_once_seeded(tmp_path, monkeypatch):
    from tests.engine.test_train import StepRecorder, with_callback

    make_detection_folder(tmp_path / "data", images=11, size=64, seed=5)  # 8 training images, 3 validation
    runs = {}
    for devices, batch_size in ((1, 4), (2, 2)):  # the same global batch of 4: 2 steps either way
        recorder = StepRecorder()
        with monkeypatch.context() as patch:
            with_callback(patch, recorder)
            keras.utils.set_random_seed(7)
            result = imgpipe.run("detect", [
                "train.epochs=1", f"train.batch_size={batch_size}", "train.verbose=0", f"train.devices={devices}",
                "train.lr_scaling=none", "data.image_size=64", "export.enabled=false", "evaluate.robustness=false",
                "augment.viewpoint=none", "augment.illumination=none", "augment.occlusion=none",
                f"train.run_dir={tmp_path / str(devices)}"], data=tmp_path / "data")
        runs[devices] = result.metrics, recorder
    (one, one_steps), (two, two_steps) = runs[1], runs[2]
    for mine, theirs in zip(two_steps.initial, one_steps.initial):
        np.testing.assert_array_equal(mine, theirs)
    assert two_steps.iterations == one_steps.iterations == [1, 2]
    # Not equal to the last digit as classification's LeNet is: CenterNet's batch norm sees each replica's
    # half batch. Measured 5.655 against 5.597 (1 % apart); the unseeded test this replaces allowed 0.2x to 5x.
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=0.05)
    assert two["val_map50"] == pytest.approx(one["val_map50"], abs=0.1)


def test_detection_exports_the_network_with_its_decode_in_the_contract(detect_run, cli):
    result, root = detect_run
    code, out, err = cli("export", result.run_dir, "--format", "litert", "--format", "onnx", "--format", "openvino")
    assert code in (0, None), err
    folder = root / "models" / "detect" / "formats" / "1"
    report = json.loads((folder / "export_report.json").read_text())
    assert report["metric"] == "map50"
    for entry in report["files"]:
        assert entry["max_abs_diff"] < 1e-4
        # The same decode and NMS run on each file's raw output as on the Keras model's.
        assert entry["metric_format"] == pytest.approx(entry["metric_keras"], abs=1e-6)
    contract = json.loads((folder / "contract.json").read_text())["files"][1]
    assert contract["format"] == "onnx"
    assert contract["output"]["meaning"].startswith("CenterNet head [N, H/4, W/4, 3 + 4]: 3 class heat-map logits")
    steps = " ".join(contract["output"]["to_answers"])
    assert "NMS is the caller's" in steps and "at most 7 boxes" in steps and "IoU 0.5" in steps
    assert contract["task_metadata"]["score_threshold"] == 0.0

    def answers(export, out_dir):
        image = root / "data" / "images" / "shapes_0001.png"
        code, out, err = cli("predict", export, image, "--out", out_dir, "--json")
        assert code == 0, err
        objects = json.loads(out)["objects"]
        code, out, err = cli("evaluate", export, "--data", root / "data", "--json", "--report-dir", out_dir)
        assert code == 0, err
        return objects, json.loads(out)["map50"]

    expected_objects, expected_map50 = answers(result.export_path, root / "answers" / "saved_model")
    assert expected_objects
    for name in ("model_float32.tflite", "model.onnx", "openvino/model.xml"):
        objects, map50 = answers(folder / name, root / "answers" / name.replace("/", "_"))
        assert [o["class_name"] for o in objects] == [o["class_name"] for o in expected_objects]
        np.testing.assert_allclose([o["box"] for o in objects], [o["box"] for o in expected_objects], atol=0.05)
        np.testing.assert_allclose([o["score"] for o in objects], [o["score"] for o in expected_objects], atol=1e-4)
        assert map50 == pytest.approx(expected_map50, abs=1e-6)
