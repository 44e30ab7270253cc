"""How an instance-ID map rides along its image in augmentation and the robustness card.

The target is int32 [H, W, 2]: each pixel's instance number (0 = none) and
that instance's class. It is warped as one nearest-neighbour mask, which moves
each instance's pixels exactly as albumentations' `masks=` would move one
binary mask per instance, for one warp instead of one per instance (a
membrane slice has 140). Instances that leave the frame vanish with their
pixels; one cut to under `MIN_VISIBILITY` of its area is dropped, as boxes are.
"""

import cv2
import numpy as np

from imgpipe.engine.augment import MIN_BOX_VISIBILITY, LabelTarget

MIN_VISIBILITY = MIN_BOX_VISIBILITY


class InstanceMapTarget(LabelTarget):
    """An instance-ID map [H, W, 2] (instance number, class), moved with the image, cut instances dropped.

    Example:
        >>> image, target = Augmenter(target_kind="instances").apply(image, id_map, seed=7)
    """

    # A mirrored border would copy an object under its own number: one instance in two places.
    border_mode = cv2.BORDER_CONSTANT

    def apply(self, compose, image, target):
        out = compose(image=image, mask=target)
        moved = np.ascontiguousarray(out["mask"], dtype=target.dtype)
        numbers = target[..., 0]
        before = np.bincount(numbers[numbers > 0].ravel())
        after_numbers = moved[..., 0]
        after = np.bincount(after_numbers[after_numbers > 0].ravel(), minlength=len(before))
        cut = np.flatnonzero((after[:len(before)] > 0) & (after[:len(before)] < MIN_VISIBILITY * before))
        if len(cut):
            moved[np.isin(after_numbers, cut)] = 0
        return np.ascontiguousarray(out["image"]), moved
