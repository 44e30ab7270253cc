"""Instance segmentation against what a user would do instead: connected components of the semantic U-Net.

What it measures
    For each case, two runs of a default recipe, each typed as a new user types it
    (`imgpipe run TASK --data DIR`, IMGPIPE_OFFLINE=1, no weights folder; `--epochs N`
    added to both when given), each timed from spawn to exit (training, evaluation,
    robustness card and export):

    instance model   `imgpipe run instances` on the ID-PNG folder, scored by
                     `imgpipe evaluate EXPORT --data VAL --json` (its served answers,
                     at each image's original size)
    baseline         `imgpipe run segment` on the same images and split as semantic masks;
                     its export's served class map (`mask_png_bytes`, original size) cut
                     into instances by scipy.ndimage.label (4-connectivity) per foreground
                     class, each component scored 1.0 (connected components have no score,
                     so its AP is that of one operating point), box = the component's tight
                     box, then scored by the task's own `instance_map_scores` (pycocotools,
                     maxDets 200) against the same truth

    Printed per case: mask mAP50, mask mAP@[.5:.95], box mAP50, train+export wall, and the
    instance/baseline ratios of mask mAP50 and wall.

    membrane  ../shared/data/membrane, the 30 consecutive sections split contiguously (0-19
              train, 20-29 validation: a random split puts each slice's neighbours in
              training); instances = the 4-connected components of the cell interior
              (mask > 127), components under 20 pixels dropped on both sides. Membranes
              separate the cells, so the baseline is strong here: both are reported.
    demo      `make_instances_folder`: 160 training images (seed 0) and 40 validation
              images (seed 1), 64 px, a touching same-class pair in every other image.
              Connected components merge the pair, so the instance model must win here.

The case folders and runs are rebuilt under BENCH_WORK (default /tmp/imgpipe_bench/instances_baseline)
on every invocation; ../shared is only read.

Usage (from the repository root; with each recipe's default epochs a run takes a long time on
2 cores, membrane most):
    .venv/bin/python benchmarks/instances_baseline.py [--case membrane|demo|all] [--epochs N] [--json PATH]
        [--weights-dir ../shared/weights]   # adds a row: the instance model with ImageNet weights
"""

import argparse
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import scipy.ndimage
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_summary, print_table  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
MEMBRANE = SHARED / "data" / "membrane"
WORK = pathlib.Path(os.environ.get("BENCH_WORK", "/tmp/imgpipe_bench/instances_baseline"))
CASES = ("membrane", "demo")
MEMBRANE_TRAIN_SLICES = 20
MIN_PIXELS = {"membrane": 20, "demo": 0}  # components smaller than this are not instances, in truth or baseline
DEMO_SPLITS = {"train": (160, 0), "val": (40, 1)}  # split -> (images, seed)
DEMO_SIZE = 64
MAX_DETECTIONS = 200  # pycocotools' maxDets, as the instance task's default (a membrane slice has ~140 cells)
SCORES = ("mask_map50", "mask_map", "box_map50")


# === Data ===

def components(binary, min_pixels):
    """The 4-connected components of `binary` with at least `min_pixels` pixels, numbered 1..K; (map, K)."""
    labels, count = scipy.ndimage.label(binary)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = np.flatnonzero(sizes >= min_pixels)
    keep = keep[keep > 0]  # label 0 is the background
    renumbered = np.zeros(count + 1, np.int64)
    renumbered[keep] = np.arange(1, len(keep) + 1)
    return renumbered[labels], len(keep)


def save_id_png(path, ids, count):
    """An ID PNG as the instances layout reads it: 8-bit, or 16-bit when it holds more than 255 objects."""
    Image.fromarray(ids.astype(np.uint16 if count > 255 else np.uint8)).save(path)


def build_membrane(root):
    """root/instances/{train,val}/ (ID PNGs of the cells, no sidecar) and root/semantic/{train,val}/ (0/1 masks).

    The semantic masks keep every cell pixel, small components included: the U-Net learns the mask a
    user has, and the 20-pixel floor applies where the baseline cuts its prediction into instances.
    """
    instance_root, semantic_root = root / "instances", root / "semantic"
    images = sorted((MEMBRANE / "images").glob("*.png"), key=lambda path: int(path.stem))
    for index, image in enumerate(images):
        split = "train" if index < MEMBRANE_TRAIN_SLICES else "val"
        cells = np.asarray(Image.open(MEMBRANE / "masks" / image.name).convert("L")) > 127
        ids, count = components(cells, MIN_PIXELS["membrane"])
        for folder, kind in ((instance_root, "instances"), (semantic_root, "masks")):
            for sub in ("images", kind):
                (folder / split / sub).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, folder / split / "images" / image.name)
        save_id_png(instance_root / split / "instances" / image.name, ids, count)
        Image.fromarray(cells.astype(np.uint8)).save(semantic_root / split / "masks" / image.name)
    return instance_root, semantic_root


def build_demo(root):
    """root/instances/{train,val}/ from the demo generator and root/semantic/{train,val}/, its class-index twin."""
    from imgpipe.data.demo import make_instances_folder

    instance_root = root / "instances"
    for split, (images, seed) in DEMO_SPLITS.items():
        make_instances_folder(instance_root / split, images=images, size=DEMO_SIZE, seed=seed)
    return instance_root, semantic_twin(instance_root, root / "semantic")


def semantic_twin(instance_root, semantic_root):
    """The same images and split as semantic masks: each pixel its instance's class index + 1, 0 background.

    Classes follow the instance folder's own order (sorted names over every sidecar), so class c of the
    U-Net is class c - 1 of the instance model.
    """
    from imgpipe.data.instances import read_instance_annotations

    splits, _, _ = read_instance_annotations(instance_root)
    for split, annotations in splits.items():
        for sub in ("images", "masks"):
            (semantic_root / split / sub).mkdir(parents=True, exist_ok=True)
        for annotation in annotations:
            rendered = annotation.render((annotation.height, annotation.width))
            classes = np.where(rendered[..., 0] > 0, rendered[..., 1] + 1, 0)
            image = pathlib.Path(annotation.image)
            shutil.copyfile(image, semantic_root / split / "images" / image.name)
            Image.fromarray(classes.astype(np.uint8)).save(semantic_root / split / "masks" / f"{image.stem}.png")
    return semantic_root


def case_folders(case):
    """(instance folder, semantic folder), both train/ + val/, rebuilt under WORK so no stale case is scored."""
    root = WORK / "data" / case
    shutil.rmtree(root, ignore_errors=True)
    return build_membrane(root) if case == "membrane" else build_demo(root)


# === imgpipe, as a user types it ===

def imgpipe(arguments, log_path, cwd, weights_dir=None):
    """Runs the imgpipe CLI offline, with no weights folder unless `weights_dir`; returns (stdout, wall seconds
    from spawn to exit)."""
    environment = {**os.environ, "IMGPIPE_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment.pop("IMGPIPE_WEIGHTS_DIR", None)
    if weights_dir is not None:
        environment["IMGPIPE_WEIGHTS_DIR"] = str(weights_dir)
    command = [str(pathlib.Path(sys.executable).parent / "imgpipe"), *map(str, arguments)]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=cwd)
    wall = time.perf_counter() - started
    log_path.write_text(f"$ {' '.join(command)}\n{completed.stdout}\n--- stderr ---\n{completed.stderr}")
    if completed.returncode:
        sys.exit(f"imgpipe failed with exit status {completed.returncode}; output in {log_path}")
    return completed.stdout, wall


def train(task, data, work, epochs, weights_dir=None, label=None):
    """`imgpipe run TASK --data DATA` with its own run and export folders (named `label`, default the task);
    returns (export version folder, wall)."""
    label = label or task
    arguments = ["run", task, "--data", data, "--output", work / f"{label}_run",
                 "--export-dir", work / "saved_models", "--set", "train.verbose=2"]
    if epochs is not None:
        arguments += ["--epochs", epochs]
    stdout, wall = imgpipe(arguments, work / f"{label}_run.log", work, weights_dir)
    exports = [line.split(":", 1)[1].strip() for line in stdout.splitlines() if line.startswith("export:")]
    if not exports:
        sys.exit(f"imgpipe run {task} printed no export line; output in {work / f'{label}_run.log'}")
    return pathlib.Path(exports[-1]), wall


def instance_model_scores(export, val_dir, work):
    """The instance export's scores by `imgpipe evaluate --json` on the validation folder."""
    stdout, _ = imgpipe(["evaluate", export, "--data", val_dir, "--json", "--report-dir", work / "evaluate"],
                        work / "evaluate.log", work)
    return json.loads(stdout)


# === The baseline: connected components of the U-Net's served class map ===

def validation_truths(val_dir, class_names):
    """(image paths, int32 [H, W, 2] instance maps at original size) with classes in `class_names`' order."""
    from imgpipe.data.instances import read_instance_annotations

    splits, names, _ = read_instance_annotations(val_dir)
    index_of = np.array([class_names.index(name) for name in names], np.int32)
    paths, truths = [], []
    for annotation in (annotation for annotations in splits.values() for annotation in annotations):
        truth = annotation.render((annotation.height, annotation.width)).astype(np.int32)
        truth[..., 1] = np.where(truth[..., 0] > 0, index_of[truth[..., 1]], 0)
        paths.append(annotation.image)
        truths.append(truth)
    return paths, truths


def components_as_detections(class_map, num_classes, min_pixels):
    """Per foreground class, its connected components as detections: (instance map, boxes, scores, classes).

    Every component scores 1.0: a user's connected components carry no confidence to rank them by.
    """
    instance_map = np.zeros(class_map.shape, np.int32)
    boxes, classes = [], []
    for semantic_class in range(1, num_classes + 1):
        ids, count = components(class_map == semantic_class, min_pixels)
        for rows, cols in scipy.ndimage.find_objects(ids):
            boxes.append([cols.start, rows.start, cols.stop, rows.stop])
        instance_map[ids > 0] = ids[ids > 0] + len(classes)
        classes += [semantic_class - 1] * count
    return instance_map, np.array(boxes, np.float32).reshape(-1, 4), np.ones(len(classes), np.float32), \
        np.array(classes, np.int32)


def baseline_scores(export, val_dir, class_names, min_pixels):
    """The segment export's served masks on the validation images, cut into components, scored as instances."""
    from imgpipe.engine.client import answer_status, run_signature
    from imgpipe.engine.use_export import load_export
    from imgpipe.tasks.instances.mask_eval import instance_map_scores

    paths, truths = validation_truths(val_dir, class_names)
    _, _, loaded = load_export(export)
    detections = []
    for path, truth, answer in zip(paths, truths, run_signature(loaded, paths)):
        if answer_status(answer) != "ok":
            sys.exit(f"{path}: the segment export refused it ({answer_status(answer)})")
        class_map = np.asarray(Image.open(io.BytesIO(answer["mask_png_bytes"])), np.int64)
        if class_map.shape != truth.shape[:2]:
            sys.exit(f"{path}: served mask is {class_map.shape}, its truth {truth.shape[:2]}")
        detections.append(components_as_detections(class_map, len(class_names), min_pixels))
    scores = instance_map_scores(truths, detections, class_names, MAX_DETECTIONS)
    return {**scores, "images": len(paths), "detections": int(sum(len(found[2]) for found in detections))}


# === One case ===

def measure(case, epochs, weights_dir=None):
    """Both runs of one case and their scores: {"instance": {...}, "baseline": {...}}, and "pretrained" (the
    instance model with `weights_dir` as its weights folder) when given."""
    from imgpipe.data.instances import read_instance_annotations

    instance_root, semantic_root = case_folders(case)
    _, class_names, _ = read_instance_annotations(instance_root)
    work = WORK / "runs" / case
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    export, wall = train("instances", instance_root, work, epochs)
    instance = {**instance_model_scores(export, instance_root / "val", work), "wall": wall}
    export, wall = train("segment", semantic_root, work, epochs)
    baseline = {**baseline_scores(export, instance_root / "val", class_names, MIN_PIXELS[case]), "wall": wall}
    result = {"class_names": class_names, "instance": instance, "baseline": baseline}
    if weights_dir is not None:
        export, wall = train("instances", instance_root, work, epochs, weights_dir, "instances_pretrained")
        result["pretrained"] = {**instance_model_scores(export, instance_root / "val", work), "wall": wall}
    return result


def ratio(numerator, denominator):
    """numerator / denominator as "1.23x", or "n/a" where the baseline's figure is 0."""
    return f"{numerator / denominator:.2f}x" if denominator else "n/a"


def table_rows(result):
    """The case's two rows: scores and wall; the instance row also its ratios to the baseline's."""
    instance, baseline = result["instance"], result["baseline"]

    def ratios(scores):
        return [ratio(scores["mask_map50"], baseline["mask_map50"]), ratio(scores["wall"], baseline["wall"])]

    sides = [("instance model", instance, ratios(instance))]
    if "pretrained" in result:
        sides.append(("instance model, ImageNet weights folder", result["pretrained"], ratios(result["pretrained"])))
    sides.append(("semantic U-Net + connected components", baseline, ["", ""]))
    return [[side, *(f"{scores[key]:.4f}" for key in SCORES), round(scores["wall"], 1), *side_ratios]
            for side, scores, side_ratios in sides]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=(*CASES, "all"), default="all")
    parser.add_argument("--epochs", type=int, help="passed to both runs (default: each recipe's own)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here")
    parser.add_argument("--weights-dir", type=pathlib.Path,
                        help="also run the instance model with this ImageNet weights folder (../shared/weights)")
    args = parser.parse_args()
    print(machine_summary(), flush=True)
    epochs = "recipe default epochs" if args.epochs is None else f"{args.epochs} epochs"
    results = {}
    for case in CASES if args.case == "all" else (args.case,):
        if case == "membrane" and not (MEMBRANE / "images").is_dir():
            print(f"membrane skipped: {MEMBRANE}/images is absent", flush=True)
            continue
        results[case] = measure(case, args.epochs, args.weights_dir)
        floor = (f"components under {MIN_PIXELS[case]} px dropped in truth and baseline"
                 if MIN_PIXELS[case] else "no size floor")
        print_table(f"{case}: {epochs}, {results[case]['baseline']['images']} validation images, "
                    f"4-connected components, {floor}, each component scored 1.0 (no confidence to rank by)",
                    ["side", *SCORES, "train+export wall s", "mask_map50 ratio", "wall ratio"],
                    table_rows(results[case]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
