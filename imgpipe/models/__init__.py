"""Model builders, registered by name and by task.

Every builder takes float32 pixels in 0..255 and does its own scaling, so the
pipeline and the serving signature feed all models the same way.

Example:
    >>> build = MODELS.get("resnet50")
    >>> model = build(input_shape=(224, 224, 3), num_classes=10, weights=None)
"""

from imgpipe.engine.registry import Registry

MODELS = Registry("model")

from imgpipe.models import centermask, centernet, classifiers, segmenters, transformer_net  # noqa: E402,F401  (registers the builders)
