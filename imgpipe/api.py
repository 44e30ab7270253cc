"""The public functions: the engine's run, with the reports about a trained model, and using an export.

`imgpipe.engine` trains and exports any registered task and knows nothing of
the tools in `imgpipe.understand`; this module joins the two, so a run ends
with its robustness card and its suspect labels as the CLI's does.

Example:
    >>> result = run("classify", data="./images", epochs=5)
    >>> evaluate(result.export_path, data="./test_images")["accuracy"]
"""

from imgpipe.engine import runner
from imgpipe.engine.use_export import evaluate, predict

__all__ = ["evaluate", "predict", "run"]


def run(recipe="classify", overrides=(), resume=False, started=None, **shortcuts):
    """Trains, evaluates and exports the model a recipe describes, ending with the robustness card and the
    suspect labels.

    Args:
        recipe: a recipe name (`classify`), a YAML path or a `Recipe`.
        overrides: `key=value` strings, as `--set` takes them.
        resume: continue the interrupted run in `output` (or the latest run of
            this task and name) from its last completed epoch.
        started: `time.time()` that history.csv's `wall_seconds` count from (default: this call;
            the CLI passes its process's start).
        **shortcuts: data, epochs, time_budget, batch_size, image_size, model, weights,
            output, export_dir, name, style, loss_weights.

    Returns:
        `RunResult` with `.model`, `.metrics`, `.run_dir`, `.export_path`.

    Example:
        >>> result = run("classify", data="./images", epochs=5)
    """
    from imgpipe.understand.robustness import card_after_training
    from imgpipe.understand.suspect_labels import report_after_training

    return runner.run(recipe, overrides, resume, reports=(card_after_training, report_after_training), started=started,
                      **shortcuts)
