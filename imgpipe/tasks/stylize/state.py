"""The style-transfer task's state: the style image, the loss network's weights and the style weight it was
trained with, and what its network outputs."""

import dataclasses

import numpy as np

from imgpipe.data.images import load_image

# What the transformation network outputs (`imgpipe.models.transformer_net`). Run folders written before
# it became the photo plus a change record nothing here; their weights draw the whole picture.
NETWORK_OUTPUT = "photo plus change"
DRAWN_PICTURE = "the whole picture"


@dataclasses.dataclass
class StyleState:
    """The style image (uint8 [H, W, 3]), where it was read from, the loss network's weights, the style
    weight (`stylize.style_weight` resolved when the data was read) and what the network outputs.

    Only the path, not the image, goes into the run folder; the image is
    read again from the path when the run is rebuilt.

    Example:
        >>> StyleState.from_json({"style_path": "starry.jpg", "loss_weights": "imagenet"}).style.shape
        (512, 640, 3)
    """

    style: np.ndarray
    style_path: str
    loss_weights: str
    style_weight: float = None
    network_output: str = NETWORK_OUTPUT

    def to_json(self):
        return {"style_path": self.style_path, "loss_weights": self.loss_weights, "style_weight": self.style_weight,
                "network_output": self.network_output}

    @classmethod
    def from_json(cls, saved):
        return cls(style=load_image(saved["style_path"]), style_path=saved["style_path"],
                   loss_weights=saved["loss_weights"], style_weight=saved.get("style_weight"),
                   network_output=saved.get("network_output", DRAWN_PICTURE))
