import numpy as np
import pytest
from PIL import Image

from imgpipe.data.masks import MaskEncoding, load_mask, read_colour_table, read_mask_folders
from imgpipe.errors import DataError


def make_pairs(root, count=6, size=(24, 32), mask_mode="L", values=(0, 1, 2), palette=None, image_ext=".jpg",
               mask_ext=".png"):
    """images/N.jpg + masks/N.png; the mask puts values[k] in vertical band k."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    height, width = size
    for index in range(count):
        bands = np.zeros(size, np.int64)
        for band in range(len(values)):
            bands[:, band * width // len(values):] = band
        image = np.stack([bands * 80, np.full(size, index * 10), np.zeros(size)], -1).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{index}{image_ext}")
        if mask_mode == "RGB":
            mask = Image.fromarray(np.array(values, np.uint8)[bands], "RGB")
        else:
            mask = Image.fromarray(np.array(values, np.uint8)[bands], "L")
            if mask_mode == "P":
                mask = mask.convert("P")
                mask.putpalette(palette or [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
        mask.save(root / "masks" / f"{index}{mask_ext}")
    return root


def test_index_masks_keep_their_values(tmp_path):
    data = read_mask_folders(make_pairs(tmp_path, values=(0, 1, 2)))
    encoding = data.state
    assert (encoding.kind, encoding.num_classes, encoding.ignore_index) == ("index", 3, None)
    assert data.class_names == ["class_0", "class_1", "class_2"]
    mask = load_mask(data.train.targets[0], (24, 32), encoding)
    assert mask.dtype == np.int32 and set(np.unique(mask)) == {0, 1, 2}


def test_palette_masks_are_read_as_indices(tmp_path):
    data = read_mask_folders(make_pairs(tmp_path, mask_mode="P", values=(0, 1, 2)))
    assert data.state.kind == "index" and data.num_classes == 3


def test_binary_0_255_masks_become_two_classes(tmp_path):
    data = read_mask_folders(make_pairs(tmp_path, values=(0, 255)))
    encoding = data.state
    assert (encoding.kind, encoding.num_classes, encoding.ignore_index) == ("binary", 2, None)
    assert set(np.unique(load_mask(data.val.targets[0], (24, 32), encoding))) == {0, 1}


def test_255_is_ignored_where_it_is_not_a_class(tmp_path):
    data = read_mask_folders(make_pairs(tmp_path, values=(0, 1, 255)))
    encoding = data.state
    assert (encoding.kind, encoding.num_classes, encoding.ignore_index) == ("index", 2, 255)
    assert set(np.unique(load_mask(data.val.targets[0], (24, 32), encoding))) == {0, 1, 255}


def test_explicit_ignore_index(tmp_path):
    data = read_mask_folders(make_pairs(tmp_path, values=(0, 1, 2, 3)), ignore_index=3)
    encoding = data.state
    assert (encoding.num_classes, encoding.ignore_index) == (3, 3)


def test_rgb_masks_with_a_labelmap(tmp_path):
    colours = ((0, 0, 0), (128, 0, 0), (0, 128, 0))
    root = make_pairs(tmp_path, mask_mode="RGB", values=colours)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ncat:128,0,0::\n"
                                       "dog:0,128,0::\n")
    data = read_mask_folders(root)
    encoding = data.state
    assert data.class_names == ["background", "cat", "dog"]
    assert encoding.kind == "colour" and encoding.colours == [list(c) for c in colours]
    mask = load_mask(data.train.targets[0], (24, 32), encoding)
    assert mask[0, 0] == 0 and mask[0, -1] == 2


def test_rgb_colours_are_discovered_and_reported(tmp_path, caplog):
    root = make_pairs(tmp_path, mask_mode="RGB", values=((0, 0, 0), (0, 0, 200), (200, 0, 0)))
    data = read_mask_folders(root)
    assert data.state.colours == [[0, 0, 0], [0, 0, 200], [200, 0, 0]]
    assert data.class_names == ["class_0", "class_1", "class_2"]
    assert "mask colours found" in caplog.text


@pytest.mark.parametrize("text, names, colours", [
    ("sky\nroad\n", ["sky", "road"], None),
    ("sky 10 20 30\nroad,1,2,3\n", ["sky", "road"], [(10, 20, 30), (1, 2, 3)]),
    ("# comment\nsky: 1, 2, 3\n", ["sky"], [(1, 2, 3)]),
])
def test_colour_table_formats(tmp_path, text, names, colours):
    (tmp_path / "classes.txt").write_text(text)
    assert read_colour_table(tmp_path) == (names, colours)


def test_masks_are_resized_with_nearest_neighbour_only(tmp_path):
    data = read_mask_folders(make_pairs(tmp_path, size=(50, 70), values=(0, 3, 7)))
    mask = load_mask(data.train.targets[0], (16, 16), data.state)
    assert mask.shape == (16, 16) and set(np.unique(mask)) <= {0, 3, 7}


def test_image_without_mask_names_the_image(tmp_path):
    root = make_pairs(tmp_path)
    (root / "masks" / "2.png").unlink()
    with pytest.raises(DataError, match=r"images/2\.jpg: image has no mask"):
        read_mask_folders(root)


def test_mask_of_the_wrong_size_names_both_files(tmp_path):
    root = make_pairs(tmp_path)
    Image.new("L", (10, 10)).save(root / "masks" / "3.png")
    with pytest.raises(DataError, match=r"masks/3\.png: mask is 10x10 but its image .*images/3\.jpg is 32x24"):
        read_mask_folders(root)


def test_pairing_by_stem_across_extensions(tmp_path):
    data = read_mask_folders(make_pairs(tmp_path, image_ext=".png", mask_ext=".bmp"))
    assert data.train.count + data.val.count == 6
    assert all(str(m).endswith(".bmp") for m in data.train.targets)


def test_train_and_val_folders(tmp_path):
    make_pairs(tmp_path / "train", count=4)
    make_pairs(tmp_path / "val", count=2)
    data = read_mask_folders(tmp_path)
    assert (data.train.count, data.val.count) == (4, 2)


def test_voc_layout_with_its_split_files_and_names(tmp_path):
    root = make_pairs(tmp_path / "tmp", count=4, mask_mode="P", values=(0, 15, 255))
    voc = tmp_path / "VOC"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "images").rename(voc / "JPEGImages")
    (root / "masks").rename(voc / "SegmentationClass")
    Image.new("RGB", (32, 24)).save(voc / "JPEGImages" / "unlabelled.jpg")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("0\n1\n2\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("3\n")
    data = read_mask_folders(voc)
    assert (data.train.count, data.val.count) == (3, 1)
    assert data.class_names[15] == "person" and len(data.class_names) == 21
    assert data.state.ignore_index == 255


def test_unknown_layout_is_a_data_error(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="images/ \\+ masks/"):
        read_mask_folders(tmp_path)


def test_encoding_maps_unknown_colours_and_values_to_ignore():
    colour = MaskEncoding("colour", 2, 255, [[0, 0, 0], [255, 0, 0]])
    raw = np.array([[[0, 0, 0], [255, 0, 0], [1, 2, 3]]], np.uint8)
    assert colour.encode(raw).tolist() == [[0, 1, 255]]
    index = MaskEncoding("index", 3, None)
    assert index.encode(np.array([[0, 2, 9]])).tolist() == [[0, 2, 0]]


def test_voc_split_entries_are_names_not_paths(tmp_path):
    # A split file listing ../../outside/4 must not pull in an image and mask from outside the folder.
    root = make_pairs(tmp_path / "tmp", count=3, mask_mode="P", values=(0, 15, 255))
    outside = make_pairs(tmp_path / "outside", count=5, mask_mode="P", values=(0, 15, 255))
    voc = tmp_path / "VOC"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "images").rename(voc / "JPEGImages")
    (root / "masks").rename(voc / "SegmentationClass")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("0\n1\n../../outside/images/4\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text(f"2\n{outside / 'masks' / '3'}\n")
    data = read_mask_folders(voc)
    assert (data.train.count, data.val.count) == (2, 1)
    assert all(str(voc) in str(p) for p in list(data.train.paths) + list(data.val.paths))
