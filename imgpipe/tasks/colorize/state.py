"""The colorization task's state: the class-rebalancing weight of every ab bin, from the training images."""

import dataclasses


@dataclasses.dataclass
class ColorizeState:
    """Per-bin loss weights (Zhang et al.'s rebalancing), counted once on the training images.

    Example:
        >>> ColorizeState.from_json({"bin_weights": [1.0] * 313}).bin_weights[:2]
        [1.0, 1.0]
    """

    bin_weights: list

    def to_json(self):
        return {"bin_weights": list(self.bin_weights)}

    @classmethod
    def from_json(cls, saved):
        return cls(bin_weights=list(saved["bin_weights"]))
