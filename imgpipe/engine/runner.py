"""`imgpipe.run`: a recipe in, a trained, evaluated and exported model out.

    prepare (read data, record the recipe) -> datasets -> fit -> evaluate (scores, reports) -> export -> record

Every task goes through this one function, one short function per step; the
task object supplies what is special about it, and what a multi-worker run
does differently is in `imgpipe.engine.distributed.worker_roles`. The run directory `runs/<task>/<name>/` receives the
resolved recipe, history.csv, the checkpoints, metrics.json, the plots and the
robustness card (robustness.json, robustness.png; `imgpipe.understand.robustness`).

Example:
    >>> result = run("classify", data="./images", epochs=5)
    >>> result.metrics["val_accuracy"], result.export_path
"""

import dataclasses
import json
import logging
import pathlib
import shutil
import time

import numpy as np
import yaml

from imgpipe.engine import plots
from imgpipe.engine.augment import Augmenter
from imgpipe.engine.distributed import worker_roles
from imgpipe.engine.distributed.cluster import cluster_from_environment, worker_run_dir
from imgpipe.data.sources import ImageSet
from imgpipe.errors import DataError, ExportError, RecipeError
from imgpipe.engine.export.calibrated import served_network
from imgpipe.engine.inference import compiled_forward
from imgpipe.engine.export.deploy import export_formats, report_table
from imgpipe.engine.export.formats import SAVED_MODEL, require_runtime
from imgpipe.engine.export.saved_model import export_metadata, write_export
from imgpipe.engine.model_choice import ModelChoice, choose_model
from imgpipe.engine.distributed.keras_multiworker import is_multi_worker, multi_worker_fit
from imgpipe.models import MODELS
from imgpipe.engine.pipeline import FileDecoder, make_dataset, replica_safe_batch_size
from imgpipe.engine.recipe import Recipe, load_recipe, recipe_from_dict
from imgpipe.engine.run_folder import write_run_classes
from imgpipe.engine.scoring import final_metrics
from imgpipe.engine.tensorboard_log import log_pictures
from imgpipe.engine.registry import TASKS
from imgpipe.engine.provenance import provenance
from imgpipe.engine.trainer import (Trainer, dtype_policy, environment_summary, make_deterministic, select_strategy,
                                    training_devices)
from imgpipe.engine.writable import output_guard, require_writable

log = logging.getLogger("imgpipe")

PREVIEW_SAMPLES = 24

# Keyword shortcuts of `run()` and the CLI flags, and the recipe key each sets.
SHORTCUTS = {
    "data": "data.path",
    "epochs": "train.epochs",
    "time_budget": "train.time_budget",
    "batch_size": "train.batch_size",
    "image_size": "data.image_size",
    "model": "model.name",
    "weights": "model.weights",
    "weights_dir": "model.weights_dir",
    "output": "train.run_dir",
    "export_dir": "export.root",
    "name": "export.name",
    "style": "stylize.style",
    "loss_weights": "stylize.loss_weights",
}


@dataclasses.dataclass
class RunResult:
    """What a run produced: the trained model, its metrics and where things were written."""

    model: object
    metrics: dict
    run_dir: pathlib.Path
    export_path: object
    recipe: Recipe
    history: dict


def resolve_recipe(recipe="classify", overrides=(), **shortcuts):
    """A validated recipe from a name, a YAML path or a `Recipe`, plus overrides and shortcuts.

    Example:
        >>> resolve_recipe("classify", ["train.patience=3"], epochs=5).train.epochs
        5
    """
    if isinstance(recipe, Recipe):
        recipe = recipe.override(list(overrides))
    else:
        recipe = load_recipe(str(recipe), list(overrides))
    values = {SHORTCUTS[key]: value for key, value in shortcuts.items() if value is not None}
    unknown = set(shortcuts) - set(SHORTCUTS)
    if unknown:
        raise RecipeError(f"{sorted(unknown)[0]}: unknown option; use one of {', '.join(SHORTCUTS)} or overrides")
    if values:
        recipe = recipe.update(**values)
    TASKS.get(recipe.task, key="task")
    allowed = MODELS.names(task=recipe.task)
    if recipe.model.name not in allowed + ["auto"]:
        raise RecipeError(f"model.name: unknown model {recipe.model.name!r} for {recipe.task}; "
                          f"choose one of {', '.join(allowed)}")
    return recipe


def run(recipe="classify", overrides=(), resume=False, reports=(), started=None, task_data=None, **shortcuts):
    """Trains, evaluates and exports the model a recipe describes.

    Args:
        recipe: a recipe name (`classify`), a YAML path or a `Recipe`.
        overrides: `key=value` strings, as `--set` takes them.
        resume: continue the interrupted run in `output` (or the latest run of
            this task and name) from its last completed epoch.
        reports: fns(task, model, data, recipe, decoder, run_dir) run on the trained
            model before export (`imgpipe.run` passes the robustness card). `model` is its
            `imgpipe.engine.inference.CompiledForward`: called like the model (batch norms
            folded), any attribute the model's; `model.model` is the `keras.Model` itself.
        started: `time.time()` history.csv's `wall_seconds` count from (the CLI passes its
            process's start; default: this call).
        task_data: a `TaskData` to train on instead of reading `data.path` (the folds of a
            cross-validation: the same files, split another way).
        **shortcuts: data, epochs, time_budget, batch_size, image_size, model, weights,
            output, export_dir, name.

    Returns:
        `RunResult` with `.model`, `.metrics`, `.run_dir`, `.export_path`.

    Example:
        >>> result = run("classify", data="./images", epochs=5)
    """
    started = time.time() if started is None else started
    recipe = resolve_recipe(recipe, overrides, **shortcuts)
    cluster = cluster_from_environment()
    run_dir = worker_run_dir(_run_directory(recipe, resume, cluster), cluster)
    if cluster is not None:
        select_strategy()  # collectives are configured before TensorFlow runs anything
    if resume:
        recipe = _saved_recipe(run_dir)
    require_writable(run_dir, "--output")
    if recipe.export.enabled:
        require_writable(recipe.export.root, "--export-dir")
        for name in recipe.export.formats:  # a missing converter is found before training, not after
            if name != SAVED_MODEL:
                require_runtime(name)
    with output_guard(run_dir, "--output", then="continue with --resume"):
        return _train_and_export(recipe, run_dir, resume, cluster, reports, started, task_data)


@dataclasses.dataclass
class _Run:
    """What every step of a run shares: the task, its data, the recorded recipe, the trainer and the decoder."""

    task: object
    data: object
    recipe: Recipe
    run_dir: pathlib.Path
    trainer: Trainer
    decoder: FileDecoder
    augmenter: Augmenter
    model_choice: ModelChoice


@dataclasses.dataclass
class _Datasets:
    train: object
    val: object
    steps_per_epoch: int
    fit_train: object  # what `fit` reads: the same datasets, or each worker's share in a cluster
    fit_val: object
    fixed_steps: object = None


def _train_and_export(recipe, run_dir, resume, cluster=None, reports=(), started=None, task_data=None):
    run = _prepare(recipe, run_dir, resume, cluster, started, task_data)
    datasets = _datasets(run, cluster)
    _write_preview(run)
    with dtype_policy(run.trainer.policy):
        model, outcome = _fit(run, datasets)
        if cluster is not None:
            local = worker_roles.chief_model(cluster, run.task, run.recipe, run.data, model)
            if local is None:
                worker_roles.finish_worker(run_dir)
                return RunResult(model, _training_record(outcome), run_dir, None, run.recipe, outcome["history"])
            model = local
        forward = compiled_forward(model)  # batch norms folded once, for every score, report and the export
        metrics = _evaluate(run, forward, datasets.val, reports)
    plots.plot_curves(outcome["history"], run_dir / "curves.png", fine_tune_from=outcome["warmup_epochs"])
    export_path = _export(run, forward.network, metrics) if run.recipe.export.enabled else None
    metrics = _record(run, metrics, outcome, export_path)
    return RunResult(model, metrics, run_dir, export_path, run.recipe, outcome["history"])


def _prepare(recipe, run_dir, resume, cluster, started=None, task_data=None):
    """Reads the data (unless given), records the resolved recipe and the task's state in the run folder, sets up
    training."""
    if recipe.train.deterministic:
        make_deterministic(recipe.data.seed)
    task = TASKS.get(recipe.task, key="task")()
    data = task.read_data(recipe) if task_data is None else task_data
    choice = choose_model(task, recipe, data.image_size)
    recipe = recipe.update(**{"data.image_size": list(data.image_size), "model.name": choice.name,
                              "model.weights": choice.weights.path or "none"})
    log.info(choice.describe())
    if data.split_report is not None:
        log.info(data.split_report.describe())
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
    write_run_classes(run_dir, data, task)
    log.info("run directory: %s", run_dir)
    trainer = Trainer(recipe, run_dir, resume=resume, backup_from=worker_roles.backup_source(cluster, run_dir),
                      started=started)
    log.info(environment_summary(trainer))
    decoder = FileDecoder(data.image_size, recipe.data.max_pixels, task.load_target(data),
                          task.target_signature(data))
    return _Run(task, data, recipe, run_dir, trainer, decoder, Augmenter.from_recipe(recipe, task.target_kind), choice)


def _datasets(run, cluster):
    """The training and validation pipelines (and, in a cluster, each worker's share of them)."""
    data, trainer, recipe = run.data, run.trainer, run.recipe
    common = dict(size=data.image_size, batch_size=trainer.global_batch_size, seed=recipe.data.seed,
                  cache=recipe.data.cache, cache_dir=run.run_dir / "cache", max_pixels=recipe.data.max_pixels,
                  decoder=run.decoder, deterministic=recipe.train.deterministic)
    # Several replicas: no replica may get an empty batch (see replica_safe_batch_size).
    _require_an_image_per_replica(data, trainer.replicas)
    drop_remainder = trainer.replicas > 1 and data.train.count >= trainer.global_batch_size
    train_ds, _ = make_dataset(data.train, training=True, augmenter=run.augmenter, drop_remainder=drop_remainder,
                               **common)
    val_ds, _ = make_dataset(data.val, training=False, **{
        **common, "batch_size": replica_safe_batch_size(data.val.count, trainer.global_batch_size, trainer.replicas)})
    steps = int((np.floor if drop_remainder else np.ceil)(data.train.count / trainer.global_batch_size))
    if cluster is None:
        return _Datasets(train_ds, val_ds, steps, train_ds, val_ds)
    return _Datasets(train_ds, val_ds, steps, *worker_roles.worker_datasets(data, trainer, run.augmenter, common))


def _fit(run, datasets):
    """Builds the task's model in the strategy's scope and trains it; returns (model, the trainer's outcome)."""
    task, recipe, data = run.task, run.recipe, run.data
    with run.trainer.strategy.scope():
        model = task.build_model(recipe, data)
    monitor = task.monitor_for(recipe, multi_worker=is_multi_worker(run.trainer.strategy))
    outcome = run.trainer.fit(model, task.compile_settings(recipe, data), datasets.fit_train, datasets.fit_val,
                              datasets.steps_per_epoch, monitor=monitor, monitor_ceiling=task.monitor_ceiling,
                              class_weight=task.class_weight(recipe, data),
                              callbacks=task.callbacks(recipe, data, datasets.val), fixed_steps=datasets.fixed_steps,
                              pretrained=run.model_choice.weights.path is not None)
    return model, outcome


def _evaluate(run, forward, val_ds, reports):
    """The task's scores on the validation split, its pictures, then each report (the robustness card).

    `forward` is the trained model's `CompiledForward`, which each of them calls like the model.
    """
    metadata = export_metadata(run.task, run.data, run.recipe)
    with multi_worker_fit(forward.model, forward.model.distribute_strategy):  # several replicas: evaluate too
        metrics = final_metrics(run.task, forward, val_ds, run.data, metadata, run.run_dir)
        for report in reports:
            report(run.task, forward, run.data, run.recipe, run.decoder, run.run_dir)
    _require_some_images(run.decoder, run.data)
    return metrics


def _export(run, model, metrics):
    """The next SavedModel version of the recipe's model name, then its other `export.formats`; returns the
    SavedModel's folder (None when it was not asked for). With a fitted temperature in `metrics`, both hold the
    calibrated network (`export.calibrated`).

    A format that fails or an int8 file that is refused after training costs a warning, not the run: the
    message says how to export again from the run folder.
    """
    recipe = run.recipe
    saved = None
    network, entries = served_network(model, metrics.get("calibration"), recipe)
    with output_guard(pathlib.Path(recipe.export.root) / recipe.name, "--export-dir",
                      then=f"export the trained run with `imgpipe export {run.run_dir}`"):
        if SAVED_MODEL in recipe.export.formats:
            saved = write_export(run.task.export_archive(network, run.data, recipe), recipe.export.root, recipe.name,
                                 {**export_metadata(run.task, run.data, recipe), **entries}, recipe.to_yaml())
        others = [name for name in recipe.export.formats if name != SAVED_MODEL]
        if others:
            try:
                folder, report = export_formats(run.task, network, run.data, recipe, run.decoder, others,
                                                recipe.export.quantize, metadata_entries=entries)
                log.info(report_table(report, folder))
            except ExportError as error:
                log.warning("%s; retry with `imgpipe export %s --format ...`", error, run.run_dir)
    return saved


def _training_record(outcome):
    return {"epochs_run": outcome["epochs_run"], "train_seconds": outcome["train_seconds"],
            "warmup_epochs": outcome["warmup_epochs"], "batch_norm_momentum": outcome.get("batch_norm_momentum"),
            "time_budget": outcome.get("time_budget"), "best_epoch": outcome.get("best_epoch"),
            "best_epoch_wall_seconds": outcome.get("best_epoch_wall_seconds")}


def _record(run, metrics, outcome, export_path):
    """metrics.json (which marks the run finished); the decoded-image cache goes."""
    data, failed = run.data, run.decoder.failed
    metrics = {**metrics, **_training_record(outcome), "export_path": str(export_path) if export_path else None,
               "skipped_files": len(data.skipped) + len(failed), "images_train": data.train.count,
               "images_validation": data.val.count, "model": run.recipe.model.name,
               "split_groups": data.split_report.to_json() if data.split_report is not None else None,
               "model_choice": run.model_choice.reason, "weights": run.model_choice.weights.to_json(),
               "provenance": provenance(data, run.recipe, training_devices(run.trainer))}
    if run.recipe.train.tensorboard:
        log_pictures(run.run_dir, step=max(outcome["epochs_run"] - 1, 0))
    (run.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    shutil.rmtree(run.run_dir / "cache", ignore_errors=True)
    if data.skipped or failed:
        log.warning("%d file(s) could not be read and were skipped", len(data.skipped) + len(failed))
    return metrics


def _run_directory(recipe, resume, cluster=None):
    """`train.run_dir`, or `<output>/<task>/<name>` with a number added if taken (the latest when resuming)."""
    if cluster is not None and not recipe.train.run_dir:
        raise RecipeError("train.run_dir: multi-worker runs (TF_CONFIG) need --output RUN_DIR, the same on every "
                          "worker, so that they agree on the folder")
    if recipe.train.run_dir:
        run_dir = pathlib.Path(recipe.train.run_dir)
        if resume and not (run_dir / "recipe.yaml").is_file():
            raise DataError(f"{run_dir}: nothing to resume (no recipe.yaml from an earlier run)")
        if not resume and (run_dir / "metrics.json").exists():
            raise DataError(f"{run_dir}: holds a finished run; choose another --output or --resume an unfinished one")
        return run_dir
    base = pathlib.Path(recipe.train.output) / recipe.task / recipe.name
    taken = [base] + [base.with_name(f"{base.name}{n}") for n in range(2, 10_000)]
    if resume:
        existing = [path for path in taken[:1] + sorted(base.parent.glob(f"{base.name}[0-9]*"),
                                                         key=lambda p: int(p.name[len(base.name):]))
                    if (path / "recipe.yaml").is_file()]
        if not existing:
            raise DataError(f"{base}: nothing to resume (no earlier run of {recipe.task}/{recipe.name})")
        return existing[-1]
    return next(path for path in taken if not path.exists())


def _saved_recipe(run_dir):
    try:
        values = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DataError(f"{run_dir / 'recipe.yaml'}: cannot read the saved recipe ({error})") from None
    if (run_dir / "metrics.json").exists():
        raise DataError(f"{run_dir}: this run already finished; nothing to resume")
    return recipe_from_dict(values, source=str(run_dir / "recipe.yaml"))


def _write_preview(run):
    """augment_preview.png: a few training samples, augmented as the model will see them."""
    recipe, data = run.recipe, run.data
    subset = _first_samples(data.train, PREVIEW_SAMPLES, recipe.data.seed)
    preview_ds, _ = make_dataset(subset, size=data.image_size, batch_size=1, training=False,
                                 cache="none", decoder=run.decoder)
    samples = []
    for index, (images, targets) in enumerate(preview_ds):
        image = images[0].numpy().astype(np.uint8)
        samples.append(run.augmenter.apply(image, targets[0].numpy(), seed=recipe.data.seed + index))
    run.task.preview(samples, data, run.run_dir / "augment_preview.png")


def _first_samples(image_set, count, seed):
    if not image_set.is_files:
        return ImageSet(dataset=image_set.dataset.take(count), count=min(count, image_set.count))
    chosen = np.random.default_rng(seed).permutation(image_set.count)[:count]
    return ImageSet.from_files([image_set.paths[i] for i in chosen], np.asarray(image_set.targets)[chosen])


def _require_an_image_per_replica(data, replicas):
    for split, image_set in (("training", data.train), ("validation", data.val)):
        if image_set.count < replicas:
            raise DataError(f"{data.source}: the {split} split has {image_set.count} image(s), fewer than the "
                            f"{replicas} devices training on it; add images or change data.val_split")


def _require_some_images(decoder, data):
    if decoder.failed and len(decoder.failed) >= data.train.count:
        raise DataError(f"{data.source}: no training image could be decoded")
