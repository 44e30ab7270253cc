"""The instance segmentation recipe section (`instances:`): the keys only this task has."""

import dataclasses

from imgpipe.engine.recipe import setting


@dataclasses.dataclass
class InstancesSettings:
    map_every: int = setting(5, "also compute validation mask and box mAP every N epochs; 0 only at the end", min=0)
    score_threshold: float = setting(
        0.1, "served instances score at least this (CenterNet peaks stay near 0.2-0.4 after short training)",
        min=0.0, max=1.0)
    max_detections: int = setting(
        200, "most instances served per image, and pycocotools' maxDets (a 512 px membrane slice has ~140 cells)",
        min=1)
    mask_weight: float = setting(1.0, "weight of the mask cross-entropy beside CenterNet's loss", min=0.0)
