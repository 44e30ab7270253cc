"""The instances task end to end on a tiny demo folder: metrics, export parity, refused images, the CLI."""

import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import imgpipe
from imgpipe.data.demo import make_instances_folder
from imgpipe.engine.serving import decode_batch
from imgpipe.engine.use_export import load_export
from imgpipe.models.centermask import decode_instances, instance_id_map, paint_instances
from imgpipe.understand.check import guess_task


@pytest.fixture(scope="module")
def instances_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("instances")
    make_instances_folder(root / "data", images=12, size=64, seed=3)
    result = imgpipe.run("instances", ["train.epochs=10", "train.batch_size=4", "train.verbose=0",
                                       "instances.map_every=1", "data.image_size=64", "instances.score_threshold=0.0",
                                       "instances.max_detections=7", "evaluate.robustness=false",
                                       f"train.run_dir={root / 'run'}", f"export.root={root / 'models'}"],
                         data=root / "data")
    return result, root


def encoded(picture):
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    return buffer.getvalue()


def png(data):
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.int32)


def test_run_writes_mask_and_box_map_every_epoch(instances_run):
    result, _ = instances_run
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert {"val_mask_map", "val_mask_map50", "val_box_map", "val_box_map50", "val_mask_ap50/circle"} <= set(metrics)
    history = (result.run_dir / "history.csv").read_text().splitlines()
    assert "val_mask_map50" in history[0] and len(history) == 11
    column = history[0].split(",").index("val_mask_map50")
    assert all(row.split(",")[column] != "nan" for row in history[1:])  # computed at every epoch (map_every=1)


def test_export_answers_match_the_in_memory_model_at_each_images_own_size(instances_run):
    result, root = instances_run
    _, metadata, loaded = load_export(result.export_path)
    assert metadata["class_names"] == ["circle", "square", "triangle"] and metadata["max_detections"] == 7
    base = np.asarray(Image.open(root / "data" / "images" / "shapes_0000.png").convert("RGB"))
    big = np.asarray(Image.fromarray(base).resize((200, 120)))
    answer = loaded.signatures["serving_default"](image_bytes=tf.constant([encoded(base), encoded(big)]))

    images = decode_batch(tf.constant([encoded(base), encoded(big)]), [64, 64], 25_000_000).images
    boxes, scores, classes, counts, logits = decode_instances(result.model(images, training=False), 3,
                                                              max_detections=7, min_score=0.0)
    maps = instance_id_map(logits, boxes, scores, counts, (64, 64)).numpy()
    assert int(counts[0]) > 0
    np.testing.assert_array_equal(answer["num_detections"].numpy(), counts.numpy())
    np.testing.assert_allclose(answer["scores"].numpy(), scores.numpy(), atol=1e-5)
    np.testing.assert_array_equal(png(answer["instance_png_bytes"].numpy()[0]), maps[0])
    # the big image: boxes in its pixels, its ID map painted at its own size (each mask resized to it)
    scale = np.array([200 / 64, 120 / 64, 200 / 64, 120 / 64])
    count = int(counts[1])
    np.testing.assert_allclose(answer["boxes"].numpy()[1][:count],
                               np.clip(boxes.numpy()[1] * scale, 0, [200, 120, 200, 120])[:count], atol=1e-2)
    big_map = png(answer["instance_png_bytes"].numpy()[1])
    assert big_map.shape == (120, 200) and (int(answer["height"][1]), int(answer["width"][1])) == (120, 200)
    painted = paint_instances(logits[1], boxes[1] * scale.astype(np.float32), scores[1], counts[1], (120, 200))
    np.testing.assert_array_equal(big_map, painted)
    assert (big_map > 0).sum() > 100  # masks to compare, not two empty maps
    assert not np.array_equal(big_map, tf.image.resize(maps[1][..., None], (120, 200), "nearest")[..., 0])
    # each instance's own PNG is its pixels of the ID map, cropped to its box; none beyond num_detections
    crops = answer["instance_mask_png_bytes"].numpy()[1]
    for number in range(count):
        x0, y0 = (int(np.floor(v)) for v in answer["boxes"].numpy()[1][number][:2])
        crop = png(crops[number]) > 0
        np.testing.assert_array_equal(crop, big_map[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] == number + 1)
    assert all(crop == b"" for crop in crops[count:])


def test_a_refused_image_gets_no_instances_and_the_other_its_own_answer(instances_run):
    result, root = instances_run
    serve = load_export(result.export_path)[2].signatures["serving_default"]
    good = encoded(np.asarray(Image.open(root / "data" / "images" / "shapes_0000.png").convert("RGB")))
    alone = serve(image_bytes=tf.constant([good]))
    mixed = serve(image_bytes=tf.constant([good[:40], good]))
    assert mixed["status"].numpy().tolist() == [b"truncated", b"ok"]
    assert int(mixed["num_detections"][0]) == 0 and set(mixed["class_ids"].numpy()[0]) == {-1}
    assert mixed["instance_png_bytes"].numpy()[0] == b"" and set(mixed["instance_mask_png_bytes"].numpy()[0]) == {b""}
    for key in ("boxes", "scores", "num_detections", "instance_png_bytes"):
        np.testing.assert_array_equal(mixed[key].numpy()[1], alone[key].numpy()[0])


def test_cli_evaluate_and_predict_write_the_instance_png(cli, instances_run, tmp_path):
    result, root = instances_run
    code, out, err = cli("evaluate", result.export_path, "--data", root / "data", "--json",
                         "--report-dir", tmp_path / "report")
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == 12 and {"mask_map50", "box_map50", "mask_ap50/square"} <= set(report)

    image = root / "data" / "images" / "shapes_0001.png"
    code, out, err = cli("predict", result.export_path, image, "--out", tmp_path / "drawn", "--json")
    assert code == 0, err
    answer = json.loads(out)
    ids = png(open(answer["instance_png"], "rb").read())
    assert ids.shape == (64, 64) and answer["count"] == len(answer["objects"]) <= 7
    assert [o["pixels"] for o in answer["objects"]] == [int((ids == n + 1).sum()) for n in range(answer["count"])]
    assert Image.open(answer["drawn"]).size == (64, 64)


def test_check_guesses_instances_and_a_wrong_size_id_mask_exits_2_naming_it(cli, tmp_path):
    make_instances_folder(tmp_path / "data", images=6, size=32)
    assert guess_task(tmp_path / "data") == "instances"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "data" / "instances" / "shapes_0003.png")
    code, _, err = cli("run", "instances", "--data", tmp_path / "data", "--epochs", "1")
    assert code == 2 and "shapes_0003.png" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
