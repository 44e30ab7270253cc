"""`imgpipe explain RUN_DIR --image x.jpg`: Grad-CAM and filter grids for a trained run's model.

The run folder alone is enough (the model is rebuilt from its recipe and
checkpoint, see `imgpipe.engine.run_folder.load_run`); the grids go to
`RUN_DIR/explain/` unless `out_dir` says otherwise, never next to the images.

Example:
    >>> result = explain_run("runs/classify/classify", ["cat.jpg"], filters_layer="stage2_b_conv")
    >>> result["gradcam"], result["predictions"]
"""

import pathlib

import numpy as np

from imgpipe.data.images import load_image
from imgpipe.errors import DataError, RecipeError
from imgpipe.understand.explain.visualise import class_score, region_score, write_filter_grid, write_grad_cam_grid
from imgpipe.engine.pipeline import make_dataset
from imgpipe.engine.registry import TASKS
from imgpipe.engine.run_folder import load_run

RANKED_IMAGES = 256


def explain_run(run_dir, image_paths, class_name=None, layer=None, filters_layer=None, out_dir=None,
                weights="best", filters=4, top=4):
    """Writes `gradcam.png` (and `filters_<layer>.png` with `filters_layer`) for the images; returns what was found.

    Args:
        run_dir: a finished or interrupted `imgpipe run` folder with a checkpoint.
        image_paths: image files to explain.
        class_name: explain this class instead of each image's prediction (segmentation: its region).
        layer: the spatial layer Grad-CAM weighs; the last one before the head by default.
        filters_layer: also visualise the most active filters of this layer, each with the run's
            validation images (or, if its data folder is gone, the given images) that excite it most.

    Returns:
        {"gradcam": path, "filters": path or None, "predictions": [(file, class name, score)]}
    """
    run = load_run(run_dir, weights)
    if run.task.explain_target is None:
        explained = [name for name in TASKS.names() if TASKS.get(name).explain_target is not None]
        raise RecipeError(f"{run_dir}: explain covers {' and '.join(explained)} runs, not {run.task.name}")
    names = run.data.class_names
    if class_name is not None and class_name not in names:
        raise RecipeError(f"--class: {class_name!r} is not a class of this run; choose one of {', '.join(names)}")
    out_dir = pathlib.Path(out_dir) if out_dir else pathlib.Path(run_dir) / "explain"
    out_dir.mkdir(parents=True, exist_ok=True)
    size = run.data.image_size
    images = np.stack([load_image(path, size, run.recipe.data.max_pixels) for path in image_paths]).astype(np.float32)
    outputs = run.model.predict(images, verbose=0)
    index = None if class_name is None else names.index(class_name)
    if run.task.explain_target == "region":
        index = index if index is not None else _most_predicted_foreground(outputs)
        score, predictions = region_score(index), [
            (str(path), names[index], float((np.argmax(output, -1) == index).mean()))
            for path, output in zip(image_paths, outputs)]
    else:
        score = class_score(index)
        predictions = [(str(path), names[int(np.argmax(output))], float(np.max(output)))
                       for path, output in zip(image_paths, outputs)]
    result = {"gradcam": write_grad_cam_grid(run.model, images, names, out_dir / "gradcam.png", score=score,
                                             layer=layer),
              "filters": None, "predictions": predictions}
    if filters_layer:
        ranked = _validation_images(run, RANKED_IMAGES)
        ranked = images if ranked is None else ranked
        result["filters"] = write_filter_grid(run.model, filters_layer, ranked,
                                              out_dir / f"filters_{filters_layer}.png", filters=filters, top=top)
    return result


def _most_predicted_foreground(outputs):
    """The class covering most pixels besides class 0 (usually background); 0 when nothing else is predicted."""
    counts = np.bincount(np.argmax(outputs, axis=-1).reshape(-1), minlength=outputs.shape[-1])
    return int(np.argmax(counts[1:]) + 1) if counts[1:].any() else 0


def _validation_images(run, limit):
    """Up to `limit` validation images of the run's data as float32 [N, H, W, 3], or None if the data is gone."""
    try:
        data = run.task.read_data(run.recipe)
    except (DataError, OSError):
        return None
    dataset, _ = make_dataset(data.val, run.data.image_size, 32, training=False, cache="none",
                              max_pixels=run.recipe.data.max_pixels)
    batches = [images.numpy() for images, _ in dataset.take(-(-limit // 32))]
    return np.concatenate(batches)[:limit] if batches else None
