"""Calling an export as TF Serving would: encoded bytes in, the signature's answers out.

Every task's evaluate and predict go through these, so they measure the
artifact that will be deployed, decoding and all.

Example:
    >>> version_dir, metadata, loaded = load_export("saved_models/classify/1")
    >>> run_signature(loaded, ["cat.jpg"])["class_name"]
"""

import io
import pathlib

import numpy as np

from imgpipe.data.images import UnreadableImage
from imgpipe.errors import DataError

BATCH_SIZE = 32


def read_image_bytes(path):
    """The file's bytes, as a client would send them: the served graph itself judges what they hold."""
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as error:
        raise UnreadableImage(f"{path}: cannot read file ({error.strerror})") from None


def answer_status(answer):
    """An answer's `status` as text: "ok", or why the export did not answer (an export without one: "ok")."""
    status = answer.get("status", b"ok")
    return status.decode() if isinstance(status, bytes) else str(status)


def run_signature(loaded, paths, batch_size=BATCH_SIZE):
    """Sends files through `serving_default` in batches; returns one {output: np.ndarray} per file.

    Per file, because that is how callers use them (and an older export padded
    answers at the image's own size to the largest image of their batch). A
    file the export refused has its reason in `status` (see `answer_status`).

    Example:
        >>> run_signature(loaded, ["cat.jpg", "dog.png"])[1]["class_name"]
        b'dog'
    """
    import tensorflow as tf

    serve = loaded.signatures["serving_default"]
    answers = []
    for start in range(0, len(paths), batch_size):
        chunk = [read_image_bytes(path) for path in paths[start:start + batch_size]]
        try:
            answer = serve(image_bytes=tf.constant(chunk))
        except tf.errors.InvalidArgumentError as error:
            raise DataError(f"{paths[start]}..: the model could not decode this batch "
                            f"({str(error).splitlines()[0][:200]})") from None
        answers += per_image(current_names({key: value.numpy() for key, value in answer.items()}))
    return answers


# Outputs renamed since: binary outputs end in `_bytes`, so TF Serving's REST API sends them base64-encoded.
RENAMED_OUTPUTS = {"image_png": "image_png_bytes", "mask_png": "mask_png_bytes"}


def current_names(answer):
    """An answer of an older export with today's output names."""
    return {RENAMED_OUTPUTS.get(key, key): value for key, value in answer.items()}


def per_image(batched):
    """{key: array [B, ...]} -> B dicts {key: array [...]}: one answer per image.

    Example:
        >>> per_image({"score": np.array([0.9, 0.2])})
        [{'score': 0.9}, {'score': 0.2}]
    """
    count = len(next(iter(batched.values()))) if batched else 0
    return [{key: np.asarray(value)[index] for key, value in batched.items()} for index in range(count)]


OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def write_produced_images(loaded, paths, out, label):
    """For tasks that answer with images: writes each file's `image_png_bytes` answer, one request per file.

    `out` is a folder (files become `<stem>_<label>.png`) or, for a single input, an image file.
    A file the export refused gets {"file", "status"} and nothing written.
    """
    import tensorflow as tf

    if out is None:
        raise DataError("predict: this model answers with images; give --out FOLDER (or --out FILE.png for one)")
    out = pathlib.Path(out)
    to_file = out.suffix.lower() in OUTPUT_SUFFIXES
    if to_file and len(paths) != 1:
        raise DataError(f"{out}: an output file takes exactly one input image; give a folder for {len(paths)}")
    serve = loaded.signatures["serving_default"]
    results = []
    for path in paths:
        answer = per_image(current_names({key: value.numpy() for key, value in
                                          serve(image_bytes=tf.constant([read_image_bytes(path)])).items()}))[0]
        if answer_status(answer) != "ok":
            results.append({"file": str(path), "status": answer_status(answer)})
            continue
        target = out if to_file else out / f"{pathlib.Path(path).stem}_{label}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        png = answer["image_png_bytes"]
        if target.suffix.lower() == ".png":
            target.write_bytes(png)
        else:
            from PIL import Image

            Image.open(io.BytesIO(png)).save(target)
        results.append({"file": str(path), label: str(target), "height": int(answer["height"]),
                        "width": int(answer["width"])})
    return results
