"""The contract beside a LiteRT, ONNX or OpenVINO file: how to feed it and read it without imgpipe's code.

The SavedModel decodes bytes, turns images upright, checks the pixel budget
and answers in the user's terms; a float-input file does none of that. The
contract says what the caller must do instead, the input's size, layout,
channel order and scaling, what the raw output means and how it becomes an
answer, so a C++ or JavaScript caller can feed it as training did.

Example:
    >>> contract = format_contract(task, metadata, "onnx", "float32", "model.onnx", "keras_tensor", proof)
    >>> contract["input"]["shape"]
    [-1, 224, 224, 3]
"""

from imgpipe.engine.export.calibrated import METADATA_KEY, TTA_KEY
from imgpipe.engine.pipeline import DCT_SCALES

RESIZE_RULE = (
    "JPEG: decode at the largest DCT scale (1/2, 1/4, 1/8; libjpeg's scale_denom, Pillow's draft) that keeps "
    "both sides at least the model's size, with the accurate integer IDCT. Then resize to the model's size: "
    "area averaging where a side shrinks by more than 2x, otherwise bilinear (half-pixel centres, no "
    "antialiasing), rounded to integers 0..255. The aspect ratio is not kept.")

TTA_INSIDE = {
    "none": "no: the output is one pass of the network",
    "flip": "yes: the output is already the mean of the image's and its mirror's probabilities (the mirror's "
            "map mirrored back); send the image once",
    "flip+scales": "yes: the output is already the mean over the image and its mirror, each as it is and zoomed "
                   "0.83x (border reflected) and 1.17x (centre crop) within the input size, maps taken back to the "
                   "image's geometry; send the image once",
}


def caller_steps(max_pixels):
    """What the SavedModel's `serving_default` does that a caller of a float-input file must do itself."""
    return [
        f"refuse images whose header announces more than {max_pixels} pixels, before decoding",
        "decode the image to RGB: grey spread to three channels, alpha composited on white, the first frame of "
        "an animation",
        "turn it upright by its EXIF orientation (1 to 8)",
        "resize it to the model's input size (resize_rule)",
        "send float32 pixel values 0..255; the network rescales inside, so do not normalise",
    ]


def format_contract(task, metadata, format_name, quantization, file_name, input_name, proof,
                    calibration_images=0, output_name=None):
    """The contract.json entry of one exported file.

    Args:
        task: the run's task (its `raw_output_contract` says what the output means).
        metadata: the export metadata (task, class names, image size, max_pixels, the task's entries).
        format_name, quantization, file_name: what was written.
        input_name, output_name: the tensor names the file's runtime reports.
        proof: the file's `imgpipe.engine.export.proof.prove` result (the stated tolerance).
        calibration_images: how many training images calibrated an int8 file.
    """
    height, width = metadata["image_size"]
    return {
        "format": format_name,
        "file": file_name,
        "quantization": quantization,
        "task": metadata["task"],
        "class_names": metadata.get("class_names"),
        "input": {"name": input_name, "dtype": "float32", "shape": [-1, height, width, 3], "layout": "NHWC",
                  "channel_order": "RGB", "range": [0, 255], "scaling": "none (the network rescales inside)"},
        "resize_rule": RESIZE_RULE,
        "jpeg_dct_scales": list(DCT_SCALES),
        "caller_must": caller_steps(metadata["max_pixels"]),
        "output": {"name": output_name, **task.raw_output_contract(metadata)},
        "temperature_scaling": metadata.get(METADATA_KEY),
        "tta": metadata.get(TTA_KEY, "none"),
        "tta_inside": TTA_INSIDE[metadata.get(TTA_KEY, "none")],
        "task_metadata": {key: value for key, value in metadata.items()
                          if key not in ("task", "class_names", "image_size", "max_pixels", METADATA_KEY, TTA_KEY)},
        "calibration": ({"images": calibration_images, "split": "train", "method": "full-integer post-training "
                         "quantization; float32 input and output, quantized inside"}
                        if quantization == "int8" else None),
        "tolerance": {"max_abs_diff_vs_keras": proof["max_abs_diff"],
                      "on": "the run's validation images at the model's size, the same float32 input to both"},
    }
