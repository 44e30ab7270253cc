"""imgpipe: a folder of images in, a trained, evaluated, servable Keras model out.

Example:
    >>> import imgpipe
    >>> result = imgpipe.run("classify", data="./images", epochs=5)
    >>> result.metrics["val_accuracy"], result.export_path
    >>> recipe = imgpipe.load_recipe("classify").override(["augment.occlusion=strong"])
    >>> imgpipe.run(recipe, data="./images")
"""

from imgpipe.errors import DataError, ExportError, ImgpipeError, RecipeError
from imgpipe.engine.recipe import Recipe, load_recipe

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "ExportError",
    "ImgpipeError",
    "Recipe",
    "RecipeError",
    "TASKS",
    "MODELS",
    "evaluate",
    "load_recipe",
    "predict",
    "run",
]


def __getattr__(name):
    # TensorFlow is imported on first use, so `imgpipe --help` and recipe
    # validation stay fast.
    if name in ("run", "evaluate", "predict"):
        from imgpipe import api

        return getattr(api, name)
    if name == "TASKS":
        from imgpipe.engine.registry import TASKS

        return TASKS
    if name == "MODELS":
        from imgpipe.models import MODELS

        return MODELS
    raise AttributeError(f"module 'imgpipe' has no attribute {name!r}")
