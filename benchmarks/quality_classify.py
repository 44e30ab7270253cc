"""Does imgpipe's default classification recipe beat the plain Keras MNIST convnet?

What it measures
    For each small, real data set, the validation accuracy and training time of
    two contenders trained on the *identical* train/validation split:

    - imgpipe, given nothing but the data:
          imgpipe run classify --data DIR --output RUN --export-dir EXPORTS --set train.verbose=2 --weights none
      (default recipe from scratch: strided_cnn, auto image size, augmentation, AdamW + cosine
      schedule, label smoothing, early stopping on val_accuracy). Accuracy and
      seconds are read from RUN/metrics.json (`val_accuracy`, `train_seconds`,
      which covers `model.fit` only).
    - Keras' "simple MNIST convnet" example
      (https://keras.io/examples/vision/mnist_convnet/): Conv2D(32,3,relu) -
      MaxPool(2) - Conv2D(64,3,relu) - MaxPool(2) - Flatten - Dropout(0.5) -
      Dense(softmax), Adam, categorical cross-entropy, batch 128, 15 epochs,
      on 28x28 RGB inputs scaled to 0..1. Its validation accuracy is that of
      the final epoch, as in the example; its seconds are those of `model.fit`.
      The example's own `validation_split=0.1` is not used: it trains on all of
      train/ and is scored on val/, like imgpipe.

Data sets (written under WORKDIR/<name>/data/{train,val}/<class>/, split with
`imgpipe.data.split.stratified_split`, seed 1337, validation fraction 0.2)
    digits   scikit-learn's bundled `load_digits`: 1797 real 8x8 handwritten
             digits, 10 classes, saved as 8x8 greyscale PNGs (0..16 -> 0..255).
             Needs scikit-learn, which is not an imgpipe dependency; install it
             for the benchmark with `.venv/bin/pip install scikit-learn`.
    raccoon  two classes from the Pascal VOC raccoon set in ../shared/data/raccoon
             (images/*.jpg + annotations/*.xml): "raccoon" = every annotated box,
             cropped; "background" = as many random crops from the same photos,
             each drawn with the size of a raccoon box and overlapping no box by
             IoU > 0.1 (a size that fits nowhere is shrunk by 15% steps until it
             does). Both classes are resized to 64x64 PNGs. Skipped with a
             message when the folder is absent.

How to run (from the repository root; takes several minutes on 2 CPU cores)
    .venv/bin/python benchmarks/quality_classify.py
    .venv/bin/python benchmarks/quality_classify.py --datasets digits --workdir /tmp/quality

Everything under WORKDIR/<name>/ is rebuilt on each run. The script prints one
table row per data set and writes the same numbers to WORKDIR/results.json.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from imgpipe.data.split import stratified_split

SEED = 1337
VAL_FRACTION = 0.2
KERAS_SIZE = 28
KERAS_BATCH_SIZE = 128
KERAS_EPOCHS = 15
RACCOON_CROP_SIZE = 64
BACKGROUND_MAX_IOU = 0.1
PLACEMENT_TRIES = 200
SHRINK_FACTOR = 0.85
DEFAULT_RACCOON_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "raccoon"


# === Data sets ===

def write_split(root, items, labels, class_names):
    """Writes `items` (list of (file stem, PIL image)) into root/{train,val}/<class>/<stem>.png.

    Returns (number of training images, number of validation images).
    """
    labels = np.asarray(labels)
    train_index, val_index = stratified_split(labels, VAL_FRACTION, seed=SEED)
    for split, indices in (("train", train_index), ("val", val_index)):
        for name in class_names:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for index in indices:
            stem, image = items[index]
            image.save(root / split / class_names[labels[index]] / f"{stem}.png")
    return len(train_index), len(val_index)


def build_digits(root):
    """scikit-learn's 8x8 digits as class folders; returns (train count, val count, class names)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("digits needs scikit-learn: .venv/bin/pip install scikit-learn (benchmark only)")
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    class_names = [str(label) for label in sorted(set(digits.target.tolist()))]
    items = [(f"digit_{index:04d}", Image.fromarray(image, mode="L")) for index, image in enumerate(pixels)]
    train_count, val_count = write_split(root, items, digits.target, class_names)
    return train_count, val_count, class_names


def read_voc_boxes(annotation_path):
    """(image file name, [(xmin, ymin, xmax, ymax), ...]) of one Pascal VOC annotation."""
    try:
        from defusedxml.ElementTree import parse
    except ImportError:
        from xml.etree.ElementTree import parse  # a trusted, local benchmark file
    tree = parse(annotation_path).getroot()
    boxes = []
    for obj in tree.iter("object"):
        box = obj.find("bndbox")
        boxes.append(tuple(int(float(box.find(key).text)) for key in ("xmin", "ymin", "xmax", "ymax")))
    return tree.findtext("filename"), boxes


def box_area(box):
    return (box[2] - box[0]) * (box[3] - box[1])


def iou(a, b):
    """Intersection over union of two (xmin, ymin, xmax, ymax) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / (box_area(a) + box_area(b) - inter)


def place_background(photos, width, height, rng):
    """A random (photo index, box) of size width x height overlapping no raccoon by IoU > 0.1, or None."""
    fitting = [i for i, (image, _) in enumerate(photos) if image.width >= width and image.height >= height]
    if not fitting:
        return None
    for _ in range(PLACEMENT_TRIES):
        index = fitting[rng.integers(len(fitting))]
        image, boxes = photos[index]
        left = int(rng.integers(image.width - width + 1))
        top = int(rng.integers(image.height - height + 1))
        crop = (left, top, left + width, top + height)
        if all(iou(crop, box) <= BACKGROUND_MAX_IOU for box in boxes):
            return index, crop
    return None


def build_raccoon(root, source):
    """Raccoon box crops vs. background crops; returns (train count, val count, class names)."""
    rng = np.random.default_rng(SEED)
    size = (RACCOON_CROP_SIZE, RACCOON_CROP_SIZE)
    photos, items, labels = [], [], []
    for annotation in sorted((source / "annotations").glob("*.xml")):
        file_name, boxes = read_voc_boxes(annotation)
        image = Image.open(source / "images" / file_name).convert("RGB")
        boxes = [(max(0, x0), max(0, y0), min(image.width, x1), min(image.height, y1)) for x0, y0, x1, y1 in boxes]
        boxes = [box for box in boxes if box[2] > box[0] and box[3] > box[1]]
        photos.append((image, boxes))
        for number, box in enumerate(boxes):
            items.append((f"{annotation.stem}_{number}", image.crop(box).resize(size, Image.Resampling.BICUBIC)))
            labels.append(1)
    raccoon_boxes = [box for _, boxes in photos for box in boxes]
    shrunk = 0
    for number, order in enumerate(rng.permutation(len(raccoon_boxes))):
        box = raccoon_boxes[order]
        width, height = box[2] - box[0], box[3] - box[1]
        placed = place_background(photos, width, height, rng)
        while placed is None:
            shrunk += 1
            width, height = max(1, int(width * SHRINK_FACTOR)), max(1, int(height * SHRINK_FACTOR))
            placed = place_background(photos, width, height, rng)
        index, crop = placed
        items.append((f"background_{number:04d}", photos[index][0].crop(crop).resize(size, Image.Resampling.BICUBIC)))
        labels.append(0)
    print(f"raccoon: {labels.count(1)} box crops, {labels.count(0)} background crops "
          f"({shrunk} shrink steps needed to place large box sizes)")
    train_count, val_count = write_split(root, items, labels, ["background", "raccoon"])
    return train_count, val_count, ["background", "raccoon"]


# === Contenders ===

def run_imgpipe(data_dir, work):
    """Trains imgpipe's default classify recipe on `data_dir`; returns its metrics.json plus wall seconds."""
    run_dir, export_dir = work / "imgpipe_run", work / "saved_models"
    command = [str(pathlib.Path(sys.executable).parent / "imgpipe"), "run", "classify", "--data", str(data_dir),
               "--output", str(run_dir), "--export-dir", str(export_dir), "--set", "train.verbose=2",
               "--weights", "none"]  # the from-scratch default; ImageNet weights would pick mobilenet_v2 from 64 px
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    with open(work / "imgpipe.log", "w") as log:
        process = subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            log.write(line)
            print("  [imgpipe]", line, end="", flush=True)
        status = process.wait()
    if status != 0:
        sys.exit(f"imgpipe failed with exit status {status}; full output in {work / 'imgpipe.log'}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["wall_seconds"] = round(time.perf_counter() - started, 2)
    return metrics


def load_folder(split_dir, class_names):
    """Images under split_dir/<class>/ as (float32 [N, 28, 28, 3] in 0..1, int labels [N])."""
    images, labels = [], []
    for label, name in enumerate(class_names):
        for path in sorted((split_dir / name).iterdir()):
            with Image.open(path) as image:
                resized = image.convert("RGB").resize((KERAS_SIZE, KERAS_SIZE), Image.Resampling.BILINEAR)
            images.append(np.asarray(resized, dtype=np.float32) / 255.0)
            labels.append(label)
    return np.stack(images), np.array(labels)


def run_keras_convnet(data_dir, class_names, epochs=KERAS_EPOCHS, callbacks=()):
    """Trains the Keras MNIST convnet example on data_dir/train, scores it on data_dir/val."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(SEED)
    x_train, y_train = load_folder(data_dir / "train", class_names)
    x_val, y_val = load_folder(data_dir / "val", class_names)
    num_classes = len(class_names)
    y_train = keras.utils.to_categorical(y_train, num_classes)
    y_val = keras.utils.to_categorical(y_val, num_classes)
    model = keras.Sequential([
        keras.Input(shape=(KERAS_SIZE, KERAS_SIZE, 3)),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    started = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=KERAS_BATCH_SIZE, epochs=epochs,
                        validation_data=(x_val, y_val), callbacks=list(callbacks), verbose=2)
    seconds = time.perf_counter() - started
    _, accuracy = model.evaluate(x_val, y_val, verbose=0)
    return {"val_accuracy": float(accuracy), "train_seconds": round(seconds, 2),
            "best_epoch_val_accuracy": float(max(history.history["val_accuracy"]))}


# === Report ===

COLUMNS = [("dataset", "<8", ""), ("#train", ">6", ""), ("#val", ">5", ""), ("#classes", ">8", ""),
           ("imgpipe val_acc", ">15", ".4f"), ("imgpipe s", ">9", ".1f"), ("keras val_acc", ">13", ".4f"),
           ("keras s", ">7", ".1f"), ("difference", ">10", "+.4f")]


def print_table(rows):
    """The results table; difference = imgpipe val_accuracy - keras convnet val_accuracy."""
    header = "  ".join(f"{title:{align}}" for title, align, _ in COLUMNS)
    print(header)
    print("-" * len(header))
    for row in rows:
        values = [row["dataset"], row["train"], row["val"], row["classes"], row["imgpipe"]["val_accuracy"],
                  row["imgpipe"]["train_seconds"], row["keras"]["val_accuracy"], row["keras"]["train_seconds"],
                  row["imgpipe"]["val_accuracy"] - row["keras"]["val_accuracy"]]
        print("  ".join(f"{format(value, spec):{align}}" for (_, align, spec), value in zip(COLUMNS, values)))
    print("\nimgpipe s = train_seconds from metrics.json (model.fit only); keras s = model.fit of the convnet.")
    for row in rows:
        imgpipe, keras_result = row["imgpipe"], row["keras"]
        print(f"{row['dataset']}: imgpipe {imgpipe['epochs_run']} epochs, {imgpipe['wall_seconds']:.1f} s wall "
              f"for the whole command; keras best-epoch val_accuracy {keras_result['best_epoch_val_accuracy']:.4f} "
              f"(imgpipe's early stopping restores its best epoch)")


BUILDERS = {"digits": build_digits, "raccoon": build_raccoon}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,raccoon", help="comma-separated: digits, raccoon")
    parser.add_argument("--workdir", type=pathlib.Path,
                        default=pathlib.Path(tempfile.gettempdir()) / "imgpipe_quality_classify")
    parser.add_argument("--raccoon-dir", type=pathlib.Path, default=DEFAULT_RACCOON_DIR,
                        help="Pascal VOC raccoon folder with images/ and annotations/")
    args = parser.parse_args()
    names = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = sorted(set(names) - set(BUILDERS))
    if unknown:
        parser.error(f"unknown data set(s) {', '.join(unknown)}; choose from {', '.join(BUILDERS)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    rows = []
    for name in names:
        if name == "raccoon" and not (args.raccoon_dir / "annotations").is_dir():
            print(f"raccoon: skipped, {args.raccoon_dir} not found")
            continue
        work = args.workdir.resolve() / name
        shutil.rmtree(work, ignore_errors=True)
        data_dir = work / "data"
        builder_args = (data_dir, args.raccoon_dir) if name == "raccoon" else (data_dir,)
        train_count, val_count, class_names = BUILDERS[name](*builder_args)
        print(f"\n=== {name}: {train_count} train / {val_count} val images, {len(class_names)} classes in {data_dir}")
        imgpipe_result = run_imgpipe(data_dir, work)
        print(f"--- {name}: Keras MNIST convnet", flush=True)
        keras_result = run_keras_convnet(data_dir, class_names)
        rows.append({"dataset": name, "train": train_count, "val": val_count, "classes": len(class_names),
                     "imgpipe": imgpipe_result, "keras": keras_result})

    if not rows:
        sys.exit("no data set was run")
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "results.json").write_text(json.dumps(rows, indent=2, sort_keys=True))
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
