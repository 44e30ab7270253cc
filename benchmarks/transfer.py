"""Transfer learning on real photos: imgpipe's default against TensorFlow's transfer-learning tutorial.

    crops of raccoons and of background from ../shared/data/raccoon, split by photo (train/ + val/)
    -> imgpipe run classify --data DIR, with IMGPIPE_WEIGHTS_DIR=../shared/weights (as a user types it)
    -> the tutorial's recipe written by hand: MobileNetV2 at 160 px, frozen base + pooling + dropout +
       dense for 10 epochs at Adam 1e-4, then the layers from 100 on at RMSprop 1e-5 for 10 more,
       flip and rotation augmentation (tensorflow.org/tutorials/images/transfer_learning)
    -> validation accuracy (final and best) and wall time from the command's start (each run its own
       process, as a user types it), per seed, then median and range

    --case digits: the small-image check of `model.name: auto`. scikit-learn's 8x8 digits
    (benchmarks/quality_classify.py's split) with the weights folder set, once as a user types
    it (auto keeps the from-scratch model, strided_cnn, below 64 px) and once forcing `--model mobilenet_v2`
    (the pretrained backbone at the same auto size): whether the threshold keeps the better model.

Both read the same folder and the same ImageNet MobileNetV2 weights file. The
crops of one photo all land on one side of the split, so the validation
figure is not inflated by near-identical crops; the raccoon set itself holds
a few near-duplicate photos (`imgpipe check` finds 4 groups), which can still
straddle it.

Usage:
    .venv/bin/python benchmarks/transfer.py [--seeds 1337 1338 1339] [--only imgpipe|tutorial]
    .venv/bin/python benchmarks/transfer.py --case digits [--seeds 1337]   # needs scikit-learn
"""

import argparse
import csv
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import RACCOON_IMAGES, machine_summary  # noqa: E402

WEIGHTS = RACCOON_IMAGES.parents[2] / "weights"
WORK = pathlib.Path(os.environ.get("BENCH_WORK", "/tmp/imgpipe_bench/transfer"))
TUTORIAL_SIZE = 160


def raccoon_crops(root, seed=0, val_fraction=0.2):
    """root/{train,val}/{raccoon,background}/*.jpg: each box (10 % margin) and a box-free patch of its size."""
    from defusedxml import ElementTree
    from PIL import Image

    root = pathlib.Path(root)
    if (root / "train").is_dir():
        return root
    rng = np.random.default_rng(seed)
    annotations = sorted((RACCOON_IMAGES.parent / "annotations").glob("*.xml"))
    val_photos = set(rng.permutation(len(annotations))[: int(len(annotations) * val_fraction)].tolist())
    for index, xml in enumerate(annotations):
        tree = ElementTree.parse(xml)
        image = Image.open(RACCOON_IMAGES / tree.findtext("filename")).convert("RGB")
        boxes = [[int(float(obj.findtext(f"bndbox/{key}"))) for key in ("xmin", "ymin", "xmax", "ymax")]
                 for obj in tree.findall("object")]
        split = "val" if index in val_photos else "train"
        for number, (x0, y0, x1, y1) in enumerate(boxes):
            margin_x, margin_y = (x1 - x0) // 10, (y1 - y0) // 10
            crop = (max(0, x0 - margin_x), max(0, y0 - margin_y), min(image.width, x1 + margin_x),
                    min(image.height, y1 + margin_y))
            _save(image.crop(crop), root / split / "raccoon" / f"{xml.stem}_{number}.jpg")
            patch = _background_patch(image.size, boxes, (crop[2] - crop[0], crop[3] - crop[1]), rng)
            if patch is not None:
                _save(image.crop(patch), root / split / "background" / f"{xml.stem}_{number}.jpg")
    return root


def _save(image, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=92)


def _background_patch(image_size, boxes, size, rng, attempts=50, smallest=48):
    """A window that overlaps no box: the crop's size if one fits, else smaller (down to `smallest`), or None.

    Raccoons fill most of many photos, so the background windows are often smaller than the crops;
    both are resized to the model's input, so size alone does not give the class away.
    """
    width, height = image_size
    for scale in (1.0, 0.7, 0.5, 0.35, 0.25):
        patch_w, patch_h = min(int(size[0] * scale), width), min(int(size[1] * scale), height)
        if min(patch_w, patch_h) < smallest:
            return None
        for _ in range(attempts):
            x, y = int(rng.integers(0, width - patch_w + 1)), int(rng.integers(0, height - patch_h + 1))
            if all(x + patch_w <= b[0] or x >= b[2] or y + patch_h <= b[1] or y >= b[3] for b in boxes):
                return x, y, x + patch_w, y + patch_h
    return None


def run_imgpipe(data, seed, label="imgpipe", extra=()):
    """`imgpipe run classify --data DIR` with the weights folder set, timed from the command's start."""
    out = WORK / f"{label}_{seed}"
    env = {**os.environ, "IMGPIPE_WEIGHTS_DIR": str(WEIGHTS), "IMGPIPE_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "imgpipe", "run", "classify", "--data", str(data), "--output", str(out),
               "--export-dir", str(WORK / "saved_models"), "--set", f"data.seed={seed}", "--set", "train.verbose=2",
               *extra]
    started = time.perf_counter()
    with open(WORK / f"{label}_{seed}.log", "w") as log:
        status = subprocess.call(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if status != 0:
        sys.exit(f"imgpipe failed (exit {status}); see {WORK / f'{label}_{seed}.log'}")
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "history.csv") as rows:
        history = [float(row["val_accuracy"]) for row in csv.DictReader(rows)]
    return {"final": metrics["val_accuracy"], "best": max(history), "wall": wall, "model": metrics["model"],
            "epochs": metrics["epochs_run"]}


def run_tutorial(data, seed):
    """The tutorial as a user runs a script: its own process, timed from the command's start like imgpipe's.

    Until 2026-12-07 it ran inside this process, whose first seed alone paid for importing
    TensorFlow; the later seeds' walls left out the 3 to 4 s that imgpipe's always include.
    """
    command = [sys.executable, __file__, "--tutorial-process", str(data), str(seed)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.perf_counter()
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        sys.exit(f"the tutorial failed (exit {finished.returncode}):\n{finished.stderr[-2000:]}")
    return {**json.loads(finished.stdout.strip().splitlines()[-1]), "wall": wall}


def tutorial(data, seed):
    """TensorFlow's transfer-learning tutorial, as written there, on the same folder and weights file."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    load = dict(image_size=(TUTORIAL_SIZE, TUTORIAL_SIZE), batch_size=32, seed=seed)
    train = keras.utils.image_dataset_from_directory(data / "train", shuffle=True, **load).prefetch(tf.data.AUTOTUNE)
    val = keras.utils.image_dataset_from_directory(data / "val", shuffle=False, **load).prefetch(tf.data.AUTOTUNE)
    augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.2)])
    base = keras.applications.MobileNetV2(input_shape=(TUTORIAL_SIZE, TUTORIAL_SIZE, 3), include_top=False,
                                          weights=None)
    base.load_weights(WEIGHTS / "mobilenet_v2_imagenet_notop.weights.h5")
    base.trainable = False
    inputs = keras.Input((TUTORIAL_SIZE, TUTORIAL_SIZE, 3))
    x = keras.applications.mobilenet_v2.preprocess_input(augmentation(inputs))
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")])
    first = model.fit(train, epochs=10, validation_data=val, verbose=0)
    base.trainable = True
    for layer in base.layers[:100]:
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.RMSprop(1e-5), loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")])
    second = model.fit(train, epochs=20, initial_epoch=10, validation_data=val, verbose=0)
    accuracies = first.history["val_accuracy"] + second.history["val_accuracy"]
    return {"final": accuracies[-1], "best": max(accuracies), "model": "mobilenet_v2 (tutorial)",
            "epochs": len(accuracies)}


def summary(results):
    finals, walls = [r["final"] for r in results], [r["wall"] for r in results]
    return (f"{statistics.median(finals):.3f} [{min(finals):.3f}-{max(finals):.3f}]",
            f"{statistics.median(walls):.0f} s [{min(walls):.0f}-{max(walls):.0f}]", statistics.median(finals),
            statistics.median(walls))


def digits_folder(root):
    """root/{train,val}/<digit>/*.png: benchmarks/quality_classify.py's seeded 80/20 split of the 8x8 digits."""
    from benchmarks.quality_classify import build_digits

    if not (root / "train").is_dir():
        build_digits(root)
    return root


def main():
    if sys.argv[1:2] == ["--tutorial-process"]:  # run_tutorial's child: one seed, its result as a JSON line
        print(json.dumps(tutorial(pathlib.Path(sys.argv[2]), int(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["raccoon", "digits"], default="raccoon")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339])
    parser.add_argument("--only", choices=["imgpipe", "tutorial", "forced_mobilenet_v2"])
    args = parser.parse_args()
    if not (WEIGHTS / "mobilenet_v2_imagenet_notop.weights.h5").is_file():
        sys.exit(f"benchmark needs {WEIGHTS}/mobilenet_v2_imagenet_notop.weights.h5")
    WORK.mkdir(parents=True, exist_ok=True)
    if args.case == "digits":
        data = digits_folder(WORK / "digits")
        cases = {"imgpipe": lambda folder, seed: run_imgpipe(folder, seed, "digits_auto"),
                 "forced_mobilenet_v2": lambda folder, seed: run_imgpipe(folder, seed, "digits_mobilenet_v2",
                                                                         ("--model", "mobilenet_v2"))}
    else:
        data = raccoon_crops(WORK / "crops")
        cases = {"imgpipe": run_imgpipe, "tutorial": run_tutorial}
    counts = {split: sum(1 for _ in (data / split).rglob("*.*")) for split in ("train", "val")}
    print(machine_summary())
    print(f"data: {data} {counts}")
    results = {}
    for name, run in cases.items():
        if args.only and name != args.only:
            continue
        results[name] = []
        for seed in args.seeds:
            result = run(data, seed)
            results[name].append(result)
            print(f"{name:<9} seed {seed}: final {result['final']:.3f} best {result['best']:.3f} "
                  f"wall {result['wall']:.0f} s ({result['model']}, {result['epochs']} epochs)", flush=True)
    print(f"\n{'case':<20} {'val accuracy (median [range])':<30} {'wall (median [range])':<24}")
    rows = {name: summary(found) for name, found in results.items()}
    for name, (accuracy, wall, _, _) in rows.items():
        print(f"{name:<20} {accuracy:<30} {wall:<24}")
    if len(rows) == 2:
        (first, a), (second, b) = rows.items()
        print(f"{first} / {second}: accuracy {a[2] / b[2]:.3f}x, wall {a[3] / b[3]:.2f}x")


if __name__ == "__main__":
    main()
