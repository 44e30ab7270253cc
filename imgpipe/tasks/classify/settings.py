"""The classification recipe section (`classify:`): the keys only this task has."""

import dataclasses

from imgpipe.engine.recipe import setting


@dataclasses.dataclass
class ClassifySettings:
    label_smoothing: float = setting(0.1, "label smoothing of the cross-entropy", min=0.0, max=0.5)
    top_k: int = setting(5, "names and scores returned per image by the serving signature", min=1)


MOVED_KEYS = {"train.label_smoothing": "label_smoothing", "export.top_k": "top_k"}
