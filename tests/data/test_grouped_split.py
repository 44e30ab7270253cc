import io

import numpy as np
from PIL import Image

from imgpipe.data.folders import read_class_folders
from imgpipe.data.grouped_split import keep_groups_together


def _noise_photo(seed, size=96):
    """A picture unlike any other seed's: random 8x8 blocks, so its perceptual hash is its own and survives JPEG
    (smooth blobs do not: their hash bits sit near the median and flip when re-encoded)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.NEAREST)


def _folder_with_copies(root, per_class=12, copied=4):
    """Two classes of distinct pictures; `copied` pictures per class also saved as a JPEG copy."""
    copies = []
    for label, name in enumerate(("cat", "dog")):
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            photo = _noise_photo(1000 * label + index)
            photo.save(folder / f"{index:02d}.png")
            if index < copied:
                buffer = io.BytesIO()
                photo.save(buffer, "JPEG", quality=90)
                (folder / f"{index:02d}_copy.jpg").write_bytes(buffer.getvalue())
                copies.append((str(folder / f"{index:02d}.png"), str(folder / f"{index:02d}_copy.jpg")))
    return copies


def _straddling(copies, data):
    val = set(data.val.paths)
    return [pair for pair in copies if (pair[0] in val) != (pair[1] in val)]


def test_each_planted_copy_stays_on_one_side_and_the_split_stays_stratified(tmp_path):
    copies = _folder_with_copies(tmp_path / "images")
    straddled_somewhere = False
    for seed in range(4):
        plain = read_class_folders(tmp_path / "images", 0.25, seed, split_groups="none")
        grouped = read_class_folders(tmp_path / "images", 0.25, seed)
        straddled_somewhere |= bool(_straddling(copies, plain))
        assert _straddling(copies, grouped) == []
        assert grouped.split_report.images_moved == len(_straddling(copies, plain))
        assert grouped.split_report.groups_moved == len(_straddling(copies, plain))
        assert sorted(grouped.train.paths + grouped.val.paths) == sorted(plain.train.paths + plain.val.paths)
        # moving whole pairs changes each class's validation count by at most the pairs it moved
        moved = np.bincount([0 if "/cat/" in pair[0] else 1 for pair in _straddling(copies, plain)], minlength=2)
        difference = np.abs(np.bincount(grouped.val.targets, minlength=2) - np.bincount(plain.val.targets, minlength=2))
        assert (difference <= moved).all()
    assert straddled_somewhere, "the plain split never separated a copy, so this test would prove nothing"


def test_a_user_split_is_never_changed(tmp_path):
    copies = _folder_with_copies(tmp_path / "images" / "train", per_class=6, copied=0)
    for name in ("cat", "dog"):
        (tmp_path / "images" / "val" / name).mkdir(parents=True)
        source = tmp_path / "images" / "train" / name / "00.png"
        (tmp_path / "images" / "val" / name / "00.png").write_bytes(source.read_bytes())
    data = read_class_folders(tmp_path / "images")
    assert copies == [] and data.split_report is None
    assert sorted(p.rsplit("/", 2)[-2:][1] for p in data.val.paths) == ["00.png", "00.png"]


def test_a_group_that_would_empty_a_side_of_its_class_stays_split():
    # class 0 is items 0-3 with only item 3 in validation: keeping [0, 1, 2, 3] together would take it out
    train, val, report = keep_groups_together([0, 1, 2, 4, 5], [3, 6], [0, 0, 0, 0, 1, 1, 1], [[0, 1, 2, 3]])
    assert val.tolist() == [3, 6] and report.groups_left_split == 1 and report.images_moved == 0


def test_a_tie_goes_where_validation_keeps_its_planned_size():
    # [7, 8] goes to training (validation is at its planned 2), then [6, 9] to validation (it is at 1)
    train, val, report = keep_groups_together([0, 1, 2, 3, 4, 5, 6, 7], [8, 9], [0] * 10, [[7, 8], [6, 9]])
    assert val.tolist() == [6, 9] and train.tolist() == [0, 1, 2, 3, 4, 5, 7, 8]
    assert (report.groups_moved, report.images_moved) == (2, 2)
