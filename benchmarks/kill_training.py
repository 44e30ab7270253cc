"""`imgpipe run` killed with SIGKILL at random moments, then finished as a user would: does it survive?

What it measures
    A tiny classification run (2 x 16 photos at 32 px, 3 epochs, robustness card
    and export on; `tests.kill_points.TINY`) is first timed uninterrupted. Then
    KILLS times: a fresh run is started and killed after a moment drawn
    uniformly from that duration (so the kills spread over start-up and data
    reading, the epochs and their checkpoints, the robustness card and the
    export), then finished with `imgpipe run --resume` (or the same command
    again if it died before recording its recipe). After each it checks that
    history.csv holds every requested epoch, metrics.json and a complete export
    exist, no version folder is half-written and the data folder is
    byte-identical (`KillCase.problems`).

    It prints how many kills were survived, where the kills landed, how each run
    was finished, the epochs trained twice (logged, killed before their backup),
    export staging folders left behind, and the wall time.

How to run (from the repository root)
    .venv/bin/python benchmarks/kill_training.py                  # 50 kills, about 21 minutes on 2 cores
    .venv/bin/python benchmarks/kill_training.py --kills 5 --seed 1
"""

import argparse
import collections
import pathlib
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine_summary, print_table  # noqa: E402
from tests import corpus  # noqa: E402
from tests.kill_points import KillCase, folder_digest  # noqa: E402

EPOCHS = 3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/bench/kill_training"))
    args = parser.parse_args()
    print(machine_summary())
    print("$", " ".join([sys.executable] + sys.argv))
    shutil.rmtree(args.workdir, ignore_errors=True)
    data = corpus.photo_class_folder(args.workdir / "images", per_class=16)
    digest = folder_digest(data)

    started = time.perf_counter()
    reference = KillCase(data, args.workdir / "reference", EPOCHS)
    assert reference.kill_after(3600) == "finished"
    duration = time.perf_counter() - started
    print(f"an uninterrupted run takes {duration:.1f} s; killing at {args.kills} moments in [0, {duration:.1f}] s")

    rng = np.random.default_rng(args.seed)
    phases, finishes, failures, retrained, leftovers = (collections.Counter(), collections.Counter(), [],
                                                        collections.Counter(), 0)
    for number, moment in enumerate(sorted(rng.uniform(0, duration, args.kills))):
        case = KillCase(data, args.workdir / f"kill_{number}", EPOCHS)
        phase = case.kill_after(moment)
        phases[phase] += 1
        try:
            finishes[case.finish()] += 1
            found = case.problems(digest)
        except Exception as error:  # noqa: BLE001 - a failed finish is this benchmark's finding, reported below
            found = [f"finishing failed: {str(error)[-400:]}"]
        for epoch in case.retrained_epochs():
            retrained[epoch] += 1
        leftovers += len(list(case.models.glob("*/.export-*")))
        if found:
            failures.append(f"kill {number} at {moment:.2f} s ({phase}): {'; '.join(found)}")
        print(f"  kill {number} at {moment:5.2f} s in {phase}: {case.finished_by}, "
              f"{'ok' if not found else 'FAILED'}", flush=True)
        shutil.rmtree(case.run_dir.parent, ignore_errors=True)
    wall = time.perf_counter() - started
    print_table("where the kills landed", ["phase", "kills"], sorted(phases.items()))
    print_table("how each was finished", ["finished by", "runs"], sorted(finishes.items()))
    print_table(f"SIGKILL at {args.kills} random moments (seed {args.seed})", ["measure", "value"], [
        ["survived (whole run after finishing, nothing half-written, data identical)",
         f"{args.kills - len(failures)} of {args.kills}"],
        ["epochs trained twice (logged, then killed before their backup)", sum(retrained.values())],
        ["export staging folders left behind (not versions; TF Serving ignores them)", leftovers],
        ["uninterrupted run s", duration],
        ["wall s", wall],
    ])
    for line in failures:
        print(" ", line)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
