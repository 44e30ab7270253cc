import json
import logging

import numpy as np
import pycocotools.mask
import pytest
import scipy.ndimage
from PIL import Image

from imgpipe.data.demo import make_instances_folder
from imgpipe.data.instances import (InstanceLabels, detect_instance_format, has_instance_layout,
                                    read_instance_annotations, read_instances)
from imgpipe.errors import DataError

# Images 40 wide and 30 high; a.png has a large cat with a small dog on it, b.png one dog, c.png nothing.
# Objects are squares by corners (x0, y0, x1, y1); cv2 fills the outline's pixels, so a square covers
# columns x0..x1 and rows y0..y1 and its box is [x0, y0, x1 + 1, y1 + 1].
WIDTH, HEIGHT = 40, 30
OBJECTS = {
    "a": [("dog", (10, 8, 14, 12)), ("cat", (4, 4, 30, 24))],
    "b": [("dog", (20, 5, 35, 25))],
    "c": [],
}
NAMES = ["cat", "dog"]


def square_mask(corners):
    x0, y0, x1, y1 = corners
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[y0:y1 + 1, x0:x1 + 1] = True
    return mask


def polygon(corners):
    x0, y0, x1, y1 = corners
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def write_images(folder, stems):
    folder.mkdir(parents=True, exist_ok=True)
    for index, stem in enumerate(stems):
        Image.fromarray(np.full((HEIGHT, WIDTH, 3), (60 * index + 20) % 256, np.uint8)).save(folder / f"{stem}.png")


def coco_document(objects, segment=lambda corners: [polygon(corners)]):
    categories = [{"id": 9, "name": "dog"}, {"id": 2, "name": "cat"}]  # classes follow id order: cat, dog
    ids = {"cat": 2, "dog": 9}
    images, annotations = [], []
    for image_id, (stem, rows) in enumerate(objects.items(), start=1):
        images.append({"id": image_id, "file_name": f"{stem}.png", "width": WIDTH, "height": HEIGHT})
        for name, corners in rows:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[name],
                                "segmentation": segment(corners), "bbox": [0, 0, 1, 1], "iscrowd": 0})
    return {"images": images, "annotations": annotations, "categories": categories}


def make_coco(root, objects=OBJECTS, file_name="annotations.json", **kwargs):
    write_images(root / "images", objects)
    (root / file_name).write_text(json.dumps(coco_document(objects, **kwargs)))
    return root


def yolo_line(name, corners):
    coordinates = [v / (WIDTH if i % 2 == 0 else HEIGHT) for i, v in enumerate(polygon(corners))]
    return " ".join([str(NAMES.index(name))] + [repr(v) for v in coordinates])


def make_yolo(root, objects=OBJECTS):
    write_images(root / "images", objects)
    (root / "labels").mkdir(parents=True)
    (root / "classes.txt").write_text("cat\ndog\n")
    for stem, rows in objects.items():
        if rows:
            (root / "labels" / f"{stem}.txt").write_text("\n".join(yolo_line(*row) for row in rows) + "\n")
    return root


def make_id_masks(root, objects=OBJECTS, sidecars=True):
    """Each object k (1-based, in list order) drawn as value k, later objects over earlier ones."""
    write_images(root / "images", objects)
    (root / "instances").mkdir(parents=True)
    for stem, rows in objects.items():
        ids = np.zeros((HEIGHT, WIDTH), np.uint8)
        for number, (_, corners) in enumerate(sorted(rows, key=lambda row: row[0] == "dog"), start=1):
            ids[square_mask(corners)] = number
        Image.fromarray(ids).save(root / "instances" / f"{stem}.png")
        if sidecars:
            names = {str(n): name for n, (name, _) in enumerate(sorted(rows, key=lambda r: r[0] == "dog"), 1)}
            (root / "instances" / f"{stem}.json").write_text(json.dumps(names))
    return root


def by_stem(splits):
    return {a.image.rsplit("/", 1)[-1].split(".")[0]: a for annotations in splits.values() for a in annotations}


@pytest.mark.parametrize("make", [make_coco, make_yolo])
def test_polygons_read_to_the_squares_they_outline(tmp_path, make):
    splits, names, _ = read_instance_annotations(make(tmp_path / "data"))
    annotations = by_stem(splits)
    assert names == NAMES
    for stem, rows in OBJECTS.items():
        annotation = annotations[stem]
        assert (annotation.width, annotation.height) == (WIDTH, HEIGHT)
        assert annotation.classes.tolist() == [NAMES.index(name) for name, _ in rows]
        masks = annotation.masks()
        assert masks.shape == (len(rows), HEIGHT, WIDTH) and masks.dtype == bool
        for mask, (_, corners) in zip(masks, rows):
            assert np.array_equal(mask, square_mask(corners))
        assert annotation.boxes.tolist() == [[x0, y0, x1 + 1, y1 + 1] for _, (x0, y0, x1, y1) in rows]


def test_coco_rle_compressed_and_uncompressed_round_trip(tmp_path):
    ring = square_mask((5, 5, 25, 20)) & ~square_mask((10, 9, 15, 14))

    def compressed(corners):
        rle = pycocotools.mask.encode(np.asfortranarray(ring.astype(np.uint8)))
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}

    def uncompressed(corners):
        flat = square_mask(corners).ravel(order="F").astype(np.int8)
        changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
        return {"size": [HEIGHT, WIDTH], "counts": np.diff(np.concatenate([[0], changes])).tolist()}

    make_coco(tmp_path / "one", {"a": [("cat", None)]}, segment=compressed)
    make_coco(tmp_path / "two", {"b": OBJECTS["b"]}, segment=uncompressed)
    assert np.array_equal(by_stem(read_instance_annotations(tmp_path / "one")[0])["a"].masks()[0], ring)
    dog = by_stem(read_instance_annotations(tmp_path / "two")[0])["b"]
    assert np.array_equal(dog.masks()[0], square_mask(OBJECTS["b"][0][1])) and dog.classes.tolist() == [1]


def test_an_rle_without_pixels_is_dropped_with_a_warning_naming_the_image(tmp_path, caplog):
    def empty_or_square(corners):
        mask = square_mask(corners) if corners[0] == 20 else np.zeros((HEIGHT, WIDTH), bool)
        rle = pycocotools.mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}

    root = make_coco(tmp_path / "data", {"a": [OBJECTS["a"][0], OBJECTS["b"][0]]}, segment=empty_or_square)
    with caplog.at_level(logging.WARNING, logger="imgpipe"):
        annotation = read_instance_annotations(root)[0][None][0]
    assert annotation.classes.tolist() == [1] and annotation.boxes.tolist() == [[20, 5, 36, 26]]
    assert [r.getMessage() for r in caplog.records] == [
        f"{root / 'images' / 'a.png'}: 1 instance(s) without pixels in the 40x30 image dropped"]


def test_coco_crowd_annotations_are_skipped(tmp_path):
    root = make_coco(tmp_path / "data")
    document = json.loads((root / "annotations.json").read_text())
    document["annotations"][0]["iscrowd"] = 1
    (root / "annotations.json").write_text(json.dumps(document))
    assert by_stem(read_instance_annotations(root)[0])["a"].classes.tolist() == [0]


def test_id_masks_take_classes_from_sidecars_and_later_objects_cover_earlier_ones(tmp_path):
    splits, names, format = read_instance_annotations(make_id_masks(tmp_path / "data"))
    assert format == "masks" and names == NAMES
    cat_under_dog = by_stem(splits)["a"]
    assert cat_under_dog.classes.tolist() == [0, 1]
    cat, dog = (square_mask(corners) for _, corners in reversed(OBJECTS["a"]))
    masks = cat_under_dog.masks()
    assert np.array_equal(masks[0], cat & ~dog) and np.array_equal(masks[1], dog)
    assert cat_under_dog.boxes.tolist() == [[4, 4, 31, 25], [10, 8, 15, 13]]
    assert len(by_stem(splits)["c"].classes) == 0


def test_id_masks_without_sidecars_are_all_one_object_class(tmp_path):
    splits, names, _ = read_instance_annotations(make_id_masks(tmp_path / "data", sidecars=False))
    assert names == ["object"] and by_stem(splits)["a"].classes.tolist() == [0, 0]


@pytest.mark.parametrize("make", [make_coco, make_yolo, make_id_masks])
def test_render_at_half_size_keeps_the_small_object_on_top(tmp_path, make):
    annotation = by_stem(read_instance_annotations(make(tmp_path / "data"))[0])["a"]
    rendered = annotation.render((15, 20))
    assert rendered.shape == (15, 20, 2) and rendered.dtype == np.int32
    number_of = {NAMES[c]: k + 1 for k, c in enumerate(annotation.classes)}
    # The dog (10..14, 8..12 at full size) lies on the cat (4..30, 4..24); at half size at column 6, row 5.
    assert rendered[5, 6].tolist() == [number_of["dog"], NAMES.index("dog")]
    assert rendered[10, 3].tolist() == [number_of["cat"], NAMES.index("cat")]
    assert rendered[0, 0].tolist() == [0, 0] and rendered[14, 19].tolist() == [0, 0]
    dog_pixels = rendered[..., 0] == number_of["dog"]
    assert 4 <= dog_pixels.sum() <= 9
    # Half the width only: x and y scale apart.
    narrow = annotation.render((HEIGHT, 20))
    assert narrow[10, 6, 0] == number_of["dog"] and narrow[20, 3, 0] == number_of["cat"]
    assert narrow[10, 17, 0] == 0


def test_render_at_the_image_size_is_the_masks(tmp_path):
    annotation = by_stem(read_instance_annotations(make_yolo(tmp_path / "data"))[0])["b"]
    rendered = annotation.render((HEIGHT, WIDTH))
    assert np.array_equal(rendered[..., 0] == 1, annotation.masks()[0])
    assert np.array_equal(rendered[..., 1], np.where(annotation.masks()[0], 1, 0))


def test_16_bit_id_png_with_300_instances(tmp_path):
    root = tmp_path / "data"
    write_images(root / "images", ["many"])
    (root / "instances").mkdir()
    # 300 blocks of 2x2 pixels, numbered row by row: 20 across, 15 down.
    ids = (np.arange(300).reshape(15, 20) + 1).repeat(2, axis=0).repeat(2, axis=1).astype(np.uint16)
    Image.fromarray(ids).save(root / "instances" / "many.png")
    assert Image.open(root / "instances" / "many.png").mode.startswith("I")
    annotation = read_instance_annotations(root)[0][None][0]
    assert len(annotation.classes) == 300 and annotation.areas.tolist() == [4] * 300
    assert annotation.boxes[299].tolist() == [38, 28, 40, 30]
    assert np.array_equal(annotation.render((HEIGHT, WIDTH))[..., 0], ids)
    assert np.array_equal(annotation.render((15, 20))[..., 0], ids[::2, ::2])


def test_invalid_coco_json_names_the_file(tmp_path):
    root = make_coco(tmp_path / "data")
    (root / "annotations.json").write_text('{"images": [')
    with pytest.raises(DataError, match=r"annotations\.json: not valid JSON"):
        read_instances(root, format="coco")


def test_bad_yolo_lines_name_the_file_and_line(tmp_path):
    root = make_yolo(tmp_path / "data")
    label = root / "labels" / "b.txt"
    label.write_text(yolo_line(*OBJECTS["b"][0]) + "\n1 0.1 0.1 0.5 zero 0.5 0.5\n")
    with pytest.raises(DataError, match=r"b\.txt:2: expected 'class x1 y1"):
        read_instances(root)
    label.write_text("1 0.1 0.1 0.5 0.1 0.5\n")
    with pytest.raises(DataError, match=r"b\.txt:1: expected pairs of x y coordinates"):
        read_instances(root)
    label.write_text(yolo_line(*OBJECTS["b"][0]).replace("1 ", "2 ", 1) + "\n")
    with pytest.raises(DataError, match=r"b\.txt:1: class 2 is not in 0\.\.1"):
        read_instances(root)


def test_yolo_polygon_outside_the_image_names_the_file(tmp_path):
    root = make_yolo(tmp_path / "data")
    (root / "labels" / "b.txt").write_text("1 0.1 0.1 1.01 0.1 0.5 0.5\n")
    with pytest.raises(DataError, match=r"b\.txt:1: polygon corner \(1\.01, 0\.1\) is outside"):
        read_instances(root)
    (root / "labels" / "b.txt").write_text("1 0.1 -0.0005 1.0005 0.1 0.5 0.5\n")  # within 0.001: rounding
    read_instance_annotations(root)


def test_coco_polygon_outside_the_image_names_the_file(tmp_path):
    root = make_coco(tmp_path / "data", {"b": [("dog", (20, 5, 42, 25))]})
    with pytest.raises(DataError, match=r"annotations\.json: annotation 0 has a polygon corner \(42, 5\) outside "
                                        r"the 40x30 image b\.png"):
        read_instances(root)


def test_id_mask_of_the_wrong_size_names_both_sizes_and_the_file(tmp_path):
    root = make_id_masks(tmp_path / "data")
    Image.new("L", (20, 15)).save(root / "instances" / "b.png")
    with pytest.raises(DataError, match=r"instances/b\.png: ID mask is 20x15 but its image .*b\.png is 40x30"):
        read_instances(root)


def test_sidecar_missing_an_id_names_the_file_and_the_id(tmp_path):
    root = make_id_masks(tmp_path / "data")
    (root / "instances" / "a.json").write_text(json.dumps({"1": "cat"}))
    with pytest.raises(DataError, match=r"instances/a\.json: instance id 2 of .*a\.png has no class"):
        read_instances(root)


def test_sidecar_id_without_pixels_is_dropped_with_a_warning(tmp_path, caplog):
    root = make_id_masks(tmp_path / "data")
    (root / "instances" / "b.json").write_text(json.dumps({"1": "dog", "7": "cat"}))
    with caplog.at_level(logging.WARNING, logger="imgpipe"):
        annotation = by_stem(read_instance_annotations(root)[0])["b"]
    assert annotation.classes.tolist() == [1]
    assert [r.getMessage() for r in caplog.records if "b.png" in r.getMessage()] == [
        f"{root / 'instances' / 'b.png'}: 1 instance id(s) named in {root / 'instances' / 'b.json'} have no "
        "pixels; dropped"]


def test_degenerate_polygons_are_dropped_with_one_warning_per_file(tmp_path, caplog):
    root = make_yolo(tmp_path / "data")
    label = root / "labels" / "b.txt"
    label.write_text(yolo_line(*OBJECTS["b"][0]) + "\n0 0.1 0.1 0.2 0.2\n0 0.1 0.1 0.2 0.2 0.3 0.3\n")
    with caplog.at_level(logging.WARNING, logger="imgpipe"):
        annotation = by_stem(read_instance_annotations(root)[0])["b"]
    assert annotation.classes.tolist() == [1]
    assert [r.getMessage() for r in caplog.records] == [
        f"{label}: 2 polygon(s) with fewer than 3 corners or no area dropped"]


def test_degenerate_coco_polygons_are_dropped_with_one_warning_for_the_file(tmp_path, caplog):
    root = make_coco(tmp_path / "data")
    document = json.loads((root / "annotations.json").read_text())
    document["annotations"][0]["segmentation"] = [[10, 8, 14, 8]]
    document["annotations"][2]["segmentation"] = [[20, 5, 30, 5, 35, 5]]
    (root / "annotations.json").write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING, logger="imgpipe"):
        annotations = by_stem(read_instance_annotations(root)[0])
    assert annotations["a"].classes.tolist() == [0] and len(annotations["b"].classes) == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"{root / 'annotations.json'}: 2 instance(s) without a usable polygon (fewer than 3 corners or no area) "
        "dropped, e.g. annotation 0"]


def test_the_layout_guess_claims_id_masks_and_yolo_polygons_only(tmp_path):
    assert has_instance_layout(make_id_masks(tmp_path / "ids"))
    assert has_instance_layout(make_yolo(tmp_path / "yolo_seg"))
    assert not has_instance_layout(make_coco(tmp_path / "coco"))
    semantic = tmp_path / "semantic"
    write_images(semantic / "images", ["a"])
    (semantic / "masks").mkdir()
    Image.new("L", (WIDTH, HEIGHT)).save(semantic / "masks" / "a.png")
    assert not has_instance_layout(semantic)
    detection = make_yolo(tmp_path / "yolo_boxes", {"a": []})
    (detection / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    assert not has_instance_layout(detection)
    assert not has_instance_layout(tmp_path / "missing")
    assert [detect_instance_format(tmp_path / name) for name in ("ids", "yolo_seg", "coco")] == ["masks", "yolo",
                                                                                                 "coco"]
    with pytest.raises(DataError, match="no instance segmentation layout found"):
        detect_instance_format(semantic)


def test_read_instances_splits_by_seed_with_index_targets(tmp_path):
    objects = {f"i{n}": [("cat" if n % 2 else "dog", (2 + n, 3, 12 + n, 13))] for n in range(10)}
    data = read_instances(make_id_masks(tmp_path / "data", objects), val_split=0.2, split_groups="none")
    assert (data.train.count, data.val.count) == (8, 2)
    assert data.train.targets.dtype == np.int32
    assert sorted(data.train.targets.tolist() + data.val.targets.tolist()) == list(range(10))
    annotation = data.state.annotations[data.val.targets[0]]
    assert annotation.image == data.val.paths[0]
    assert data.image_size == [64, 64] and isinstance(data.state, InstanceLabels)
    assert InstanceLabels.from_json(data.state.to_json()).format == "masks"


def test_coco_instances_files_keep_their_train_and_val_split(tmp_path):
    root = tmp_path / "data"
    make_coco(root, {"a": OBJECTS["a"], "c": []}, file_name="instances_train.json")
    make_coco(root, {"b": OBJECTS["b"]}, file_name="instances_val.json")
    data = read_instances(root, image_size=[32, 32])
    assert data.state.format == "coco"
    assert [p.rsplit("/", 1)[-1] for p in data.val.paths] == ["b.png"] and data.train.count == 2


def test_no_instance_at_all_is_refused(tmp_path):
    root = make_id_masks(tmp_path / "data", {"a": [], "b": []}, sidecars=False)
    with pytest.raises(DataError, match="hold no usable instance"):
        read_instances(root)


def test_demo_has_touching_instances_of_one_class(tmp_path):
    root = make_instances_folder(tmp_path / "demo", images=6, size=32)  # image 2 has a shape drawn over entirely
    assert detect_instance_format(root) == "masks"
    for sidecar in sorted((root / "instances").glob("*.json")):
        ids = np.asarray(Image.open(sidecar.with_suffix(".png")))
        assert sorted(int(i) for i in json.loads(sidecar.read_text())) == list(range(1, ids.max() + 1))
        assert np.unique(ids).tolist() == list(range(ids.max() + 1))
    splits, names, _ = read_instance_annotations(root)
    assert names == ["circle", "square", "triangle"]
    for index, annotation in enumerate(splits[None]):
        assert 1 <= len(annotation.classes) <= 5
        if index % 2 == 0:  # every other image ends with a pair of one class, touching: one connected component
            masks, classes = annotation.masks(), annotation.classes
            assert classes[-1] == classes[-2] and scipy.ndimage.label(masks[-1] | masks[-2])[1] == 1


def test_id_masks_in_train_and_val_folders_keep_their_split(tmp_path):
    root = tmp_path / "data"
    make_id_masks(root / "train", {"a": OBJECTS["a"], "c": []})
    make_id_masks(root / "val", {"b": OBJECTS["b"]}, sidecars=False)
    assert has_instance_layout(root)
    data = read_instances(root, image_size=[32, 32])
    assert [p.rsplit("/", 1)[-1] for p in data.val.paths] == ["b.png"] and data.train.count == 2
    assert "object" in data.class_names  # the val image has no sidecar: its objects are of class "object"
