"""Semantic segmentation: a class for every pixel, from images paired with masks."""

from imgpipe.data.masks import has_mask_layout
from imgpipe.engine.registry import TASKS, TaskSpec
from imgpipe.tasks.segment.settings import MOVED_KEYS, SegmentSettings

TASKS.add(TaskSpec(
    name="segment",
    description="semantic segmentation from images + masks",
    settings=SegmentSettings,
    moved_keys=MOVED_KEYS,
    tta_output="per_pixel",
    task_class="imgpipe.tasks.segment.task:SegmentationTask",
    recognises=has_mask_layout,
    guess_order=10,
))
