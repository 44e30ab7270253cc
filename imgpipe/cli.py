"""The `imgpipe` command: thin click commands over the library.

Each command parses its options, calls one library function and prints the
answer. Errors the user can fix (`ImgpipeError`) become one line on stderr
and exit status 2; anything else is a bug and keeps its traceback (status 1).

Example:
    $ imgpipe run classify --data ./images --epochs 5
    $ imgpipe predict saved_models/classify/1 cat.jpg --top-k 3
"""

import json
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click  # noqa: E402

from imgpipe.engine.recipe import TTA_MODES  # noqa: E402
from imgpipe.engine.registry import TASKS  # noqa: E402
from imgpipe.errors import ImgpipeError, InterruptedWrite  # noqa: E402

log = logging.getLogger("imgpipe")


class _OneLineFormatter(logging.Formatter):
    def format(self, record):
        prefix = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return prefix + record.getMessage()


def _configure_logging(verbose):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    log.propagate = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="imgpipe")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and results.")
def main(quiet):
    """Folder of images in, trained, evaluated, servable Keras model out."""
    _configure_logging(not quiet)


def _image_size(value):
    return value if value is None else str(value)


@main.command()
@click.argument("recipe", default="classify")
@click.option("--data", help="Folder, annotation file or tfds:NAME[:SPLIT]; omitted: the built-in demo data.")
@click.option("--epochs", type=int, help="Total epochs (train.epochs).")
@click.option("--time-budget",
              help="About this long from the start to the end of training: 600, 90s, 10m, 1.5h (train.time_budget).")
@click.option("--batch-size", type=int, help="Images per step per device (train.batch_size).")
@click.option("--image-size", help="Model input size: 64 or 96x128 (data.image_size).")
@click.option("--model", "model_name", help="Model builder; `imgpipe models` lists them (model.name).")
@click.option("--weights", help="auto (default), imagenet, a local weights file, or none (model.weights).")
@click.option("--weights-dir", type=click.Path(file_okay=False),
              help="Folder of <backbone>_imagenet_notop.weights.h5 files (model.weights_dir; or IMGPIPE_WEIGHTS_DIR).")
@click.option("--output", type=click.Path(file_okay=False), help="Run directory (train.run_dir).")
@click.option("--export-dir", type=click.Path(file_okay=False), help="Export root (export.root).")
@click.option("--name", help="Model name for the export and the run folder (export.name).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --output (or the latest one).")
@click.option("--no-export", is_flag=True, help="Train and evaluate without writing a SavedModel.")
@click.option("--no-robustness", is_flag=True, help="Skip the robustness card (evaluate.robustness=false).")
@click.option("--style", help="Style transfer: the style image (stylize.style).")
@click.option("--loss-weights", help="Style transfer: imagenet, random or a VGG weights file (stylize.loss_weights).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any recipe key, e.g. train.patience=5.")
def run(recipe, data, epochs, time_budget, batch_size, image_size, model_name, weights, weights_dir, output,
        export_dir, name, resume, no_export, no_robustness, style, loss_weights, overrides):
    """Train, evaluate and export RECIPE (a task name like classify, or a YAML file)."""
    from imgpipe.api import run as run_recipe
    from imgpipe.engine.time_budget import describe_seconds
    from imgpipe.engine.wall_clock import process_start_time

    overrides = list(overrides) + (["export.enabled=false"] if no_export else []) + \
        (["evaluate.robustness=false"] if no_robustness else [])
    result = run_recipe(recipe, overrides, resume=resume, started=process_start_time(), data=data, epochs=epochs,
                        time_budget=time_budget, batch_size=batch_size, image_size=_image_size(image_size),
                        model=model_name, weights=weights, weights_dir=weights_dir, output=output,
                        export_dir=export_dir, name=name, style=style, loss_weights=loss_weights)
    click.echo("\nvalidation metrics:")
    for key, value in sorted(result.metrics.items()):
        if "/" not in key and key.startswith("val_"):
            click.echo(f"  {key:<24} {value:.4f}")
    if "model" in result.metrics:  # a worker other than the chief reports only its training
        click.echo(f"model:         {result.metrics['model']} ({result.metrics['model_choice']})")
        click.echo(f"weights:       {result.metrics['weights']['path'] or 'none, from scratch'}")
    if result.metrics.get("calibration"):
        from imgpipe.understand.calibration import describe

        click.echo(f"calibration:   {describe(result.metrics['calibration'])}")
    budget = result.metrics.get("time_budget") or {}
    click.echo(f"epochs run:    {result.metrics['epochs_run']} ({result.metrics['train_seconds']:.1f} s)"
               + (f", stopped by the time budget of {describe_seconds(budget['seconds'])}"
                  if budget.get("stopped_after_epoch") else ""))
    if result.metrics.get("best_epoch_wall_seconds") is not None:
        click.echo(f"best epoch:    {result.metrics['best_epoch']}, "
                   f"{result.metrics['best_epoch_wall_seconds']:.1f} s after the command started")
    click.echo(f"run directory: {result.run_dir}")
    if result.export_path:
        click.echo(f"export:        {result.export_path}")
    if (result.run_dir / "robustness.json").is_file():
        click.echo(f"robustness:    {result.run_dir / 'robustness.json'}")


@main.command()
@click.option("--data", required=True, type=click.Path(), help="The data folder, as `imgpipe run --data` takes it.")
@click.option("--task", type=click.Choice(TASKS.names()),
              help="What the data is for (default: guessed from the layout).")
@click.option("--style", help="Style transfer: the style image (stylize.style).")
@click.option("--near", "near_bits", type=int, default=4, show_default=True,
              help="Perceptual-hash bits (of 64) two images may differ in and count as copies; -1: exact only.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Recipe keys, e.g. data.val_split=0.1.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--run", "run_dir", type=click.Path(), help="Also rank the folder's labels with this classification "
              "run's model (suspect_labels.csv, .png in --report-dir); the run's training images are left out.")
@click.option("--report-dir", type=click.Path(), default="runs/check", show_default=True,
              help="Where --run writes suspect_labels.csv and .png.")
def check(data, task, style, near_bits, overrides, as_json, run_dir, report_dir):
    """Check a data folder before training: unreadable files, duplicates, leakage, balance.

    Exits 0 when the data can be trained on (warnings allowed), 2 when it cannot.
    """
    from imgpipe.understand.check import check_data, render

    report = check_data(data, task, list(overrides), near_duplicate_bits=near_bits, style=style)
    click.echo(json.dumps(report.to_dict(), indent=2, default=str) if as_json else render(report))
    if not report.trainable:
        sys.exit(2)
    if run_dir:
        from imgpipe.understand.suspect_labels import rank_folder

        suspects, paths, class_names, left_out, written = rank_folder(run_dir, data, report_dir)
        click.echo(f"\nsuspect labels ({run_dir}'s model): {sum(s.flagged for s in suspects)} of {len(paths)} "
                   f"image(s) flagged"
                   + (f"; {left_out} training image(s) of the run left out" if left_out else "") + f"; {written}")
        for suspect in [suspect for suspect in suspects if suspect.given != suspect.suggested][:10]:
            click.echo(f"  {paths[suspect.index]}: {class_names[suspect.given]} -> "
                       f"{class_names[suspect.suggested]}? ({suspect.score:.2f}"
                       + (", flagged)" if suspect.flagged else ")"))


@main.command()
@click.argument("export", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help="Folder laid out like the training data.")
@click.option("--report-dir", type=click.Path(file_okay=False), help="Where the plots go.")
@click.option("--robustness", is_flag=True,
              help="Also the robustness card on the recipe's validation split of --data (robustness.json, .png).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def evaluate(export, data, report_dir, robustness, as_json):
    """Evaluate an EXPORT (saved_models/<name>/<version>, or a .onnx, .tflite or OpenVINO .xml file) on a folder."""
    from imgpipe.engine.export.format_folder import is_format_file
    from imgpipe.engine.use_export import evaluate as evaluate_export
    from imgpipe.errors import ExportError

    if robustness and is_format_file(export):
        raise ExportError(f"{export}: --robustness runs on a SavedModel export (saved_models/<name>/<version>)")
    metrics = evaluate_export(export, data, report_dir)
    if robustness:
        from imgpipe.understand.robustness import describe, export_card

        metrics["robustness"] = export_card(export, data, metrics["report_dir"])
    if as_json:
        click.echo(json.dumps(metrics, indent=2, sort_keys=True))
        return
    per_class = sorted({key.split("/", 1)[1] for key in metrics if key.startswith("precision/")})
    for key, value in metrics.items():
        if "/" not in key and isinstance(value, float):
            click.echo(f"{key:<16} {value:.4f}")
    if per_class:
        click.echo(f"\n{'class':<20} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
        for name in per_class:
            click.echo(f"{name:<20} {metrics[f'precision/{name}']:>9.3f} {metrics[f'recall/{name}']:>9.3f} "
                       f"{metrics[f'f1/{name}']:>9.3f} {metrics[f'support/{name}']:>8d}")
    if robustness:
        click.echo("\n" + describe(metrics["robustness"]))
    click.echo(f"\nimages: {metrics.get('images')}  tta: {metrics['tta']}  plots: {metrics['report_dir']}")


@main.command()
@click.argument("export", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=int, default=1, show_default=True, help="Classes per image.")
@click.option("--out", "out_dir", type=click.Path(),
              help="Folder for the masks, drawn boxes or images produced (a .png file for one styled image).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def predict(export, images, top_k, out_dir, as_json):
    """Run IMAGES through an EXPORT's serving signature.

    Exits 2 if the export refused any file (empty, not an image, truncated, over
    its max_pixels); that file's line says why, the others are answered.
    """
    from imgpipe.engine.use_export import predict as predict_files

    if top_k < 1:
        raise click.BadParameter("must be at least 1", param_hint="--top-k")
    results = predict_files(export, images, top_k, out_dir)
    for result in results:
        click.echo(json.dumps(result) if as_json else _describe_prediction(result))
    refused = [result for result in results if "status" in result]
    if refused:
        click.echo(f"predict: the export refused {len(refused)} of {len(results)} files (first: "
                   f"{refused[0]['file']}: {refused[0]['status']})", err=True)
        sys.exit(2)


def _describe_prediction(result):
    if "status" in result:
        answer = f"not answered ({result['status']})"
    elif "predictions" in result:
        answer = ", ".join(f"{p['class_name']} {p['score']:.3f}" for p in result["predictions"])
    elif "objects" in result:
        found = "; ".join(f"{o['class_name']} {o['score']:.2f} at {o['box']}" for o in result["objects"])
        answer = f"{found or 'nothing found'} -> {result['drawn']}"
    else:
        answer = " ".join(f"{key}={value}" for key, value in result.items() if key != "file")
    return f"{result['file']}: {answer}"


@main.command()
@click.argument("image", type=click.Path())
@click.option("--style", required=True, type=click.Path(), help="The style image (a painting).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where the result goes (.png, .jpg).")
@click.option("--steps", type=int, default=300, show_default=True, help="Optimisation steps.")
@click.option("--size", type=int, default=384, show_default=True, help="Longest side of the result.")
@click.option("--loss-network", type=click.Choice(["vgg16", "vgg19"]), default="vgg16", show_default=True)
@click.option("--loss-weights", default="imagenet", show_default=True,
              help="imagenet, random (fixed random features, lower quality) or a VGG weights file.")
@click.option("--weights-dir", type=click.Path(file_okay=False),
              help="Folder of <network>_imagenet_notop.weights.h5 files, looked in first (or IMGPIPE_WEIGHTS_DIR).")
def stylize(image, style, out, steps, size, loss_network, loss_weights, weights_dir):
    """Render IMAGE in the style of --style by optimising its pixels (Gatys et al.; no training)."""
    from imgpipe.tasks.stylize.optimize import stylize_image
    from imgpipe.engine.plots import save_image

    from imgpipe.engine.client import OUTPUT_SUFFIXES

    if size < 16:
        raise click.BadParameter("must be at least 16", param_hint="--size")
    if os.path.splitext(out)[1].lower() not in OUTPUT_SUFFIXES:
        raise click.BadParameter(f"needs an image extension ({', '.join(OUTPUT_SUFFIXES)})", param_hint="--out")
    pixels = stylize_image(image, style, steps=steps, size=size, network=loss_network, loss_weights=loss_weights,
                           weights_dir=weights_dir)
    save_image(pixels, out)
    click.echo(f"styled: {out} ({pixels.shape[1]}x{pixels.shape[0]})")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--export-dir", type=click.Path(file_okay=False), help="Export root (default: the recipe's).")
@click.option("--name", help="Model name (default: the recipe's).")
@click.option("--weights", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--max-pixels", type=int, help="Served pixel budget: larger images get status `over max_pixels N` "
              "(default: the recipe's export.max_pixels).")
@click.option("--format", "formats", multiple=True, default=["saved_model"], show_default=True,
              help="saved_model, litert, onnx, openvino or all (repeatable). Every format but saved_model is "
              "proven in its own runtime on the run's validation images.")
@click.option("--quantize", type=click.Choice(["float32", "float16", "int8"]), default="float32", show_default=True,
              help="LiteRT only: float16 weights, or full-integer int8 calibrated on training images.")
@click.option("--allow-metric-drop", is_flag=True,
              help="Keep an int8 file whose metric drops more than export.max_metric_drop.")
@click.option("--tta", type=click.Choice(TTA_MODES),
              help="Test-time augmentation inside the served network, classify and segment "
              "(default: the recipe's export.tta).")
def export(run_dir, export_dir, name, weights, max_pixels, formats, quantize, allow_metric_drop, tta):
    """Export a run's checkpoint: the next SavedModel version, and/or LiteRT, ONNX, OpenVINO files."""
    from imgpipe.engine.export.formats import SAVED_MODEL, expand_formats, require_runtime
    from imgpipe.engine.run_folder import export_run

    names = expand_formats(formats)
    others = [format_name for format_name in names if format_name != SAVED_MODEL]
    for format_name in others:  # a missing runtime is found before anything is written
        require_runtime(format_name)
    if SAVED_MODEL in names:
        click.echo(f"export: {export_run(run_dir, export_dir, name, weights, max_pixels, tta)}")
    if others:
        from imgpipe.engine.export.deploy import report_table
        from imgpipe.engine.run_folder import export_run_formats

        folder, report = export_run_formats(run_dir, others, quantize, allow_metric_drop, export_dir, name, weights,
                                            tta)
        click.echo(report_table(report, folder))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--image", "images", multiple=True, required=True, type=click.Path(),
              help="An image to explain (repeatable).")
@click.option("--class", "class_name", help="Explain this class instead of the prediction (segmentation: its region).")
@click.option("--layer", help="Spatial layer Grad-CAM weighs (default: the last before the head).")
@click.option("--filters", "filters_layer", metavar="LAYER",
              help="Also show the most active filters of LAYER: synthesised inputs and the images that excite them.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where the grids go (default RUN_DIR/explain).")
@click.option("--weights", type=click.Choice(["best", "last"]), default="best", show_default=True)
def explain(run_dir, images, class_name, layer, filters_layer, out_dir, weights):
    """Grad-CAM heat maps (and filter visualisations) of a classification or segmentation run."""
    from imgpipe.understand.explain.run import explain_run

    result = explain_run(run_dir, images, class_name, layer, filters_layer, out_dir, weights)
    for path, name, score in result["predictions"]:
        click.echo(f"{path}: {name} {score:.3f}")
    click.echo(f"grad-cam: {result['gradcam']}")
    if result["filters"]:
        click.echo(f"filters:  {result['filters']}")


@main.command()
@click.option("--keys", is_flag=True, help="List every recipe key with its default and meaning.")
def recipes(keys):
    """List the shipped recipes (or every recipe key)."""
    from imgpipe.engine.recipe import describe_keys, load_recipe, recipe_names

    if keys:
        for key, default, meaning in describe_keys():
            click.echo(f"{key:<26} {str(default):<14} {meaning}")
        return
    for name in recipe_names():
        recipe = load_recipe(name)
        task = TASKS.get(recipe.task)
        model = recipe.model.name
        if model == "auto":
            model = f"auto ({'/'.join(filter(None, (task.pretrained_model, task.scratch_model)))})"
        click.echo(f"{name:<12} task={recipe.task:<10} model={model:<33} {TASKS.info(recipe.task)['description']}")


@main.command()
@click.option("--task", help="Only builders for this task.")
@click.option("--image-size", type=int, default=224, show_default=True, help="Input side used to count.")
@click.option("--summary", "summary_name", metavar="NAME",
              help="Print NAME's layers with their parameter counts and the arithmetic behind them.")
@click.option("--classes", type=int, default=10, show_default=True, help="Output classes used with --summary.")
def models(task, image_size, summary_name, classes):
    """List model builders with their parameter counts (or one builder's layer table)."""
    from imgpipe.models import MODELS

    if summary_name:
        from imgpipe.understand.layer_table import format_table

        model = MODELS.get(summary_name, key="--summary")((image_size, image_size, 3), classes, weights=None)
        click.echo(f"{summary_name} at {image_size}x{image_size}x3, {classes} classes")
        click.echo(format_table(model))
        return
    click.echo(f"{'name':<20} {'task':<17} {'family':<12} {'parameters':>12}")
    for name in MODELS.names(**({"task": task} if task else {})):
        info = MODELS.info(name)
        model = MODELS.get(name)((image_size, image_size, 3), 10, weights=None)
        tasks = info.get("task", "")
        tasks = ",".join(tasks) if isinstance(tasks, tuple) else tasks
        click.echo(f"{name:<20} {tasks:<17} {info.get('family', ''):<12} {model.count_params():>12,}")


def entry_point():
    """Console script: runs `main`, turning user errors into one line and exit status 2."""
    try:
        main.main(standalone_mode=False)
    except InterruptedWrite as error:
        click.echo(f"error: {error}", err=True)
        _exit_now(2)
    except ImgpipeError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    sys.exit(0)


def _exit_now(status):
    """Exits without the interpreter's clean-up, after a write failed part-way (a full disk).

    h5py keeps the half-written checkpoint open, and its destructor retries the
    failed flush at shutdown, printing a traceback and crashing the process.
    Everything worth keeping is already on disk or reported.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    entry_point()
