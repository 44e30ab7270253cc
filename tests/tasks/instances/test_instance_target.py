"""Augmentation moves every instance with its image, and drops the ones that leave the frame."""

import albumentations as A
import numpy as np
from scipy import ndimage

from imgpipe.engine import augment
from imgpipe.engine.augment import Augmenter
from imgpipe.tasks.instances import task  # noqa: F401  (registers the "instances" target kind)


def only(transform):
    return {"viewpoint": lambda strength: [transform], "illumination": lambda strength: [],
            "occlusion": lambda strength: []}


def scene():
    """A 20x40 image whose instances are painted in it: 1 (class 0) at x 2-8, 2 (class 1) at x 25-35."""
    target = np.zeros((20, 40, 2), np.int32)
    target[5:15, 2:8] = (1, 0)
    target[5:15, 25:35] = (2, 1)
    image = np.zeros((20, 40, 3), np.uint8)
    image[target[..., 0] > 0] = 200
    return image, target


def test_a_shift_moves_each_instance_with_its_pixels_and_drops_the_one_that_left(monkeypatch):
    monkeypatch.setattr(augment, "FAMILIES", only(A.Affine(translate_px={"x": 13, "y": 0}, p=1.0)))
    image, target = scene()
    moved_image, moved = Augmenter(target_kind="instances").apply(image, target, seed=0)
    # instance 1 lands at x 15-21; instance 2 (x 38-48) keeps 2 of its 10 columns, under 30 %, and goes
    expected = np.zeros_like(target)
    expected[5:15, 15:21] = (1, 0)
    np.testing.assert_array_equal(moved, expected)
    np.testing.assert_array_equal(moved_image[..., 0] > 0, np.pad(image[..., 0] > 0, ((0, 0), (13, 0)))[:, :40])


def test_a_partly_cut_instance_keeps_its_visible_part(monkeypatch):
    monkeypatch.setattr(augment, "FAMILIES", only(A.Affine(translate_px={"x": 8, "y": 0}, p=1.0)))
    image, target = scene()
    _, moved = Augmenter(target_kind="instances").apply(image, target, seed=0)
    assert np.array_equal(np.unique(moved[..., 0]), [0, 1, 2])
    assert (moved[..., 0] == 2).sum() == 10 * 7 and np.all(moved[..., 1][moved[..., 0] == 2] == 1)


def test_rotation_never_copies_an_instance_into_the_border():
    """The viewpoint family mirrors borders for images; an instance map would gain a second copy of an object."""
    image, target = scene()
    augmenter = Augmenter("strong", "none", "none", target_kind="instances")
    for seed in range(20):
        _, moved = augmenter.apply(image, target, seed)
        for number in (1, 2):
            _, pieces = ndimage.label(moved[..., 0] == number)
            assert pieces <= 1, f"seed {seed}: instance {number} in {pieces} places"
