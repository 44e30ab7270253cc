"""One loaded export called from many threads at once, with hostile requests mixed in.

What it measures
    A classify export (small_cnn at 224x224, one epoch on raccoon JPEGs, or
    `--export PATH`) is loaded once with `tf.saved_model.load`. The requests
    are the raccoon photos (154 to 2000 pixels a side) in batches of 1 to 4,
    and one request in ten is hostile: a 20000 x 20000 PNG of 389 KB, a
    truncated JPEG, a file with a broken checksum, or text. First every
    distinct request is answered once on one thread; then THREADS threads each
    send REQUESTS requests, chosen at random, to the same signature.

    It prints: whether every answer under load equals its single-threaded answer
    (class names, statuses, probabilities within 1e-5), requests and images per
    second, p50 / p99 latency per request, and the process's peak RSS before and
    after the load (sampled every 50 ms), against the single-threaded baseline.

How to run (from the repository root)
    .venv/bin/python benchmarks/serving_load.py                      # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/serving_load.py --threads 4 --requests 20 --quick
"""

import argparse
import concurrent.futures
import os
import pathlib
import sys
import threading
import time

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import RACCOON_IMAGES, machine_summary, print_table  # noqa: E402
from serving_latency import train_and_export  # noqa: E402
from tests.engine.test_serving import broken_crc, grey_png  # noqa: E402


def hostile_requests(photo):
    """Requests no server should fall over on, each next to a good photo."""
    png = tf.io.encode_png(tf.zeros([40, 40, 3], tf.uint8)).numpy()
    return [[grey_png(20000, 20000), photo], [photo[: len(photo) // 3]], [broken_crc(png), photo],
            [b"GET / HTTP/1.1\r\n\r\n"]]


def requests_from(photos, rng, count):
    """`count` batches of 1 to 4 photos."""
    return [[photos[int(i)] for i in rng.integers(0, len(photos), int(rng.integers(1, 5)))] for _ in range(count)]


def answer_of(serve, request):
    answer = serve(image_bytes=tf.constant(request))
    return {key: answer[key].numpy() for key in ("class_name", "status", "probabilities")}


def same(left, right):
    return (left["class_name"].tolist() == right["class_name"].tolist()
            and left["status"].tolist() == right["status"].tolist()
            and np.allclose(left["probabilities"], right["probabilities"], atol=1e-5))


class RssSampler:
    """Peak resident memory of this process, read from /proc every 50 ms while running."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_mib())
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def current_rss_mib():
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200, help="requests per thread")
    parser.add_argument("--export", type=pathlib.Path, help="an export to load instead of training one")
    parser.add_argument("--quick", action="store_true", help="64x64 model")
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/bench/serving_load"))
    args = parser.parse_args()
    print(machine_summary())
    print("$", " ".join([sys.executable] + sys.argv))
    export = args.export or train_and_export(args.workdir.resolve(), 64 if args.quick else 224, 32, "small_cnn")[1]
    serve = tf.saved_model.load(str(export)).signatures["serving_default"]
    photos = [path.read_bytes() for path in sorted(RACCOON_IMAGES.glob("*.jpg"))[:60]]
    rng = np.random.default_rng(0)
    distinct = requests_from(photos, rng, 40) + hostile_requests(photos[0])
    hostile = set(range(40, len(distinct)))

    with RssSampler() as alone_memory:
        started = time.perf_counter()
        expected = [answer_of(serve, request) for request in distinct]
        single_seconds = time.perf_counter() - started
    print(f"single thread: {len(distinct)} distinct requests in {single_seconds:.1f} s")

    plan = [[int(i) if rng.random() > 0.1 else int(rng.choice(sorted(hostile)))
             for i in rng.integers(0, 40, args.requests)] for _ in range(args.threads)]
    latencies, mismatches = [], []

    def client(picks):
        for pick in picks:
            began = time.perf_counter()
            answer = answer_of(serve, distinct[pick])
            latencies.append((time.perf_counter() - began) * 1000)
            if not same(answer, expected[pick]):
                mismatches.append(pick)

    with RssSampler() as load_memory:
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(client, plan))
        wall = time.perf_counter() - started
    total = args.threads * args.requests
    images = sum(len(distinct[pick]) for picks in plan for pick in picks)
    refused = sum(sum(status != b"ok" for status in expected[pick]["status"]) for picks in plan for pick in picks)
    print_table(f"serving under load: {args.threads} threads x {args.requests} requests, one export", ["measure", "value"], [
        ["answers equal to the single-threaded ones", f"{total - len(mismatches)} of {total}"],
        ["images (of which refused, hostile)", f"{images} ({refused})"],
        ["requests/s", total / wall],
        ["images/s", images / wall],
        ["p50 ms per request", float(np.percentile(latencies, 50))],
        ["p99 ms per request", float(np.percentile(latencies, 99))],
        ["peak RSS MiB, single thread", alone_memory.peak],
        ["peak RSS MiB, under load", load_memory.peak],
        ["ratio of peaks", f"{load_memory.peak / alone_memory.peak:.2f}x"],
        ["wall s", wall],
    ])
    if mismatches:
        sys.exit(f"{len(mismatches)} answers under load differed from the single-threaded ones")


if __name__ == "__main__":
    main()
