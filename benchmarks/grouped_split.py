"""What keeping duplicates on one side of the split changes in the figures a user sees.

What it measures
    For each case, two runs of the default recipe that differ only in
    `data.split_groups` (`none`: the plain seeded, stratified split; `duplicates`:
    the same split with each group of exact or near-duplicate images moved to
    one side): the validation metric, the validation size, the images moved, and
    the duplicate groups that still straddle the split (`imgpipe check`'s
    "leaking" count on the split each run trained on).

    classify  raccoon box crops vs background crops (`quality_classify.build_raccoon`),
              written as one flat class folder so that imgpipe draws the split. Crops of
              the raccoon set's duplicate photos are duplicates too.
    detect    `../shared/data/raccoon` as it is (no split given), from scratch (no weights
              folder), as in README "Measured".

How to run (from the repository root; about 35 minutes on 2 CPU cores, mostly detect)
    .venv/bin/python benchmarks/grouped_split.py
    .venv/bin/python benchmarks/grouped_split.py --cases classify --workdir /tmp/grouped
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from common import machine_summary, print_table  # noqa: E402
from quality_classify import DEFAULT_RACCOON_DIR, build_raccoon  # noqa: E402

MAIN_METRIC = {"classify": "val_accuracy", "detect": "val_map50"}


def flat_crops(work, source):
    """The raccoon crops as one `<class>/` folder with no split of its own."""
    built = work / "crops_split"
    shutil.rmtree(built, ignore_errors=True)
    build_raccoon(built, source)
    flat = work / "crops"
    shutil.rmtree(flat, ignore_errors=True)
    for path in built.glob("*/*/*.png"):
        target = flat / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return flat


def leaking_groups(task, data, split_groups):
    """Duplicate groups across the split the run draws, as `imgpipe check` reports them."""
    from imgpipe.understand.check import check_data

    report = check_data(str(data), task, [f"data.split_groups={split_groups}"])
    return len(report.leaking), len(report.duplicates)


def run(task, data, split_groups, work):
    run_dir = work / f"{task}_{split_groups}"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [str(pathlib.Path(sys.executable).parent / "imgpipe"), "run", task, "--data", str(data),
               "--output", str(run_dir), "--export-dir", str(work / "saved_models"),
               "--set", f"data.split_groups={split_groups}", "--set", "train.verbose=2"]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    with open(work / f"{task}_{split_groups}.log", "w") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ}).returncode
    if status != 0:
        sys.exit(f"imgpipe failed with exit status {status}; output in {work / f'{task}_{split_groups}.log'}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    moved = (metrics.get("split_groups") or {}).get("images_moved", 0)
    leaking, groups = leaking_groups(task, data, split_groups)
    return [task, split_groups, round(metrics[MAIN_METRIC[task]], 4), metrics["images_validation"], moved,
            f"{leaking} of {groups}", round(time.perf_counter() - started)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="classify,detect", help="comma-separated: classify, detect")
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/imgpipe_grouped_split"))
    parser.add_argument("--raccoon-dir", type=pathlib.Path, default=DEFAULT_RACCOON_DIR)
    args = parser.parse_args()
    os.environ.pop("IMGPIPE_WEIGHTS_DIR", None)
    os.environ["IMGPIPE_OFFLINE"] = "1"
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(machine_summary())
    rows = []
    common_rows = []
    for task in args.cases.split(","):
        data = flat_crops(args.workdir, args.raccoon_dir) if task == "classify" else args.raccoon_dir
        for split_groups in ("none", "duplicates"):
            rows.append(run(task, data, split_groups, args.workdir))
            print(rows[-1], flush=True)
        common_rows += scored_on_common_images(task, args.workdir)
    print_table("grouped split (data.split_groups), default recipe, only --data",
                ["task", "split_groups", "metric", "validation images", "moved", "groups leaking", "wall s"], rows)
    print_table("each run's model on the validation images both runs held out (split effect vs training variance)",
                ["task", "model trained with", "metric", "images"], common_rows)


def scored_on_common_images(task, work):
    """Each of the two runs' best model scored on the validation images both runs held out: the two runs'
    own figures differ by their validation sets *and* by their training; on common images only the
    training differs."""
    from imgpipe.engine.export.saved_model import export_metadata
    from imgpipe.engine.pipeline import FileDecoder, make_dataset
    from imgpipe.engine.run_folder import load_run
    from imgpipe.engine.scoring import model_answers

    runs = {name: load_run(work / f"{task}_{name}") for name in ("none", "duplicates")}
    splits = {name: run.task.read_data(run.recipe) for name, run in runs.items()}
    common = sorted(set(splits["none"].val.paths) & set(splits["duplicates"].val.paths))
    rows = []
    for name, run in runs.items():
        data = splits[name]
        keep = [index for index, path in enumerate(data.val.paths) if path in common]
        subset = type(data.val).from_files([data.val.paths[i] for i in keep], np.asarray(data.val.targets)[keep])
        decoder = FileDecoder(data.image_size, run.recipe.data.max_pixels, run.task.load_target(data),
                              run.task.target_signature(data))
        dataset, _ = make_dataset(subset, data.image_size, 8, training=False, cache="none", decoder=decoder)
        metadata = export_metadata(run.task, data, run.recipe)
        answers, truths = model_answers(run.task, run.model, dataset, metadata)
        score = run.task.score(answers, truths, metadata)[MAIN_METRIC[task].removeprefix("val_")]
        rows.append([task, name, round(score, 4), len(common)])
    return rows


if __name__ == "__main__":
    main()
