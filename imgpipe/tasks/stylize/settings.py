"""The style-transfer recipe section (`stylize:`): the keys only this task has."""

import dataclasses
import typing

from imgpipe.engine.recipe import setting
from imgpipe.errors import RecipeError


# Chosen on raccoon photos and a swirl pattern (benchmarks/README.md, "photo plus change"): with ImageNet
# VGG16, 16 is the weight whose style loss falls to about 0.3x the photos' while their structure stays
# (SSIM 0.36-0.37); random features at 16 paint over the photo entirely. Measured with VGG16 only.
AUTO_STYLE_WEIGHT = {"imagenet": 16.0, "random": 2.0}


def _auto_or_weight(key, value):
    """`auto`, or a number >= 0 (YAML 1.1 reads 1e1, without a dot, as a string)."""
    if value == "auto":
        return value
    try:
        if not isinstance(value, bool) and float(value) >= 0:
            return float(value)
    except (TypeError, ValueError):
        pass
    raise RecipeError(f"{key}: expected 'auto' or a number >= 0, got {value!r}")


def style_weight(settings, loss_weights):
    """The style weight a run uses: the recipe's number, or for `auto` the one measured for its loss network.

    Example:
        >>> style_weight(StylizeSettings(), "random")
        2.0
    """
    if settings.style_weight != "auto":
        return float(settings.style_weight)
    return AUTO_STYLE_WEIGHT["random" if loss_weights == "random" else "imagenet"]


@dataclasses.dataclass
class StylizeSettings:
    style: typing.Optional[str] = setting(None, "the style image (a painting); empty runs the demo")
    loss_network: str = setting("vgg16", "VGG whose features define the perceptual loss", choices=("vgg16", "vgg19"))
    loss_weights: str = setting(
        "imagenet", "loss network weights: imagenet, random (fixed, lower quality) or a file")
    content_weight: float = setting(1.0, "weight of the content (VGG feature) loss", min=0.0)
    style_weight: typing.Any = setting(
        "auto", f"weight of the style (Gram matrix) loss; auto: {AUTO_STYLE_WEIGHT['imagenet']:g} with the ImageNet "
        f"loss network, {AUTO_STYLE_WEIGHT['random']:g} with random features (whose style term dominates sooner)",
        check=_auto_or_weight)
    tv_weight: float = setting(0.1, "weight of the total-variation (smoothness) loss", min=0.0)
    max_side: int = setting(1024, "larger images are styled at this longest side, then resized back", min=32)


MOVED_KEYS = {"data.style": "style", "model.loss_network": "loss_network", "model.loss_weights": "loss_weights",
              "train.content_weight": "content_weight", "train.style_weight": "style_weight",
              "train.tv_weight": "tv_weight", "export.max_side": "max_side"}
