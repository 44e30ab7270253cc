"""The detection recipe section (`detect:`): the keys only this task has."""

import dataclasses

from imgpipe.engine.recipe import setting


@dataclasses.dataclass
class DetectSettings:
    max_boxes: int = setting(100, "most objects kept per training image", min=1)
    map_every: int = setting(0, "also compute validation mAP every N epochs; 0 only at the end", min=0)
    score_threshold: float = setting(
        0.1, "served boxes score at least this (CenterNet peaks stay near 0.2-0.4 after short training)",
        min=0.0, max=1.0)
    max_detections: int = setting(100, "most boxes served per image", min=1)


MOVED_KEYS = {"data.max_boxes": "max_boxes", "train.map_every": "map_every",
              "export.score_threshold": "score_threshold", "export.max_detections": "max_detections"}
