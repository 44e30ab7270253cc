"""LiteRT, ONNX and OpenVINO: converting a Keras model to a file, and running that file in its own runtime.

Each format converts with Keras 3's own `model.export(format=...)`:
ONNX through tf2onnx, OpenVINO through its converter, LiteRT through the TF
Lite converter. LiteRT is restricted to the built-in ops: Keras adds the Flex
(SELECT_TF_OPS) set, which converts but cannot run, since TF 2.20 and later
ship no Flex delegate. Every file takes float32 images [N, H, W, 3], RGB,
0..255, at the model's size (the network rescales inside), and returns the
Keras model's raw output; `contract.py` says what a caller does around it.

A runtime model calls like a Keras model (`runtime(images, training=False)`,
numpy out), so a task's `answers` scores the file exactly as it scores the
Keras model.

Example:
    >>> path = convert(model, "onnx", "float32", folder)
    >>> probabilities = load_runtime("onnx", path)(images)
"""

import dataclasses
import importlib.util
import pathlib

import numpy as np

from imgpipe.errors import ExportError

QUANTIZATIONS = ("float32", "float16", "int8")


@dataclasses.dataclass(frozen=True)
class Format:
    """One deployment format: its file, the packages it needs and the extra that installs them."""

    name: str
    packages: tuple
    extra: str
    quantizations: tuple = ("float32",)

    def file_name(self, quantization):
        if self.name == "onnx":
            return "model.onnx"
        if self.name == "openvino":
            return "openvino/model.xml"
        return f"model_{quantization}.tflite"


FORMATS = {
    "litert": Format("litert", ("ai_edge_litert",), "litert", QUANTIZATIONS),
    "onnx": Format("onnx", ("tf2onnx", "onnx", "onnxruntime"), "onnx"),
    "openvino": Format("openvino", ("openvino",), "openvino"),
}


SAVED_MODEL = "saved_model"
ALL_FORMATS = (SAVED_MODEL, *FORMATS)


def expand_formats(names):
    """The formats a user named (`all` is every one), checked and in a fixed order.

    Example:
        >>> expand_formats(["onnx", "saved_model"])
        ['saved_model', 'onnx']
    """
    names = set(ALL_FORMATS if "all" in names else names)
    unknown = sorted(names - set(ALL_FORMATS))
    if unknown:
        raise ExportError(f"--format {unknown[0]}: unknown format; choose from {', '.join(ALL_FORMATS)} or all")
    return [name for name in ALL_FORMATS if name in names]


def require_runtime(name):
    """Raises `ExportError` naming the package to install when a format's converter or runtime is missing."""
    missing = [package for package in FORMATS[name].packages if importlib.util.find_spec(package) is None]
    if missing:
        raise ExportError(f"--format {name} needs {', '.join(missing)}: pip install 'imgpipe[{FORMATS[name].extra}]'")


def convert(model, name, quantization, folder, calibration_images=None):
    """Writes `model` as format `name` into `folder`; returns the file's path.

    Args:
        model: a built Keras model taking float32 [N, H, W, 3].
        name: 'litert', 'onnx' or 'openvino'.
        quantization: 'float32'; LiteRT also 'float16' (weights) or 'int8' (full integer, float32 in and out).
        folder: where the file goes (a staging folder: the caller renames it into place).
        calibration_images: float32 [N, H, W, 3] training images; int8 only.

    Raises:
        ExportError: the conversion failed; the message names the format and the converter's reason.
    """
    require_runtime(name)
    fmt = FORMATS[name]
    if quantization not in fmt.quantizations:
        raise ExportError(f"--quantize {quantization}: {name} exports float32 only; "
                          f"{', '.join(q for q in QUANTIZATIONS if q != 'float32')} are LiteRT's")
    if model.dtype_policy.name != "float32":
        raise ExportError(f"{name}: the model computes in {model.dtype_policy.name}; formats need float32 weights")
    path = pathlib.Path(folder) / fmt.file_name(quantization)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.export(str(path), format=name, verbose=False, **_converter_options(name, quantization,
                                                                                 calibration_images))
    except Exception as error:  # converters raise many types; the first line names the op or layer
        raise ExportError(f"{name}: conversion failed ({_first_line(error)})") from None
    if not path.is_file():
        raise ExportError(f"{name}: the converter wrote no {path.name}")
    return path


def _converter_options(name, quantization, calibration_images):
    if name != "litert":
        return {}
    import tensorflow as tf

    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    if quantization == "float16":
        return {"optimizations": [tf.lite.Optimize.DEFAULT],
                "target_spec": {"supported_ops": [builtins], "supported_types": [tf.float16]}}
    if quantization == "int8":
        if calibration_images is None or not len(calibration_images):
            raise ExportError("litert int8: no training images to calibrate on")

        def representative_dataset():
            for image in calibration_images:
                yield [image[None].astype(np.float32)]

        return {"optimizations": [tf.lite.Optimize.DEFAULT], "representative_dataset": representative_dataset,
                "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]}}
    return {"target_spec": {"supported_ops": [builtins]}}


def _first_line(error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if " op " in line or "layer" in line.lower() or "Op" in line]
    return (named or lines or [type(error).__name__])[0][:300]


def file_size(path):
    """Bytes on disk of an exported file (OpenVINO's .xml and its .bin together)."""
    path = pathlib.Path(path)
    weights = path.with_suffix(".bin")
    return path.stat().st_size + (weights.stat().st_size if path.suffix == ".xml" and weights.is_file() else 0)


def load_runtime(name, path):
    """The file at `path` loaded in format `name`'s own runtime, callable like the Keras model."""
    require_runtime(name)
    return {"onnx": OnnxRuntimeModel, "litert": LiteRTModel, "openvino": OpenVINOModel}[name](pathlib.Path(path))


class OnnxRuntimeModel:
    """An .onnx file in onnxruntime's CPU provider."""

    def __init__(self, path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, images, training=False):
        return self.session.run([self.output_name], {self.input_name: np.asarray(images, np.float32)})[0]


class LiteRTModel:
    """A .tflite file in LiteRT's interpreter (ai-edge-litert), its batch size set to each call's."""

    def __init__(self, path):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path))
        self.input = self.interpreter.get_input_details()[0]
        output = self.interpreter.get_output_details()[0]
        self.output_index, self.output_name = output["index"], output["name"]
        self.input_name = self.input["name"]
        self._batch = None

    def __call__(self, images, training=False):
        images = np.asarray(images, np.float32)
        if images.shape[0] != self._batch:
            self.interpreter.resize_tensor_input(self.input["index"], list(images.shape))
            self.interpreter.allocate_tensors()
            self._batch = images.shape[0]
        self.interpreter.set_tensor(self.input["index"], images)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index).copy()


class OpenVINOModel:
    """An OpenVINO IR (.xml + .bin) compiled for the CPU at float32.

    OpenVINO's CPU plugin computes in bfloat16 by default on CPUs with
    avx512_bf16 or AMX (this machine's EPYC has it); the proof pins float32
    so that a difference means the conversion, not the precision hint.
    """

    def __init__(self, path):
        import openvino

        self.compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.input_name = self.compiled.inputs[0].any_name
        self.output_name = next(iter(self.compiled.outputs[0].names), None)
        self._request = self.compiled.create_infer_request()

    def __call__(self, images, training=False):
        return np.array(self._request.infer([np.asarray(images, np.float32)])[0])
