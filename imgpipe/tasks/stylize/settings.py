"""The style-transfer recipe section (`stylize:`): the keys only this task has."""

import dataclasses
import typing

from imgpipe.engine.recipe import setting


@dataclasses.dataclass
class StylizeSettings:
    style: typing.Optional[str] = setting(None, "the style image (a painting); empty runs the demo")
    loss_network: str = setting("vgg16", "VGG whose features define the perceptual loss", choices=("vgg16", "vgg19"))
    loss_weights: str = setting(
        "imagenet", "loss network weights: imagenet, random (fixed, lower quality) or a file")
    content_weight: float = setting(1.0, "weight of the content (VGG feature) loss", min=0.0)
    style_weight: float = setting(2.0, "weight of the style (Gram matrix) loss", min=0.0)
    tv_weight: float = setting(0.1, "weight of the total-variation (smoothness) loss", min=0.0)
    max_side: int = setting(1024, "larger images are styled at this longest side, then resized back", min=32)


MOVED_KEYS = {"data.style": "style", "model.loss_network": "loss_network", "model.loss_weights": "loss_weights",
              "train.content_weight": "content_weight", "train.style_weight": "style_weight",
              "train.tv_weight": "tv_weight", "export.max_side": "max_side"}
