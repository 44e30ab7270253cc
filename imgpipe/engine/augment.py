"""Augmentation for the three classic difficulties of vision, run inside tf.data.

Three families, each with a strength `none | light | medium | strong`:
- viewpoint: flip, rotate, scale, shift, perspective;
- illumination: brightness, contrast, gamma, hue/saturation;
- occlusion: random erasing and cut-outs.

They are albumentations pipelines: one `Compose` call draws one random
transformation and applies it to the image and its mask (or boxes), so a flip
never moves the image without its target. Each element carries its own seed,
drawn from a seeded stream, so results are reproducible under `data.seed`
whatever the parallelism. Augmentation is never part of the exported model.

Example:
    >>> augmenter = Augmenter(viewpoint="medium", illumination="light", occlusion="none")
    >>> image, label = augmenter.apply(image, label, seed=7)
"""

import queue

import albumentations as A
import cv2
import numpy as np

from imgpipe.data.boxes import pad_boxes, unpad_boxes
from imgpipe.engine.recipe import STRENGTHS

# A box that keeps less than this fraction of its area after a transform is dropped.
MIN_BOX_VISIBILITY = 0.3


class LabelTarget:
    """A target the image's geometry does not touch (a class label): it passes through.

    `border_mode`, when set, is how every geometric transform fills what it brings in from outside the
    image. The viewpoint family mirrors the border, which shows the model no black wedges but copies
    objects too: a kind whose target numbers each object (an instance map) sets `cv2.BORDER_CONSTANT`,
    so no copy shares an object's number.
    """

    border_mode = None

    def compose_options(self):
        """Extra keyword arguments of `A.Compose` this kind of target needs."""
        return {}

    def apply(self, compose, image, target):
        return np.ascontiguousarray(compose(image=image)["image"]), target


class MaskTarget(LabelTarget):
    """A per-pixel mask [H, W]: geometric transforms move it with the image (nearest neighbour)."""

    def apply(self, compose, image, target):
        out = compose(image=image, mask=target)
        return np.ascontiguousarray(out["image"]), np.ascontiguousarray(out["mask"], dtype=target.dtype)


class BoxesTarget(LabelTarget):
    """Padded boxes [M, 5] (x_min, y_min, x_max, y_max, class; class -1 pads): moved, clipped, dropped
    below `MIN_BOX_VISIBILITY` of their area."""

    def compose_options(self):
        return {"bbox_params": A.BboxParams(format="pascal_voc", label_fields=["classes"],
                                            min_visibility=MIN_BOX_VISIBILITY, clip=True)}

    def apply(self, compose, image, target):
        boxes, classes = unpad_boxes(target)
        out = compose(image=image, bboxes=boxes, classes=classes)
        moved = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        return np.ascontiguousarray(out["image"]), pad_boxes(moved, np.asarray(out["classes"]), len(target))


# How each kind of target rides along the image, by `Task.target_kind`. A task with a new kind of
# target registers it here (`register_target_kind`), so augmentation and the robustness card move it.
TARGET_KINDS = {"label": LabelTarget(), "mask": MaskTarget(), "boxes": BoxesTarget()}


def register_target_kind(name, kind):
    """Makes `name` a `Task.target_kind`: `kind` has `compose_options()` and `apply(compose, image, target)`.

    Example:
        >>> register_target_kind("keypoints", KeypointsTarget())
    """
    if name in TARGET_KINDS:
        raise ValueError(f"target kind {name!r} is registered twice")
    TARGET_KINDS[name] = kind


def viewpoint_transforms(strength):
    """Flip, affine (rotate, scale, shift, shear) and perspective, by strength."""
    border = {"border_mode": cv2.BORDER_REFLECT_101}
    settings = {
        "light": dict(scale=(0.9, 1.1), shift=0.05, rotate=10, shear=0, p=0.5, perspective=0.0),
        "medium": dict(scale=(0.8, 1.2), shift=0.1, rotate=15, shear=5, p=0.7, perspective=0.05),
        "strong": dict(scale=(0.7, 1.3), shift=0.15, rotate=30, shear=10, p=0.9, perspective=0.1),
    }
    if strength == "none":
        return []
    s = settings[strength]
    transforms = [
        A.HorizontalFlip(p=0.5),
        A.Affine(
            scale=s["scale"],
            translate_percent=(-s["shift"], s["shift"]),
            rotate=(-s["rotate"], s["rotate"]),
            shear=(-s["shear"], s["shear"]),
            p=s["p"],
            **border,
        ),
    ]
    if s["perspective"]:
        transforms.append(A.Perspective(scale=(s["perspective"] / 2, s["perspective"]), p=0.3, **border))
    return transforms


def illumination_transforms(strength):
    """Brightness/contrast, gamma and colour shifts; never touches masks or boxes."""
    settings = {
        "light": dict(level=0.1, gamma=(90, 110), hue=5, sat=10, p=0.5),
        "medium": dict(level=0.2, gamma=(80, 125), hue=10, sat=20, p=0.7),
        "strong": dict(level=0.35, gamma=(65, 150), hue=20, sat=35, p=0.9),
    }
    if strength == "none":
        return []
    s = settings[strength]
    return [
        A.RandomBrightnessContrast(brightness_limit=s["level"], contrast_limit=s["level"], p=s["p"]),
        A.RandomGamma(gamma_limit=s["gamma"], p=s["p"] / 2),
        A.HueSaturationValue(
            hue_shift_limit=s["hue"], sat_shift_limit=s["sat"], val_shift_limit=s["sat"] // 2, p=s["p"] / 2
        ),
    ]


def occlusion_transforms(strength):
    """Cut-outs and random erasing; occluded pixels keep their mask labels."""
    settings = {
        "light": dict(holes=(1, 2), side=(0.05, 0.15), p=0.3, erase=0.0),
        "medium": dict(holes=(1, 4), side=(0.05, 0.2), p=0.5, erase=0.25),
        "strong": dict(holes=(2, 8), side=(0.05, 0.25), p=0.7, erase=0.5),
    }
    if strength == "none":
        return []
    s = settings[strength]
    transforms = [A.CoarseDropout(num_holes_range=s["holes"], hole_height_range=s["side"],
                                  hole_width_range=s["side"], fill="random_uniform", p=s["p"])]
    if s["erase"]:
        transforms.append(A.Erasing(scale=(0.02, 0.2), fill="random_uniform", p=s["erase"]))
    return transforms


FAMILIES = {
    "viewpoint": viewpoint_transforms,
    "illumination": illumination_transforms,
    "occlusion": occlusion_transforms,
}


class Augmenter:
    """The three families at their strengths, as one albumentations pipeline.

    Args:
        viewpoint, illumination, occlusion: str, one of none, light, medium, strong.
        target_kind: a name in `TARGET_KINDS`: 'label' (the target passes through), 'mask' (moved
            with the image) or 'boxes' (`BoxesTarget`), or one a task registered.
    """

    def __init__(self, viewpoint="medium", illumination="medium", occlusion="light", target_kind="label"):
        strengths = {"viewpoint": viewpoint, "illumination": illumination, "occlusion": occlusion}
        for family, strength in strengths.items():
            if strength not in STRENGTHS:
                raise ValueError(f"augment.{family}: expected one of {', '.join(STRENGTHS)}, got {strength!r}")
        if target_kind not in TARGET_KINDS:
            raise ValueError(f"target_kind: expected one of {tuple(TARGET_KINDS)}, got {target_kind!r}")
        self.strengths = strengths
        self.target_kind = target_kind
        self.target = TARGET_KINDS[target_kind]
        # Compose objects hold random state, so each call borrows one nobody else is using.
        # A pool, not a thread-local: tf.data runs `numpy_function` on short-lived threads,
        # and a thread-local Compose was rebuilt on almost every call (3x the augmentation).
        self._idle = queue.SimpleQueue()

    @classmethod
    def from_recipe(cls, recipe, target_kind="label"):
        settings = recipe.augment
        return cls(settings.viewpoint, settings.illumination, settings.occlusion, target_kind)

    @property
    def is_identity(self):
        return all(strength == "none" for strength in self.strengths.values())

    def build(self):
        """A fresh albumentations `Compose` of the chosen families."""
        transforms = [t for family, make in FAMILIES.items() for t in make(self.strengths[family])]
        for transform in transforms:
            if self.target.border_mode is not None and hasattr(transform, "border_mode"):
                transform.border_mode = self.target.border_mode
        return A.Compose(transforms, **self.target.compose_options())

    def apply(self, image, target, seed):
        """Augments one uint8 HxWx3 image (and its mask) with the transformation drawn from `seed`."""
        compose = self._borrow()
        try:
            return self._apply(compose, image, target, seed)
        finally:
            self._idle.put(compose)

    def _borrow(self):
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self.build()

    def _apply(self, compose, image, target, seed):
        compose.set_random_seed(int(seed) % (2**32))
        return self.target.apply(compose, image, target)

    def apply_batch(self, images, targets, seeds):
        """`apply` to each image of a batch (uint8 [B, H, W, 3], targets [B, ...], seeds [B]); same results."""
        compose = self._borrow()
        try:
            pairs = [self._apply(compose, image, target, seed) for image, target, seed in zip(images, targets, seeds)]
        finally:
            self._idle.put(compose)
        return np.stack([image for image, _ in pairs]), np.stack([target for _, target in pairs]).astype(targets.dtype)

    def tf_map_batch(self, images, targets, seeds):
        """The `apply_batch` step as a tf.data map function on batches; one Python call per batch."""
        return _as_tf_map(self.apply_batch, images, targets, seeds)

    def tf_map(self, image, target, seed):
        """The `apply` step as a tf.data map function (image uint8 [H,W,3], target, int64 seed)."""
        return _as_tf_map(self.apply, image, target, seed)


def _as_tf_map(function, images, targets, seeds):
    """`function(images, targets, seeds)` on numpy arrays, as a tf.data map step that keeps the static shapes."""
    import tensorflow as tf

    out_images, out_targets = tf.numpy_function(function, [images, targets, seeds], [tf.uint8, targets.dtype],
                                                stateful=False)
    out_images.set_shape(images.shape)
    out_targets.set_shape(targets.shape)
    return out_images, out_targets
