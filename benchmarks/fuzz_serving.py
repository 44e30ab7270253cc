"""Thousands of mutated real images through the serving decode: crashes, hangs, memory, answers.

What it measures
    `tests.serving_fuzz` builds one real file per format and variant (JPEG
    baseline / progressive with EXIF / grey, PNG RGB / RGBA with eXIf /
    palette, animated GIF, BMP, WebP lossy / lossless with alpha and EXIF) and
    mutates each 1 to 3 times (truncation, flipped bytes, forged width and
    height, zero or 0xFF chunk lengths, wrong magic, repeated or cut runs,
    plain garbage, bytes appended or prepended). Each chunk of cases is decoded
    by a child process with a time limit, through both serving decodes (resized
    for a model, and at the original size for stylize / colorize), in batches of 16.

    It prints the count of each status, the chunks that crashed or ran over
    their limit (none expected), the answers that were neither ok nor a
    consistent refusal, the largest peak RSS of a child, and the wall time.

How to run (from the repository root)
    .venv/bin/python benchmarks/fuzz_serving.py                   # 4000 cases, a few minutes on 2 cores
    .venv/bin/python benchmarks/fuzz_serving.py --cases 500 --seed 3
"""

import argparse
import collections
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine_summary, print_table  # noqa: E402
from tests.serving_fuzz import decode_in_child, mutants, seed_images  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4000)
    parser.add_argument("--chunk", type=int, default=800, help="cases per child process")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a child may take")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(machine_summary())
    print("$", " ".join([sys.executable] + sys.argv))
    cases = mutants(seed_images(), args.cases, args.seed)
    counts, by_kind, problems, failures, peaks = collections.Counter(), collections.Counter(), [], [], []
    started = time.perf_counter()
    for start in range(0, len(cases), args.chunk):
        chunk = cases[start:start + args.chunk]
        try:
            report = decode_in_child(chunk, args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            failures.append(f"cases {start}..{start + len(chunk) - 1}: {str(error)[:300]}")
            continue
        counts.update(report["counts"])
        problems += report["problems"]
        peaks.append(report["peak_rss_mib"])
        for (label, _), status in zip(chunk, report["statuses"]):
            by_kind[(label.split("/")[1].split("+")[0], status)] += 1
        print(f"  {start + len(chunk)} of {len(cases)} cases, {time.perf_counter() - started:.0f} s", flush=True)
    wall = time.perf_counter() - started
    print_table(f"fuzzing the serving decode: {len(cases)} cases (seed {args.seed})", ["status", "cases"],
                sorted(counts.items(), key=lambda item: -item[1]))
    print_table("first mutation x status", ["mutation", "status", "cases"],
                [[kind, status, count] for (kind, status), count in sorted(by_kind.items())])
    print_table("outcome", ["measure", "value"], [
        ["children crashed or over the time limit", len(failures)],
        ["inconsistent answers", len(problems)],
        ["largest child peak RSS MiB", max(peaks) if peaks else 0],
        ["cases/s (both decodes, child start-up included)", len(cases) / wall],
        ["wall s", wall],
    ])
    for line in failures + problems[:20]:
        print(" ", line)
    if failures or problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
