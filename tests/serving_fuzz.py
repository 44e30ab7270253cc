"""Hostile bytes for the serving decode: real images of every format, mutated, decoded in a child process.

A signature call cannot be interrupted from Python, so the decodes run in a
child (`python -m tests.serving_fuzz CASES OUT`) that the parent gives a time
limit; the child writes each case's status and its own peak memory. Used by
`tests/engine/test_serving_fuzz.py` (a few hundred cases) and
`benchmarks/fuzz_serving.py` (thousands).

Example:
    >>> cases = mutants(seed_images(), count=300, seed=0)
    >>> report = decode_in_child(cases, timeout=300)
    >>> report["problems"], report["counts"]["ok"] >= 10
    ([], True)
"""

import io
import json
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

MAX_PIXELS = 25_000_000
BATCH = 16
SIZE = [32, 32]
REPO = pathlib.Path(__file__).resolve().parents[1]


def _encoded(image, format, **options):
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def seed_images():
    """{name: bytes}: one real file of each format and variant the decoder handles (48 x 40 pixels)."""
    rng = np.random.default_rng(0)
    pixels = np.kron(rng.integers(0, 256, (6, 5, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    picture = Image.fromarray(pixels)
    rgba = Image.fromarray(np.dstack([pixels, rng.integers(0, 256, pixels.shape[:2]).astype(np.uint8)]), "RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.new("RGB", (48, 40), colour) for colour in ("red", "green")]
    return {
        "jpeg": _encoded(picture, "JPEG", quality=90),
        "jpeg_progressive_exif": _encoded(picture, "JPEG", progressive=True, exif=exif.tobytes()),
        "jpeg_grey": _encoded(picture.convert("L"), "JPEG"),
        "png": _encoded(picture, "PNG"),
        "png_rgba_exif": _encoded(rgba, "PNG", exif=exif.tobytes()),
        "png_palette": _encoded(picture.quantize(16), "PNG"),
        "gif_animated": _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "bmp": _encoded(picture, "BMP"),
        "webp_lossy": _encoded(picture, "WEBP", quality=80),
        "webp_lossless_alpha_exif": _encoded(rgba, "WEBP", lossless=True, exif=exif.tobytes()),
    }


def _size_offsets(data):
    """Byte offsets where `data`'s header stores its width and height (the fields a forger edits)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return [16, 20]
    if data[:3] == b"GIF":
        return [6, 8]
    if data[:2] == b"BM":
        return [18, 22]
    if data[:4] == b"RIFF":
        return [24, 27, 26, 28]
    if data[:2] == b"\xff\xd8":
        sof = next((i for i in range(2, len(data) - 9) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2)), 2)
        return [sof + 5, sof + 7]
    return [0]


def _chunk_length_offsets(data):
    """Offsets of the length fields of PNG chunks, JPEG segments or RIFF chunks in `data`."""
    offsets = []
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        position = 8
        while position + 8 <= len(data):
            offsets.append(position)
            position += 12 + struct.unpack(">I", data[position:position + 4])[0]
    elif data[:2] == b"\xff\xd8":
        position = 2
        while position + 4 <= len(data) and data[position] == 0xFF and data[position + 1] != 0xDA:
            offsets.append(position + 2)
            position += 2 + struct.unpack(">H", data[position + 2:position + 4])[0]
    elif data[:4] == b"RIFF":
        offsets = [4, 16]
    return offsets or [0]


def _mutate(data, rng):
    """One mutation of `data`: (kind, bytes)."""
    data = bytearray(data)
    kind = rng.choice(["truncate", "flip", "forge_size", "zero_length", "wrong_magic", "splice", "garbage", "stack"])
    if kind == "truncate":
        data = data[:int(rng.integers(0, len(data)))]
    elif kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
    elif kind == "forge_size":
        offset = int(rng.choice(_size_offsets(bytes(data))))
        value = rng.choice([0, 0xFF, 0xFFFF, 0x7FFF, int(rng.integers(0, 2**16)), 0xFFFFFFFF])
        data[offset:offset + 4] = int(value).to_bytes(4, "big")[-len(data[offset:offset + 4]):]
    elif kind == "zero_length":
        offset = int(rng.choice(_chunk_length_offsets(bytes(data))))
        width = 4 if data[:2] != b"\xff\xd8" else 2
        data[offset:offset + width] = bytes(width) if rng.random() < 0.5 else b"\xff" * width
    elif kind == "wrong_magic":
        data[int(rng.integers(0, min(4, len(data))))] ^= int(rng.integers(1, 256))  # a file may be shorter
    elif kind == "splice":
        start, length = int(rng.integers(0, len(data))), int(rng.integers(1, 64))
        data = data[:start] + data[start:start + length] * int(rng.integers(0, 4)) + data[start + length:]
    elif kind == "garbage":
        data = bytearray(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes())
    else:  # a valid file with another format's bytes appended or prepended
        data = data + bytes(rng.integers(0, 256, 300, dtype=np.uint8)) if rng.random() < 0.5 else b"\x00" + data
    return kind, bytes(data)


def mutants(seeds, count, seed):
    """`count` (label, bytes) cases: mutations of the seed files, one to three stacked, plus each seed as is."""
    rng = np.random.default_rng(seed)
    names = sorted(seeds)
    cases = [(f"{name}/original", seeds[name]) for name in names]
    while len(cases) < count:
        name = names[int(rng.integers(0, len(names)))]
        data, kinds = seeds[name], []
        for _ in range(int(rng.integers(1, 4))):
            kind, data = _mutate(data, rng) if data else ("empty", data)
            kinds.append(kind)
        cases.append((f"{name}/{'+'.join(kinds)}", data))
    return cases


def decode_in_child(cases, timeout):
    """Decodes `cases` in a child process, in batches of `BATCH`; raises if it crashes or runs over `timeout` s.

    Returns:
        {"statuses": [status string per case, both paths agreeing], "counts": {status: n},
         "peak_rss_mib": child's peak RSS, "problems": [descriptions of wrong answers]}.
    """
    with tempfile.TemporaryDirectory() as folder:
        cases_file, out_file = pathlib.Path(folder, "cases.pkl"), pathlib.Path(folder, "out.json")
        cases_file.write_bytes(pickle.dumps(cases))
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        child = subprocess.run([sys.executable, "-m", "tests.serving_fuzz", str(cases_file), str(out_file)],
                               env=environment, capture_output=True, text=True, timeout=timeout)
        if child.returncode != 0:
            raise RuntimeError(f"the decoding child died with {child.returncode}: {child.stderr[-2000:]}")
        return json.loads(out_file.read_text())


def _decode_all(cases):
    """In the child: every case through the resized path and the original-size path; checks every answer."""
    import tensorflow as tf

    from imgpipe.engine.serving import decode_checked, images_at_original_size, status_strings

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def resized(image_bytes):
        batch = decode_checked(image_bytes, MAX_PIXELS, SIZE)
        return batch.images, batch.sizes, status_strings(batch.status, MAX_PIXELS)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def original(image_bytes):
        return images_at_original_size(image_bytes, lambda image: tf.cast(image, tf.float32), MAX_PIXELS)

    statuses, problems = [], []
    for start in range(0, len(cases), BATCH):
        batch = cases[start:start + BATCH]
        encoded = tf.constant([data for _, data in batch])
        images, sizes, status = (value.numpy() for value in resized(encoded))
        at_size = {key: value.numpy() for key, value in original(encoded).items()}
        for index, (label, _) in enumerate(batch):
            reason = status[index].decode()
            statuses.append(reason)
            if reason != at_size["status"][index].decode():
                problems.append(f"{label}: {reason} resized, {at_size['status'][index].decode()} at full size")
            answered = reason == "ok"
            if answered != (sizes[index].min() > 0) or (not answered and images[index].any()):
                problems.append(f"{label}: {reason} with size {sizes[index].tolist()}")
            if answered != bool(at_size["image_png_bytes"][index]):
                problems.append(f"{label}: {reason} but PNG of {len(at_size['image_png_bytes'][index])} bytes")
    counts = {reason: statuses.count(reason) for reason in sorted(set(statuses))}
    return {"statuses": statuses, "counts": counts, "peak_rss_mib": peak_rss_mib(), "problems": problems}


def peak_rss_mib():
    """This process's own peak RSS (VmHWM). Not `ru_maxrss`: Linux carries that across exec, so a child
    started from a 3 GB pytest worker reports the worker's 3 GB."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    cases_path, out_path = sys.argv[1:3]
    report = _decode_all(pickle.loads(pathlib.Path(cases_path).read_bytes()))
    pathlib.Path(out_path).write_text(json.dumps(report))
