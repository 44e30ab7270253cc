import json
import logging

import numpy as np
import pytest
from PIL import Image

from imgpipe.data.boxes import Annotation, clean_annotation, pad_boxes, unpad_boxes
from imgpipe.data.detection import detect_format, read_detection
from imgpipe.errors import DataError

# Three images, 40 wide and 30 high; a.jpg has two objects, b.jpg one, c.jpg none.
OBJECTS = {
    "a": [("cat", [2, 3, 20, 25]), ("dog", [22, 5, 38, 28])],
    "b": [("dog", [10, 10, 30, 20])],
    "c": [],
}
WIDTH, HEIGHT = 40, 30


def write_images(folder, stems=OBJECTS):
    folder.mkdir(parents=True, exist_ok=True)
    for index, stem in enumerate(stems):
        pixels = np.full((HEIGHT, WIDTH, 3), 40 * index, np.uint8)
        Image.fromarray(pixels).save(folder / f"{stem}.jpg")


def voc_xml(stem, objects, path_inside="C:/Users/annotator/Desktop/elsewhere.jpg"):
    rows = "".join(f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for name, b in objects)
    return (f"<annotation><filename>other_{stem}.jpg</filename><path>{path_inside}</path>"
            f"<size><width>{WIDTH}</width><height>{HEIGHT}</height></size>{rows}</annotation>")


def make_voc(root, objects=OBJECTS):
    write_images(root / "images", objects)
    (root / "annotations").mkdir(parents=True)
    for stem, rows in objects.items():
        if rows or stem != "c":  # c.jpg has no XML at all: a negative
            (root / "annotations" / f"{stem}.xml").write_text(voc_xml(stem, rows))
    return root


def make_coco(root, objects=OBJECTS, file_name="annotations.json"):
    write_images(root / "images", objects)
    # Non-contiguous ids, listed out of order: classes follow id order.
    categories = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    ids = {"cat": 3, "dog": 7}
    images, annotations = [], []
    for image_id, (stem, rows) in enumerate(objects.items(), start=1):
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": WIDTH, "height": HEIGHT})
        for name, (x0, y0, x1, y1) in rows:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[name],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0, "area": (x1 - x0) * (y1 - y0)})
    (root / file_name).write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def make_yolo(root, objects=OBJECTS, names_file="classes.txt"):
    write_images(root / "images", objects)
    (root / "labels").mkdir(parents=True)
    names = ["cat", "dog"]
    if names_file == "data.yaml":
        (root / "data.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    else:
        (root / names_file).write_text("cat\ndog\n")
    for stem, rows in objects.items():
        if not rows:
            continue
        lines = [f"{names.index(name)} {(b[0] + b[2]) / 2 / WIDTH} {(b[1] + b[3]) / 2 / HEIGHT} "
                 f"{(b[2] - b[0]) / WIDTH} {(b[3] - b[1]) / HEIGHT}" for name, b in rows]
        (root / "labels" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    return root


def boxes_by_stem(data):
    """{stem: sorted [(class name, box)]} over both splits."""
    found = {}
    for annotation in data.state.annotations:
        stem = annotation.image.rsplit("/", 1)[-1].split(".")[0]
        found[stem] = sorted((data.class_names[c], [round(float(v), 3) for v in box])
                             for box, c in zip(annotation.boxes, annotation.classes))
    return found


EXPECTED = {stem: sorted((name, [float(v) for v in box]) for name, box in rows) for stem, rows in OBJECTS.items()}


@pytest.mark.parametrize("make, format", [(make_voc, "voc"), (make_coco, "coco"), (make_yolo, "yolo")])
def test_each_format_is_detected_and_read_to_the_same_boxes(tmp_path, make, format):
    root = make(tmp_path / "data")
    assert detect_format(root) == format
    data = read_detection(root, val_split=0.34, image_size=[32, 32])
    assert data.state.format == format
    assert data.class_names == ["cat", "dog"]
    assert boxes_by_stem(data) == EXPECTED
    assert len(data.train.paths) + len(data.val.paths) == 3 and len(data.val.paths) >= 1
    annotation = data.state.annotations[0]
    assert (annotation.width, annotation.height) == (WIDTH, HEIGHT)


def test_yolo_names_from_data_yaml_and_forced_format(tmp_path):
    root = make_yolo(tmp_path / "data", names_file="data.yaml")
    data = read_detection(root, format="yolo", val_split=0.34, image_size=[32, 32])
    assert data.class_names == ["cat", "dog"] and boxes_by_stem(data) == EXPECTED


def test_coco_instances_files_keep_their_train_and_val_split(tmp_path):
    root = tmp_path / "data"
    make_coco(root, {"a": OBJECTS["a"], "c": []}, file_name="instances_train.json")
    make_coco(root, {"b": OBJECTS["b"]}, file_name="instances_val.json")
    data = read_detection(root, image_size=[32, 32])
    assert [p.rsplit("/", 1)[-1] for p in data.val.paths] == ["b.jpg"]
    assert len(data.train.paths) == 2


def test_voc_is_matched_by_stem_not_by_the_path_inside_the_xml(tmp_path):
    data = read_detection(make_voc(tmp_path / "data"), val_split=0.34, image_size=[32, 32])
    # The XML names other_a.jpg at C:/Users/...; the boxes still land on a.jpg.
    assert boxes_by_stem(data)["a"] == EXPECTED["a"]


def test_boxes_outside_are_clipped_and_degenerate_ones_dropped_with_warnings(caplog):
    annotation = Annotation("photo.jpg", [[-5, 10, 50, 60], [10, 10, 10, 20], [30, 5, 20, 15], [1, 1, 5, 5]],
                            [0, 1, 1, 0])
    with caplog.at_level(logging.WARNING, logger="imgpipe"):
        cleaned = clean_annotation(annotation, width=40, height=80)
    assert cleaned.boxes.tolist() == [[0, 10, 40, 60], [1, 1, 5, 5]]
    assert cleaned.classes.tolist() == [0, 0]
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "photo.jpg" in messages and "clipped" in messages and "2 zero-area or inverted" in messages


def test_a_box_entirely_outside_the_image_is_dropped():
    cleaned = clean_annotation(Annotation("p.jpg", [[50, 50, 60, 60]], [0]), width=40, height=30)
    assert len(cleaned.boxes) == 0


def test_images_without_objects_are_kept_as_negatives(tmp_path):
    data = read_detection(make_voc(tmp_path / "data"), val_split=0.34, image_size=[32, 32])
    assert boxes_by_stem(data)["c"] == []


def test_padding_round_trip():
    padded = pad_boxes(np.array([[1, 2, 3, 4]], np.float32), np.array([2]), 3)
    assert padded.shape == (3, 5) and padded[1:, 4].tolist() == [-1, -1]
    boxes, classes = unpad_boxes(padded)
    assert boxes.tolist() == [[1, 2, 3, 4]] and classes.tolist() == [2]


def test_invalid_xml_stops_naming_the_file(tmp_path):
    root = make_voc(tmp_path / "data")
    (root / "annotations" / "b.xml").write_text("<annotation><object><name>dog</name>")
    with pytest.raises(DataError, match=r"b\.xml: not valid VOC XML"):
        read_detection(root)


def test_xml_entity_expansion_is_refused(tmp_path):
    root = make_voc(tmp_path / "data")
    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
            "<annotation><object><name>&lol2;</name></object></annotation>")
    (root / "annotations" / "b.xml").write_text(bomb)
    with pytest.raises(DataError, match=r"b\.xml: not valid VOC XML"):
        read_detection(root)


def test_non_numeric_coordinate_names_the_file_and_object(tmp_path):
    root = make_voc(tmp_path / "data")
    (root / "annotations" / "b.xml").write_text(voc_xml("b", [("dog", ["ten", 1, 5, 5])]))
    with pytest.raises(DataError, match=r"b\.xml: object 1 \(dog\)"):
        read_detection(root)


def test_invalid_json_stops_naming_the_file(tmp_path):
    root = make_coco(tmp_path / "data")
    (root / "annotations.json").write_text('{"images": [')
    with pytest.raises(DataError, match=r"annotations\.json: not valid JSON"):
        read_detection(root)


def test_coco_without_required_sections_is_refused(tmp_path):
    root = make_coco(tmp_path / "data")
    (root / "annotations.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="not a COCO detection file"):
        read_detection(root)


def test_coco_file_name_may_not_escape_the_data_folder(tmp_path):
    root = make_coco(tmp_path / "data")
    document = json.loads((root / "annotations.json").read_text())
    document["images"][0]["file_name"] = "../../../etc/passwd"
    (root / "annotations.json").write_text(json.dumps(document))
    with pytest.raises(DataError, match="points outside the data folder"):
        read_detection(root)


def test_yolo_bad_line_and_bad_class_name_the_file_and_line(tmp_path):
    root = make_yolo(tmp_path / "data")
    (root / "labels" / "b.txt").write_text("1 0.5 0.5 0.2\n")
    with pytest.raises(DataError, match=r"b\.txt:1: expected 'class x_center"):
        read_detection(root)
    (root / "labels" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"b\.txt:2: class 5 is not in 0\.\.1"):
        read_detection(root)


def test_yolo_without_class_names_is_refused(tmp_path):
    root = make_yolo(tmp_path / "data")
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="class names"):
        read_detection(root)


def test_unreadable_image_is_skipped_and_counted(tmp_path, caplog):
    root = make_voc(tmp_path / "data", {**OBJECTS, "d": [("cat", [1, 1, 9, 9])]})
    (root / "images" / "d.jpg").write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING, logger="imgpipe"):
        data = read_detection(root, val_split=0.34, image_size=[32, 32])
    assert len(data.skipped) == 1 and "d.jpg" in data.skipped[0]
    assert "d" not in boxes_by_stem(data)


def test_layout_that_is_not_detection_is_refused(tmp_path):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="no detection layout found"):
        read_detection(tmp_path / "data")


def test_real_raccoon_voc_set_reads_every_box(shared_data):
    data = read_detection(shared_data / "raccoon")
    annotations = data.state.annotations
    assert data.state.format == "voc" and data.class_names == ["raccoon"]
    assert len(annotations) == 200 and sum(len(a.boxes) for a in annotations) == 217
    assert all(np.all(a.boxes[:, 2:] <= [a.width, a.height]) for a in annotations)


def read_paths(data):
    return [str(p) for p in list(data.train.paths) + list(data.val.paths)]


def test_voc_never_reads_the_file_its_xml_points_at_outside_the_folder(tmp_path):
    # A real image outside the data folder, named by absolute <path> and by <filename> with ../.
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (WIDTH, HEIGHT)).save(outside)
    root = make_voc(tmp_path / "data")
    (root / "annotations" / "a.xml").write_text(voc_xml("a", OBJECTS["a"], path_inside=str(outside))
                                                .replace("other_a.jpg", "../../outside.jpg"))
    paths = read_paths(read_detection(root, val_split=0.34, image_size=[32, 32]))
    assert sorted(p.rsplit("/", 1)[-1] for p in paths) == ["a.jpg", "b.jpg", "c.jpg"]
    assert all(str(root) in p for p in paths)


def test_yolo_ignores_image_folders_data_yaml_points_at(tmp_path):
    # Ultralytics' data.yaml may name `path:`/`train:` folders; imgpipe reads only images/ below --data.
    elsewhere = tmp_path / "elsewhere" / "images"
    write_images(elsewhere, {"stolen": []})
    root = make_yolo(tmp_path / "data", names_file="data.yaml")
    (root / "data.yaml").write_text(f"path: {tmp_path / 'elsewhere'}\ntrain: {elsewhere}\nval: ../elsewhere/images\n"
                                    "names:\n  0: cat\n  1: dog\n")
    paths = read_paths(read_detection(root, val_split=0.34, image_size=[32, 32]))
    assert sorted(p.rsplit("/", 1)[-1] for p in paths) == ["a.jpg", "b.jpg", "c.jpg"]
