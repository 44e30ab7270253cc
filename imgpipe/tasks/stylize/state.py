"""The style-transfer task's state: the style image and the loss network's weights it was trained with."""

import dataclasses

import numpy as np

from imgpipe.data.images import load_image


@dataclasses.dataclass
class StyleState:
    """The style image (uint8 [H, W, 3]), where it was read from, and the loss network's weights.

    Only the path and the weights' name go into the run folder; the image is
    read again from the path when the run is rebuilt.

    Example:
        >>> StyleState.from_json({"style_path": "starry.jpg", "loss_weights": "imagenet"}).style.shape
        (512, 640, 3)
    """

    style: np.ndarray
    style_path: str
    loss_weights: str

    def to_json(self):
        return {"style_path": self.style_path, "loss_weights": self.loss_weights}

    @classmethod
    def from_json(cls, saved):
        return cls(style=load_image(saved["style_path"]), style_path=saved["style_path"],
                   loss_weights=saved["loss_weights"])
