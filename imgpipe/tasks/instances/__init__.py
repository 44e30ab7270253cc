"""Instance segmentation: each object its own mask, from COCO, YOLO-seg or instance-ID PNG annotations."""

from imgpipe.data.instances import has_instance_layout
from imgpipe.engine.registry import TASKS, TaskSpec
from imgpipe.tasks.instances.settings import InstancesSettings

TASKS.add(TaskSpec(
    name="instances",
    description="instance segmentation from COCO polygons/RLE, YOLO-seg or instance-ID PNGs",
    settings=InstancesSettings,
    task_class="imgpipe.tasks.instances.task:InstanceSegmentationTask",
    recognises=has_instance_layout,
    guess_order=5,  # before segment: an instances/ folder next to images/ is not a semantic mask folder
))
