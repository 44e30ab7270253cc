"""The colorization recipe section (`colorize:`): the keys only this task has."""

import dataclasses

from imgpipe.engine.recipe import setting


@dataclasses.dataclass
class ColorizeSettings:
    color_loss: str = setting(
        "classification", "classification over ab bins with rebalancing (vivid), or l1 (dull)",
        choices=("classification", "l1"))
    color_uniform_mix: float = setting(
        0.9, "rebalancing mixes the colour distribution with this much uniform; 1 means no rebalancing, "
        "lower favours rare (vivid) colours more", min=0.0, max=1.0, exclusive_min=True)


MOVED_KEYS = {"train.color_loss": "color_loss", "train.color_uniform_mix": "color_uniform_mix"}
