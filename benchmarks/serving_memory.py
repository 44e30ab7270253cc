"""Worst-case memory of one served image: the extra peak RSS of a request at the pixel budget.

What it measures
    For each case, a fresh child process loads a classify export (`--export`,
    or one trained for one epoch at 64x64 by `serving_latency.train_and_export`),
    answers one small PNG (warm-up: the graph, thread pools), resets its peak RSS
    (Linux's VmHWM, by writing 5 to /proc/self/clear_refs, so the peak of loading
    the model is left out), answers the case's single image and reads the peak
    again. The difference is what one image at that size costs the server. Cases:
    a JPEG, an RGB PNG and an RGBA PNG of 5000 x 5000 (exactly `export.max_pixels`,
    25,000,000, so accepted), and a 20000 x 20000 grey PNG (refused from its header).

How to run (from the repository root)
    .venv/bin/python benchmarks/serving_memory.py             # about 2 minutes on 2 cores
"""

import argparse
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine_summary, print_table  # noqa: E402

CHILD = """
import json, sys, time
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
small = open(sys.argv[2], "rb").read()
serve(image_bytes=tf.constant([small]))["status"].numpy()
def status_mib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
data = open(sys.argv[3], "rb").read()
# Linux resets the peak (VmHWM) to the current RSS on "5": the peak of loading the model is not the image's.
with open("/proc/self/clear_refs", "w") as clear_refs:
    clear_refs.write("5")
before = status_mib("VmHWM")
started = time.perf_counter()
status = serve(image_bytes=tf.constant([data]))["status"].numpy()[0].decode()
seconds = time.perf_counter() - started
print(json.dumps({"status": status, "extra_mib": status_mib("VmHWM") - before, "seconds": seconds}))
"""


def cases(folder):
    """{name: path} of the images measured, written into `folder`."""
    from tests.engine.test_serving import grey_png

    rng = np.random.default_rng(0)
    photo = np.kron(rng.integers(0, 256, (100, 100, 3)), np.ones((50, 50, 1))).astype(np.uint8)
    alpha = np.full((5000, 5000, 1), 200, np.uint8)
    written = {}
    for name, image, format in (("JPEG 5000x5000", Image.fromarray(photo), "JPEG"),
                                ("PNG RGB 5000x5000", Image.fromarray(photo), "PNG"),
                                ("PNG RGBA 5000x5000", Image.fromarray(np.concatenate([photo, alpha], 2)), "PNG")):
        buffer = io.BytesIO()
        image.save(buffer, format)
        written[name] = buffer.getvalue()
    written["PNG grey 20000x20000"] = grey_png(20000, 20000)
    buffer = io.BytesIO()
    Image.fromarray(photo[:64, :64]).save(buffer, "PNG")
    written["small PNG (warm-up)"] = buffer.getvalue()
    paths = {}
    for index, (name, data) in enumerate(written.items()):
        paths[name] = pathlib.Path(folder, f"case_{index}.bin")
        paths[name].write_bytes(data)
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=pathlib.Path)
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/bench/serving_memory"))
    args = parser.parse_args()
    print(machine_summary())
    print("$", " ".join([sys.executable] + sys.argv))
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.export is None:
        from serving_latency import train_and_export

        args.export = train_and_export(args.workdir.resolve(), 64, 16, "small_cnn")[1]
    paths = cases(args.workdir)
    small = paths.pop("small PNG (warm-up)")
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    rows = []
    for name, path in paths.items():
        child = subprocess.run([sys.executable, "-c", CHILD, str(args.export), str(small), str(path)],
                               capture_output=True, text=True, env=environment, timeout=600)
        if child.returncode != 0:
            rows.append([name, path.stat().st_size // 1024, f"child failed: {child.stderr[-200:]}", "", ""])
            continue
        result = json.loads(child.stdout.strip().splitlines()[-1])
        rows.append([name, path.stat().st_size // 1024, result["status"], result["extra_mib"],
                     result["seconds"] * 1000])
    print_table(f"one image through serving_default ({args.export})",
                ["image", "file KiB", "status", "extra peak RSS MiB", "ms"], rows)


if __name__ == "__main__":
    main()
