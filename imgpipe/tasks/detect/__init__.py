"""Object detection: boxes and class names for every object, from VOC, COCO or YOLO annotations."""

from imgpipe.data.detection import has_detection_layout
from imgpipe.engine.registry import TASKS, TaskSpec
from imgpipe.tasks.detect.settings import MOVED_KEYS, DetectSettings

TASKS.add(TaskSpec(
    name="detect",
    description="object detection from VOC, COCO or YOLO annotations",
    settings=DetectSettings,
    moved_keys=MOVED_KEYS,
    task_class="imgpipe.tasks.detect.task:DetectionTask",
    recognises=has_detection_layout,
    guess_order=20,
))
