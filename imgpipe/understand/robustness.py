"""The robustness card: how the task's main metric falls as the validation images are perturbed.

    validation images (at most evaluate.robustness_images) -> clean metric
    -> for each family (imgpipe.understand.perturb) and severity 1..5: perturb, predict, metric
    -> robustness.json + robustness.png

The metric is the task's own (accuracy, mean IoU, mAP@0.5, PSNR), computed by
the task's one scoring path (`Task.answers`, `Task.score`), as training's final
metrics and `imgpipe evaluate` are. The same images get the same
perturbation every time: each image's random draws come from `data.seed` and
its position, and do not depend on the severity (see `imgpipe.understand.perturb`).

The one number per family, `retained`, is the metric averaged over severities
1 to 5 and divided by the clean metric: 1.0 means the family does not hurt the
model, 0.6 that it keeps 60 % of its clean score on average. It is ImageNet-C's
relative corruption error turned around (a score kept instead of an error
added) and measured against the model's own clean score rather than AlexNet's,
so it needs no reference model. `mean_drop` is the same average as a plain
difference, in the metric's units (PSNR: dB).

Example:
    >>> card = export_card("saved_models/classify/1", "images/", "runs/evaluate/classify_v1")
    >>> card["families"]["occlusion"]["retained"]
"""

import json
import pathlib

import numpy as np

from imgpipe.engine import plots  # noqa: F401  (selects matplotlib's Agg backend)
from imgpipe.engine.client import per_image
from imgpipe.engine.export.saved_model import export_metadata
from imgpipe.engine.inference import compiled_forward
from imgpipe.engine.scoring import split_examples
from imgpipe.errors import DataError
from imgpipe.understand.perturb import FAMILIES, LEVELS, MEANING, Perturbation, image_seeds, severity_parameters
from imgpipe.engine.pipeline import FileDecoder

BATCH_SIZE = 16  # images per model call: eager calls on big batches (unet at 128 px) held GBs
CARD_FILE = "robustness.json"
PLOT_FILE = "robustness.png"
SUMMARY_DEFINITION = ("retained = mean of the metric over severities 1-5 / clean metric (1.0: unaffected); "
                      "mean_drop = clean metric - that mean, in the metric's units")


def robustness_card(predict, score, images, targets, target_kind, seed, families=FAMILIES, skipped=None):
    """The card for one model on one set of images: clean metric, metric per family and severity, summaries.

    Args:
        predict: fn(float32 images [B, H, W, 3], 0..255) -> dict of numpy answers.
        score: fn(answers, uint8 images, targets) -> float, higher is better.
        images: uint8 [N, H, W, 3] at the model's input size.
        targets: [N, ...] targets at that size (labels, masks or padded boxes).
        target_kind: 'label', 'mask' or 'boxes': what geometry has to move.
        seed: int; the images' perturbations are drawn from it.
        families: the families to run; `skipped` maps others to why they do not apply.

    Returns:
        dict, as written to robustness.json.
    """
    images, targets = np.asarray(images), np.asarray(targets)
    seeds = image_seeds(seed, len(images))
    cases = [(family, severity) for family in families for severity in LEVELS]
    parameters = {}

    def perturbed(case):
        if case is None:
            return images, targets
        perturbation = Perturbation(*case, images.shape[1:3], target_kind)
        parameters[case] = perturbation.parameters
        return perturbation.apply_batch(images, targets, seeds)

    values = dict(_scores(predict, score, [None, *cases], perturbed))
    clean = values.pop(None)
    card = {"applies": True, "images": int(len(images)), "seed": int(seed),
            "image_size": list(images.shape[1:3]), "clean": _rounded(clean),
            "summary_definition": SUMMARY_DEFINITION, "families": {}}
    for family in families:
        metric = [values[(family, severity)] for severity in LEVELS]
        mean = float(np.mean(metric))
        card["families"][family] = {
            "metric": [_rounded(value) for value in metric],
            "drop": [_rounded(clean - value) for value in metric],
            "mean_drop": _rounded(clean - mean),
            "retained": _rounded(mean / clean) if clean > 0 else None,
            "severities": [parameters[(family, severity)] for severity in LEVELS],
        }
    retained = [entry["retained"] for entry in card["families"].values() if entry["retained"] is not None]
    card["mean_retained"] = _rounded(float(np.mean(retained))) if retained else None
    card["not_applicable"] = dict(skipped or {})
    card["parameter_meaning"] = {key: meaning for key, meaning in MEANING.items()
                                 if any(key in severity_parameters(family, 1) for family in families)}
    return card


def card_after_training(task, model, data, recipe, decoder, run_dir):
    """The run's report hook (`imgpipe.run`): the card when the recipe asks for it (`evaluate.robustness`)."""
    return run_card(task, model, data, recipe, decoder, run_dir) if recipe.evaluate.robustness else None


def run_card(task, model, data, recipe, decoder, run_dir):
    """The card of a run's trained model on its validation split, written into `run_dir`."""
    if task.robustness_metric_name is None:
        return write_card(_not_applicable(task), run_dir)
    metadata = export_metadata(task, data, recipe)
    images, targets = split_examples(data.val, data.image_size, recipe.evaluate.robustness_images,
                                          decoder, recipe.data.max_pixels)
    forward = compiled_forward(model)
    return write_card(_task_card(task, metadata, images, targets, recipe.data.seed,
                                 lambda batch: task.answers(forward, batch, metadata)), run_dir)


def export_card(export, data_path, report_dir, max_images=None):
    """The card of an export, through its `serve_images` signature, on the validation split of `data_path`.

    The split is the one the export's recipe (`data.val_split`, `data.seed`)
    picks from `data_path`: given the training folder, the run's own
    validation images. The folder must be labelled like the training data.

    Args:
        export: a version folder, or a model folder (its newest version).
        data_path: folder laid out like the training data.
        report_dir: where robustness.json and robustness.png go.
        max_images: at most this many images (default: the recipe's evaluate.robustness_images).
    """
    import tensorflow as tf

    from imgpipe.engine.export.saved_model import export_recipe, load_export
    from imgpipe.engine.registry import TASKS

    version_dir, metadata, loaded = load_export(export)
    task = TASKS.get(metadata["task"], key="task")()
    if task.robustness_metric_name is None:
        return write_card(_not_applicable(task), report_dir)
    recipe = export_recipe(version_dir).update(**{"data.path": str(data_path), "data.image_size": metadata["image_size"]})
    data = task.read_examples(recipe)
    _require_same_labels(task, data, recipe, metadata, data_path)
    decoder = FileDecoder(data.image_size, recipe.data.max_pixels, task.load_target(data),
                          task.target_signature(data))
    images, targets = split_examples(data.val, data.image_size, max_images or recipe.evaluate.robustness_images,
                                          decoder, recipe.data.max_pixels)
    serve = loaded.signatures["serve_images"]

    def predict(batch):
        return {key: value.numpy() for key, value in serve(images=tf.constant(batch, tf.float32)).items()}

    return write_card(_task_card(task, metadata, images, targets, recipe.data.seed, predict), report_dir)


def write_card(card, folder):
    """Writes robustness.json (and robustness.png when the card applies) into `folder`; returns the card."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2))
    if card.get("applies"):
        plot_card(card, folder / PLOT_FILE)
    return card


def plot_card(card, path):
    """Metric against severity (0 = clean), one line per family, with each family's `retained` in the legend."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    severities = [0, *LEVELS]
    for family, entry in card["families"].items():
        retained = "n/a" if entry["retained"] is None else f"{entry['retained']:.2f}"
        axis.plot(severities, [card["clean"], *entry["metric"]], marker="o", markersize=4,
                  label=f"{family} (retained {retained})")
    axis.axhline(card["clean"], color="grey", linestyle=":", linewidth=1)
    axis.set_xticks(severities, ["clean", *map(str, LEVELS)])
    axis.set_xlabel("severity")
    axis.set_ylabel(card["metric"])
    axis.set_title(f"robustness: {card['task']}, {card['metric']} on {card['images']} validation images", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def describe(card):
    """A few lines for a terminal: the clean metric and each family's metric by severity and `retained`."""
    if not card.get("applies"):
        return f"robustness: does not apply ({card['reason']})"
    lines = [f"robustness ({card['metric']}, {card['images']} images): clean {card['clean']:.4f}"]
    for family, entry in card["families"].items():
        values = " ".join(f"{value:.3f}" for value in entry["metric"])
        retained = "n/a" if entry["retained"] is None else f"{entry['retained']:.3f}"
        lines.append(f"  {family:<13} {values}   retained {retained}")
    for family, reason in card["not_applicable"].items():
        lines.append(f"  {family:<13} does not apply: {reason}")
    return "\n".join(lines)


def _task_card(task, metadata, images, targets, seed, predict):
    families = [family for family in FAMILIES if family not in task.robustness_skipped]
    if not len(images):
        card = {"applies": False, "reason": "no validation image could be read"}
    else:
        def score(answers, shown, targets):
            truths = [task.truth(image, target) for image, target in zip(shown, targets)]
            return task.score(per_image(answers), truths, metadata)[task.robustness_metric_name]

        card = robustness_card(predict, score, images, targets, task.target_kind, seed, families,
                               task.robustness_skipped)
    return {"task": task.name, "metric": task.robustness_metric_name, **card}


def _not_applicable(task):
    return {"task": task.name, "metric": None, "applies": False, "reason": task.robustness_note}


def _require_same_labels(task, data, recipe, metadata, data_path):
    """The folder must mean what the training data meant: same class names, same mask encoding."""
    expected = json.loads(json.dumps(task.export_metadata(data, recipe), default=list))
    for key, value in expected.items():
        if key in metadata and metadata[key] != value:
            raise DataError(f"{data_path}: its {key} ({_short(value)}) differ from the model's "
                            f"({_short(metadata[key])}); the robustness card needs data labelled like the "
                            "training data")


def _scores(predict, score, cases, perturbed):
    """Yields (case, metric) for each case, predicting several small cases in one call.

    Calling a Keras model costs about as much for 6 images as for 64, so the
    images of consecutive cases are sent together until a batch is full.
    """
    waiting, count = [], 0
    for index, case in enumerate(cases):
        shown, truth = perturbed(case)
        waiting.append((case, shown, truth))
        count += len(shown)
        if count >= BATCH_SIZE or index == len(cases) - 1:
            answers = _answers(predict, np.concatenate([shown for _, shown, _ in waiting]))
            start = 0
            for waiting_case, shown, truth in waiting:
                part = {key: value[start:start + len(shown)] for key, value in answers.items()}
                start += len(shown)
                yield waiting_case, float(score(part, shown, truth))
            waiting, count = [], 0


def _answers(predict, images):
    answers = {}
    for start in range(0, len(images), BATCH_SIZE):
        for key, value in predict(images[start:start + BATCH_SIZE].astype(np.float32)).items():
            answers.setdefault(key, []).append(np.asarray(value))
    return {key: np.concatenate(values) for key, values in answers.items()}


def _rounded(value):
    return round(float(value), 6)


def _short(value, limit=80):
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
