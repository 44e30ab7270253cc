"""`model.name: auto` and `model.weights: auto`: which network a run trains, and what it starts from.

A task names its pretrained model (an ImageNet backbone under its head) and
its from-scratch model. `auto` takes the pretrained one when ImageNet weights
are found for its backbone (`imgpipe.engine.weights`) and the images are at
least the task's `pretrained_min_side` pixels on their shorter side (96; 64
for classification, where it was measured); below that an ImageNet backbone
sees too little (MobileNetV2's last feature map is 1x1 at 32 px) and the
from-scratch model is the better default. A model the user names is always used.

Example:
    >>> choice = choose_model(task, recipe, image_size=[224, 224])
    >>> choice.name, choice.weights.source, choice.reason
    ('mobilenet_v2', 'folder', 'ImageNet weights found and images of 224 px')
"""

import dataclasses

from imgpipe.engine.weights import ResolvedWeights, resolve_weights
from imgpipe.models import MODELS


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """The model a run trains (`name`), the weights it starts from, and why."""

    name: str
    weights: ResolvedWeights
    reason: str

    def describe(self):
        return f"model: {self.name} ({self.reason}); {self.weights.describe()}"


def choose_model(task, recipe, image_size):
    """The `ModelChoice` for a recipe whose images are `image_size` [height, width] at the model's input."""
    settings = recipe.model
    if settings.name != "auto":
        backbone = MODELS.info(settings.name).get("backbone")
        return ModelChoice(settings.name, resolve_weights(backbone, settings.weights, settings.weights_dir),
                           "model.name given")
    scratch, pretrained, side = task.scratch_model, task.pretrained_model, min(image_size)
    if pretrained is None:
        return ModelChoice(scratch, resolve_weights(None, settings.weights, settings.weights_dir),
                           f"{task.name} has no pretrained model")
    if settings.weights in (None, "none"):
        return ModelChoice(scratch, ResolvedWeights(None, "none", tried=("model.weights: none",)),
                           "model.weights: none")
    if side < task.pretrained_min_side and settings.weights == "auto":
        return ModelChoice(scratch, ResolvedWeights(None, "none", tried=(f"images of {side} px",)),
                           f"images of {side} px, below the {task.pretrained_min_side} px a pretrained backbone "
                           "needs")
    weights = resolve_weights(MODELS.info(pretrained)["backbone"], settings.weights, settings.weights_dir)
    if weights.path is None:
        return ModelChoice(scratch, weights, "no ImageNet weights found")
    return ModelChoice(pretrained, weights, f"ImageNet weights found and images of {side} px")
