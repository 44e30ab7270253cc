"""The segmentation recipe section (`segment:`): the keys only this task has."""

import dataclasses
import typing

from imgpipe.engine.recipe import setting


@dataclasses.dataclass
class SegmentSettings:
    ignore_index: typing.Optional[int] = setting(
        None, "mask value left out of loss and metrics; empty means 255 where 255 is not a class", min=0)
    dice_weight: float = setting(0.0, "weight of the soft Dice term added to cross-entropy", min=0.0)


MOVED_KEYS = {"data.ignore_index": "ignore_index", "train.dice_weight": "dice_weight"}
