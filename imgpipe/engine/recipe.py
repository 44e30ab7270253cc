"""The recipe: every setting of a run, with its one default, type and meaning.

A recipe is YAML with the sections `task`, `data`, `augment`, `model`, `train`,
`export` and `evaluate` that every task shares, and one section named after its
task (`segment:`) with the keys only that task has, declared by the task's
package (`TaskSpec.settings`). The dataclasses are the single place where a key
is defined, documented and defaulted; a task's YAML file in `recipes/` only says
what differs for that task. Unknown keys, wrong types and out-of-range values
are refused here, naming the key, before any data is read.

Example:
    >>> recipe = load_recipe("classify", overrides=["train.epochs=5"])
    >>> recipe.train.epochs
    5
"""

import dataclasses
import importlib.resources
import logging
import math
import os
import pathlib
import re
import typing

import yaml

from imgpipe.data.grouped_split import SPLIT_GROUPS
from imgpipe.data.images import DEFAULT_MAX_PIXELS
from imgpipe.engine.registry import TASKS
from imgpipe.errors import RecipeError

log = logging.getLogger("imgpipe")

STRENGTHS = ("none", "light", "medium", "strong")
TTA_MODES = ("none", "flip", "flip+scales")  # imgpipe.models.test_time_augmentation.MODES, without importing Keras


def setting(default, help, check=None, **rules):
    """A recipe key: its default, a one-line meaning and how a value is checked.

    Task packages declare their own section's keys with it.

    Example:
        >>> dice_weight: float = setting(0.0, "weight of the soft Dice term", min=0.0)
    """
    factory = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return dataclasses.field(metadata={"help": help, "check": check, **rules}, **factory)


def _image_size(key, value):
    """`auto`, one positive int (square) or [height, width]."""
    if value == "auto":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return [value, value]
    if isinstance(value, str) and "x" in value:
        value = value.lower().split("x")
        try:
            value = [int(part) for part in value]
        except ValueError:
            pass
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return list(value)
    raise RecipeError(f"{key}: expected 'auto', a positive size like 64 or HxW like 96x128, got {value!r}")


DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smh])")


def duration(key, value):
    """Seconds of a duration written as seconds (600), with units (90s, 10m, 1.5h, 1h30m), or None for none.

    Raises RecipeError naming `key` for anything else.

    Example:
        >>> duration("train.time_budget", "1h30m")
        5400.0
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(rf"\s*(?:{DURATION_PART.pattern}\s*)+", value.lower()):
        seconds = sum(float(number) * DURATION_UNITS[unit] for number, unit in DURATION_PART.findall(value.lower()))
    else:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise RecipeError(f"{key}: {value!r} is not a duration; write seconds (600), 90s, 10m, 1.5h or none")
    return seconds


def _devices(key, value):
    """`auto`, a positive device count, or a list of device names."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise RecipeError(f"{key}: expected 'auto', a device count or a list of device names, got {value!r}")


@dataclasses.dataclass
class DataSettings:
    path: typing.Optional[str] = setting(
        None, "folder, file or tfds:NAME[:SPLIT] to read; empty runs the built-in demo data set"
    )
    format: str = setting(
        "auto", "source layout; auto detects it", choices=("auto", "folders", "masks", "voc", "coco", "yolo", "tfds")
    )
    image_size: typing.Any = setting(
        "auto", "model input size: auto (from the data), 64, or HxW like 96x128", check=_image_size
    )
    val_split: float = setting(0.2, "fraction held out for validation when the source has no split", min=0.0, max=0.9)
    seed: int = setting(1337, "seed of the split, the shuffle and the augmentation", min=0)
    split_groups: str = setting(
        "duplicates", "when imgpipe draws the split: keep each group of exact or near-duplicate images on one side "
        "(duplicates) or not (none); a split the data gives is never changed", choices=SPLIT_GROUPS,
    )
    cache: str = setting(
        "auto",
        "where decoded, resized images are kept between epochs",
        choices=("auto", "memory", "disk", "none"),
    )
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS, "images with more pixels are refused before decoding (decompression bombs)", min=1
    )


@dataclasses.dataclass
class AugmentSettings:
    viewpoint: str = setting("medium", "flip, rotate, scale, shift, perspective", choices=STRENGTHS)
    illumination: str = setting("medium", "brightness, contrast, gamma, colour", choices=STRENGTHS)
    occlusion: str = setting("light", "random erasing and cut-outs", choices=STRENGTHS)


@dataclasses.dataclass
class ModelSettings:
    name: str = setting(
        "auto", "registered model builder (`imgpipe models` lists them), or auto: the task's pretrained model "
        "when ImageNet weights are found and the images are large enough, else its from-scratch model")
    weights: typing.Optional[str] = setting(
        "auto", "initial weights: auto (weights folder, then Keras' ImageNet weights, else from scratch), "
        "imagenet (the same, but an error when none are found), none, or a weights file for the backbone")
    weights_dir: typing.Optional[str] = setting(
        None, "folder of <backbone>_imagenet_notop.weights.h5 files; empty: the IMGPIPE_WEIGHTS_DIR variable")
    dropout: float = setting(0.2, "dropout before the classification head", min=0.0, max=0.9)


@dataclasses.dataclass
class TrainSettings:
    epochs: int = setting(30, "total number of epochs, including the warm-up", min=1)
    batch_size: int = setting(32, "images per step on each device", min=1)
    learning_rate: float = setting(0.001, "peak learning rate of the cosine schedule for one device's batch",
                                    min=0.0, exclusive_min=True)
    lr_scaling: str = setting(
        "linear", "with R replicas (global batch R x batch_size), the peak rate times R (linear, Goyal et al. "
        "2017), times sqrt(R), or unchanged (none)", choices=("linear", "sqrt", "none"))
    weight_decay: float = setting(0.0001, "AdamW decoupled weight decay", min=0.0)
    warmup_epochs: int = setting(
        2, "with pretrained weights: epochs with a frozen backbone before fine-tuning", min=0
    )
    fine_tune_fraction: float = setting(
        1.0, "with pretrained weights: the share of the backbone's layers, counted from the top, that fine-tune "
        "after the warm-up; 1 is all (Keras' guide), 0.35 about TensorFlow's tutorial (MobileNetV2 from layer 100 "
        "of 154 on), 0 keeps the backbone frozen", min=0.0, max=1.0)
    backbone_rate: float = setting(
        0.1, "with pretrained weights and a warm-up: the backbone's learning rate while fine-tuning, as a fraction "
        "of train.learning_rate, at which the layers built on it keep training (fastai's discriminative rates); "
        "1 is one rate for all, as Keras' guide and TensorFlow's tutorial fine-tune", min=0.0, max=1.0,
        exclusive_min=True)
    patience: int = setting(10, "stop after this many epochs without improvement; 0 never stops early", min=0)
    time_budget: typing.Any = setting(
        None, "about this long from the command's start to the end of training (600, 90s, 10m, 1.5h; recorded in "
        "seconds; up to one epoch over): at each epoch's end the learning-rate decay is planned to end with the "
        "last epoch that fits, and training stops there (Ultralytics' time=); never more than train.epochs; the "
        "reports and export come after; none: train.epochs decides", check=duration)
    class_weight: str = setting(
        "none", "auto weights classes by inverse frequency (of images, or of pixels for segmentation)",
        choices=("none", "auto"),
    )
    devices: typing.Any = setting("auto", "auto (all GPUs), a device count, or device names", check=_devices)
    mixed_precision: str = setting(
        "auto", "float16 compute on GPUs that gain from it", choices=("auto", "on", "off")
    )
    output: str = setting("runs", "root folder of run directories: <output>/<task>/<name>")
    run_dir: typing.Optional[str] = setting(None, "exact run directory; overrides output and name")
    verbose: int = setting(1, "Keras progress: 0 silent, 1 progress bar, 2 one line per epoch", min=0, max=2)
    suspect_labels: str = setting(
        "validation", "classify, segment, detect: rank the images whose labels (class, mask, boxes) the model "
        "disputes (cleanlab; suspect_labels.csv, .png): the validation images with the trained model "
        "(validation), every image with train.folds models each trained without it (cross_validation: folds "
        "more trainings), or none",
        choices=("validation", "cross_validation", "none"))
    folds: int = setting(3, "train.suspect_labels=cross_validation: how many models, each holding out one fold",
                         min=2, max=20)
    deterministic: bool = setting(
        False, "the same metrics from two runs on one machine: seeded weights (data.seed), TensorFlow's op "
        "determinism, augmented batches kept in order; slower")
    tensorboard: bool = setting(True, "TensorBoard logs in RUN_DIR/tensorboard: the epoch scalars and learning "
                                "rate, then the run's pictures (tensorboard --logdir runs)")


def _export_formats(key, value):
    """A list of format names (`imgpipe.engine.export.formats.ALL_FORMATS`, or all); one name alone is a list."""
    from imgpipe.engine.export.formats import ALL_FORMATS, expand_formats
    from imgpipe.errors import ExportError

    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise RecipeError(f"{key}: expected a list of formats from {', '.join(ALL_FORMATS)} or all, got {value!r}")
    try:
        return expand_formats(names)
    except ExportError as error:
        raise RecipeError(f"{key}: {str(error).removeprefix('--format ')}") from None


@dataclasses.dataclass
class ExportSettings:
    enabled: bool = setting(True, "write the export (export.formats) at the end of the run")
    formats: typing.Any = setting(
        ["saved_model"], "what the run exports: saved_model (TF Serving), litert, onnx, openvino, or all; every "
        "format but saved_model is proven in its own runtime (formats/<n>/export_report.json)", check=_export_formats)
    quantize: str = setting("float32", "LiteRT files: float32, float16 (weights) or int8 (full integer, calibrated "
                            "on training images)", choices=("float32", "float16", "int8"))
    max_metric_drop: float = setting(
        0.01, "an int8 file whose main metric drops more than this (absolute) against the Keras model is refused",
        min=0.0)
    calibrated: bool = setting(
        True, "serve temperature-scaled probabilities when the run fitted a temperature (classification; "
        "metrics.json's calibration); false: the network's own softmax")
    tta: str = setting(
        "none", "test-time augmentation inside the served network (classify, segment): the probabilities averaged "
        "over the image and its mirror (flip), and also over 0.83x and 1.17x zooms of both (flip+scales); none: "
        "one pass, the default: flip gained nothing on raccoon crops and 0.013 mean IoU on membrane for 1.5-2x "
        "the serving time (benchmarks/tta.py)", choices=TTA_MODES)
    root: str = setting("saved_models", "export root: <root>/<name>/<version>/")
    name: typing.Optional[str] = setting(None, "model name; defaults to the task name")
    max_pixels: int = setting(
        25_000_000, "serving_default refuses (status `over max_pixels N`) images whose header announces more "
        "pixels, before decoding: at most 3 bytes a pixel decoded, and 12 a pixel per float copy at the image's "
        "size (stylize, colorize)", min=1)


@dataclasses.dataclass
class EvaluateSettings:
    robustness: bool = setting(True, "write the robustness card (robustness.json, robustness.png) at the end of a run")
    robustness_images: int = setting(200, "robustness card: most validation images perturbed (it evaluates 26 times)",
                                      min=1)


@dataclasses.dataclass
class Recipe:
    """A full, validated recipe. Build one with `load_recipe`; change it with `override`.

    `options` is the task's own section (a `segment:` mapping in YAML, the
    dataclass its task package declares), so a resolved recipe carries only
    its own task's keys.
    """

    task: str = setting("classify", "task to run; `imgpipe recipes` lists them")
    data: DataSettings = dataclasses.field(default_factory=DataSettings)
    augment: AugmentSettings = dataclasses.field(default_factory=AugmentSettings)
    model: ModelSettings = dataclasses.field(default_factory=ModelSettings)
    train: TrainSettings = dataclasses.field(default_factory=TrainSettings)
    export: ExportSettings = dataclasses.field(default_factory=ExportSettings)
    evaluate: EvaluateSettings = dataclasses.field(default_factory=EvaluateSettings)
    options: typing.Any = None

    @property
    def name(self):
        """The model's name: the export name, which also names the run folder."""
        return self.export.name or self.task

    def to_dict(self):
        values = {"task": self.task}
        values.update({section: dataclasses.asdict(getattr(self, section)) for section in SECTIONS})
        if self.options is not None and dataclasses.fields(self.options):
            values[self.task] = dataclasses.asdict(self.options)
        return values

    def to_yaml(self):
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def override(self, assignments):
        """Returns a new recipe with `key=value` strings (YAML values) applied.

        Example:
            >>> recipe.override(["train.epochs=5", "data.image_size=96x128"])
        """
        values = self.to_dict()
        for assignment in assignments:
            key, sep, text = assignment.partition("=")
            if not sep or not key.strip():
                raise RecipeError(f"--set {assignment!r}: expected key=value, like train.epochs=5")
            value = _parse_value(text)
            _assign(values, key.strip(), value)
        return recipe_from_dict(values)

    def update(self, **dotted):
        """Returns a new recipe with Python values set by dotted key (`train__epochs` or a dict).

        Example:
            >>> recipe.update(**{"train.epochs": 5})
        """
        values = self.to_dict()
        for key, value in dotted.items():
            _assign(values, key.replace("__", "."), value)
        return recipe_from_dict(values)


SECTIONS = {
    "data": DataSettings,
    "augment": AugmentSettings,
    "model": ModelSettings,
    "train": TrainSettings,
    "export": ExportSettings,
    "evaluate": EvaluateSettings,
}


def _parse_value(text):
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def _moved_keys():
    """{old dotted key: (task, key in its section)} over every registered task."""
    return {old: (spec.name, new) for spec in TASKS.specs() for old, new in spec.moved_keys.items()}


def _assign(values, key, value):
    section, _, field = key.partition(".")
    if not field:
        if section != "task":
            raise RecipeError(f"{key}: unknown key; keys look like train.epochs or data.path")
        values["task"] = value
        return
    moved = _moved_keys().get(key)
    if moved is not None:  # a path from before the key moved into its task's section
        owner, new = moved
        if owner == values.get("task"):
            log.warning("%s is now %s.%s; the old name still works", key, owner, new)
            values.setdefault(owner, {})[new] = value
        else:
            values.setdefault(section, {})[field] = value  # recipe_from_dict leaves it out, with a notice
        return
    if section in SECTIONS:
        names = [f.name for f in dataclasses.fields(SECTIONS[section])]
    elif section in TASKS:
        settings = TASKS.spec(section).settings
        names = [f.name for f in dataclasses.fields(settings)] if settings else []
    else:
        raise RecipeError(f"{key}: unknown section {section!r}; choose one of task, "
                          f"{', '.join(list(SECTIONS) + TASKS.names())}")
    if field not in names:
        raise RecipeError(f"{key}: unknown key; {section} has {', '.join(names) or 'no keys'}")
    values.setdefault(section, {})[field] = value


def _check_value(key, field, value):
    rules = field.metadata
    if rules.get("check"):
        return rules["check"](key, value)
    if _is_optional(field.type) and (value is None or str(value).lower() in ("none", "null", "")):
        return None
    if value is None:
        raise RecipeError(f"{key}: a value is required")
    expected = _base_type(field.type)
    if expected is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        # YAML 1.1 reads 3e-4 (no dot) as a string.
        try:
            value = float(value)
        except ValueError:
            raise RecipeError(f"{key}: expected a number, got {value!r}") from None
    if expected is str and isinstance(value, bool) and "on" in rules.get("choices", ()):
        value = "on" if value else "off"  # YAML 1.1 reads on/off as booleans
    if expected is str and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise RecipeError(f"{key}: expected {expected.__name__}, got {value!r}")
    if "choices" in rules and value not in rules["choices"]:
        raise RecipeError(f"{key}: expected one of {', '.join(rules['choices'])}, got {value!r}")
    if "min" in rules and (value < rules["min"] or (rules.get("exclusive_min") and value == rules["min"])):
        bound = "greater than" if rules.get("exclusive_min") else "at least"
        raise RecipeError(f"{key}: must be {bound} {rules['min']}, got {value!r}")
    if "max" in rules and value > rules["max"]:
        raise RecipeError(f"{key}: must be at most {rules['max']}, got {value!r}")
    return value


def _is_optional(annotation):
    return type(None) in typing.get_args(annotation)


def _base_type(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _checked_section(settings_class, given, section):
    """An instance of `settings_class` from the mapping `given`, every value checked, defaults filled in."""
    if not isinstance(given, dict):
        raise RecipeError(f"{section}: expected a mapping of keys, got {given!r}")
    fields = {f.name: f for f in dataclasses.fields(settings_class)}
    for key in given:
        if key not in fields:
            raise RecipeError(f"{section}.{key}: unknown key; {section} has {', '.join(fields) or 'no keys'}")
    defaults = settings_class()
    return settings_class(**{
        name: _check_value(f"{section}.{name}", field, given[name]) if name in given else getattr(defaults, name)
        for name, field in fields.items()})


def _move_old_keys(values, task):
    """Moves keys given at their pre-task-section paths (`train.dice_weight`) into the task's section.

    A moved key of this task keeps working, with one notice naming the new
    paths; one of another task is left out (an old resolved recipe holds every
    task's keys), with a notice only when its value is not the default.
    """
    own, foreign = [], []
    for old, (owner, new) in _moved_keys().items():
        section, _, field = old.partition(".")
        given = values.get(section)
        if not isinstance(given, dict) or field not in given:
            continue
        value = given.pop(field)
        if owner == task:
            target = values.setdefault(task, {})
            if not isinstance(target, dict) or new in target:
                raise RecipeError(f"{old}: given twice, also as {task}.{new}; keep {task}.{new}")
            target[new] = value
            own.append(f"{old} -> {task}.{new}")
        elif value != getattr(TASKS.spec(owner).settings(), new):
            foreign.append(f"{old} (a {owner} key)")
    if own:
        log.warning("recipe keys moved into the task's section: %s; the old names still work", ", ".join(own))
    if foreign:
        log.warning("recipe keys of other tasks left out: %s", ", ".join(foreign))


def recipe_from_dict(values, source="recipe"):
    """Validates a nested dict (as loaded from YAML) and fills in every default."""
    if not isinstance(values, dict):
        raise RecipeError(f"{source}: expected a mapping of sections, got {type(values).__name__}")
    values = {key: dict(value) if isinstance(value, dict) else value for key, value in values.items()}
    task = values.get("task", "classify")
    if not isinstance(task, str):
        raise RecipeError(f"task: expected a task name, got {task!r}")
    spec = TASKS.spec(task, key="task")
    unknown = set(values) - set(SECTIONS) - {"task", task}
    if unknown:
        name = sorted(unknown)[0]
        if name in TASKS:
            raise RecipeError(f"{name}: keys of the {name} task, but this recipe's task is {task}")
        raise RecipeError(f"{name}: unknown section; choose one of task, {', '.join(SECTIONS)}, {task}")
    _move_old_keys(values, task)
    sections = {section: _checked_section(settings_class, values.get(section) or {}, section)
                for section, settings_class in SECTIONS.items()}
    options = _checked_section(spec.settings, values.get(task) or {}, task) if spec.settings else None
    _require_tta_applies(sections["export"].tta, spec)
    return Recipe(task=task, options=options, **sections)


def _require_tta_applies(mode, spec):
    """`export.tta` other than none only for tasks whose output a mirror and a zoom can be undone on."""
    if mode != "none" and spec.tta_output is None:
        applies = ", ".join(other.name for other in TASKS.specs() if other.tta_output is not None)
        raise RecipeError(f"export.tta: {mode} applies to {applies} only, not to {spec.name}; use none")


def recipe_folders():
    """Folders searched for named recipes: the packaged copy of `recipes/`."""
    return [pathlib.Path(str(importlib.resources.files("imgpipe") / "recipes"))]


def recipe_names():
    """Names of the recipes shipped with imgpipe (`classify`, ...) and of every registered task.

    A task without a file in `recipes/` runs on the schema's defaults.
    """
    files = {path.stem for folder in recipe_folders() if folder.is_dir() for path in folder.glob("*.yaml")}
    return sorted(files | set(TASKS.names()))


def load_recipe(name_or_path, overrides=()):
    """Loads a shipped recipe by name (`classify`) or a YAML file, then applies `overrides`.

    Args:
        name_or_path: str, a recipe name from `imgpipe recipes` or a path to a YAML file.
        overrides: iterable of `key=value` strings, as given to `--set`.

    Example:
        >>> recipe = load_recipe("classify", ["data.path=./images"])
    """
    path = pathlib.Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.is_file()):
        path = next((folder / f"{name_or_path}.yaml" for folder in recipe_folders()
                     if (folder / f"{name_or_path}.yaml").is_file()), None)
        if path is None and name_or_path in TASKS:
            return recipe_from_dict({"task": name_or_path}).override(overrides)
        if path is None:
            raise RecipeError(
                f"{name_or_path}: no such recipe; choose one of {', '.join(recipe_names())} or give a YAML file"
            )
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise RecipeError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    try:
        recipe = recipe_from_dict(values or {}, source=str(path))
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None
    return recipe.override(overrides)


def describe_keys():
    """Yields (key, default, help) for every recipe key, each task's own section last, for `imgpipe recipes --keys`."""
    yield "task", "classify", dataclasses.fields(Recipe)[0].metadata["help"]
    sections = list(SECTIONS.items()) + [(spec.name, spec.settings) for spec in TASKS.specs() if spec.settings]
    for section, settings_class in sections:
        defaults = settings_class()
        for field in dataclasses.fields(settings_class):
            yield f"{section}.{field.name}", getattr(defaults, field.name), field.metadata["help"]
