"""ONNX classifiers: reading and checking an ONNX file, its labels, and the input spec that
says how it wants its pixels.

The input spec is what the model's authors trained with: how the image is brought to size
(short side to R then the centre S x S, or stretched to S x S), the channel order, scale,
per-channel mean and std, the layout, and whether the output is logits (softmax applied and
said) or probabilities. Celery does the resize and crop (common.images.Fit), so the wire
stays uint8; the rest runs inside the compiled model (OpenVINO's pre-processing,
serving/runtimes/openvino.py) or, for ONNX Runtime, in numpy before the session
(model_input here). Imports onnx, neither OpenVINO nor TensorFlow.
"""

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.images import Fit
from serving.inference import ModelLoadError, read_labels, sha256_of


class OnnxRefused(ModelLoadError):
    """The ONNX file cannot be served as a classifier; the text says why and what to do."""


@dataclass(frozen=True)
class InputSpec:
    layout: str  # the model input's: NCHW or NHWC
    channels: str  # RGB or BGR
    resize: str  # "crop": short side to resize_to, then the centre size x size; "stretch"
    # The short side before the centre crop; None: crop_fraction of size.
    resize_to: int | None
    crop_fraction: float
    # input = (pixel * scale - mean) / std, per channel in the model's channel order.
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output: str  # "logits" (softmax applied) or "probabilities"
    size: int | None = None  # the model's input side; None until read from the model

    def model_input(self, batch: np.ndarray) -> np.ndarray:
        """The float32 tensor the model takes, from uint8 (N, S, S, 3) RGB images: what
        OpenVINO's pre-processing does inside the compiled model, for ONNX Runtime."""
        x = np.asarray(batch, dtype=np.float32)
        if self.channels == "BGR":
            x = x[..., ::-1]
        x = (x * np.float32(self.scale) - np.asarray(self.mean, np.float32)) / np.asarray(
            self.std, np.float32
        )
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)

    @property
    def fit(self) -> Fit:
        if self.resize == "stretch":
            return Fit(stretch=True)
        return Fit(resize_to=self.resize_to)

    def as_dict(self) -> dict:
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "crop_fraction"
        }


# ImageNet's mean and std of RGB in 0..1, as torchvision and the ONNX model zoo use them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = {
    # torchvision, timm and the ONNX model zoo: short side 256, centre 224.
    "imagenet": InputSpec(
        layout="NCHW",
        channels="RGB",
        resize="crop",
        resize_to=None,
        crop_fraction=224 / 256,
        scale=1 / 255,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output="logits",
    ),
    # Keras' ResNet50 (today's built-in): BGR with the ImageNet channel means subtracted.
    "caffe": InputSpec(
        layout="NHWC",
        channels="BGR",
        resize="crop",
        resize_to=None,
        crop_fraction=1.0,
        scale=1.0,
        mean=(103.939, 116.779, 123.68),
        std=(1.0, 1.0, 1.0),
        output="probabilities",
    ),
    # 0..255 RGB as decoded: a model that does its own rescaling.
    "raw": InputSpec(
        layout="NHWC",
        channels="RGB",
        resize="crop",
        resize_to=None,
        crop_fraction=1.0,
        scale=1.0,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        output="probabilities",
    ),
}


def three_floats(text: str) -> tuple[float, float, float]:
    values = tuple(float(part) for part in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: give three comma-separated numbers")
    return values


def add_input_spec_arguments(parser) -> None:
    """The input spec's options, for export_model and `models register`."""
    parser.add_argument(
        "--input-preset",
        choices=sorted(PRESETS),
        default=None,
        help="how the model wants its pixels (required with --onnx); each field below "
        "overrides the preset's",
    )
    parser.add_argument(
        "--layout", choices=("NCHW", "NHWC"), help="the input tensor's axes: channels first or last"
    )
    parser.add_argument(
        "--channels", choices=("RGB", "BGR"), help="the order of the colour channels"
    )
    parser.add_argument(
        "--resize",
        choices=("crop", "stretch"),
        help="crop: short side to --resize-to, then the centre square; stretch: to S x S",
    )
    parser.add_argument("--resize-to", type=int, metavar="R", help="short side before the crop")
    parser.add_argument("--scale", type=float, help="pixels (0..255) are multiplied by this")
    parser.add_argument("--mean", type=three_floats, help="per channel, after --scale: a,b,c")
    parser.add_argument("--std", type=three_floats, help="per channel: a,b,c")
    parser.add_argument(
        "--output-kind",
        choices=("logits", "probabilities"),
        dest="output_kind",
        help="what the model outputs: logits get a softmax before the top-k",
    )


def spec_from_options(options: dict) -> InputSpec:
    """The preset with the options given on the command line applied."""
    preset = options.get("input_preset")
    if preset is None:
        raise OnnxRefused(
            f"an ONNX model needs --input-preset ({', '.join(sorted(PRESETS))}): how it "
            f"wants its pixels"
        )
    if preset not in PRESETS:
        raise OnnxRefused(f"unknown input preset {preset!r}: use one of {', '.join(PRESETS)}")
    overrides = {
        field: options[option]
        for field, option in (
            ("layout", "layout"),
            ("channels", "channels"),
            ("resize", "resize"),
            ("resize_to", "resize_to"),
            ("scale", "scale"),
            ("mean", "mean"),
            ("std", "std"),
            ("output", "output_kind"),
        )
        if options.get(option) is not None
    }
    if any(value == 0 for value in overrides.get("std", ())):
        raise OnnxRefused("--std must not hold a 0")
    return dataclasses.replace(PRESETS[preset], **overrides)


@dataclass(frozen=True)
class OnnxModel:
    path: Path
    sha256: str
    spec: InputSpec  # with its size and resize_to known
    input_name: str
    input_shape: list[int]  # -1 for a dynamic dimension
    output_name: str
    labels: list[str]
    labels_source: str

    def source(self) -> dict:
        """Where a package of it came from, for its manifest."""
        return {
            "weights": str(self.path),
            "onnx": str(self.path),
            "onnx_sha256": self.sha256,
            "labels": self.labels_source,
        }

    def describe(self) -> dict:
        """The input spec with the model's real input and output, as the manifest and the
        registry keep it."""
        return {
            **self.spec.as_dict(),
            "dtype": "float32",
            "model_input": {"name": self.input_name, "datatype": "FP32", "shape": self.input_shape},
            "model_output": {
                "name": self.output_name,
                "datatype": "FP32",
                "shape": [-1, len(self.labels)],
            },
        }


def dims(value_info) -> list[int | None]:
    shape = value_info.type.tensor_type.shape
    return [dim.dim_value if dim.HasField("dim_value") else None for dim in shape.dim]


def read_onnx(
    path: str | Path, *, spec: InputSpec, input_size: int | None = None, labels_file: str = ""
) -> OnnxModel:
    """The ONNX file checked as an image classifier this spec can feed; OnnxRefused naming
    the problem otherwise."""
    import onnx

    path = Path(path).resolve()
    if not path.is_file():
        raise OnnxRefused(f"no such file: {path}")
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except Exception as error:  # onnx raises protobuf's DecodeError, ValidationError, ...
        raise OnnxRefused(f"{path} is not a valid ONNX model: {error}") from None
    graph = model.graph
    weights = {initializer.name for initializer in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs) or "none"
        raise OnnxRefused(
            f"{path.name} takes {len(inputs)} inputs ({names}); a served classifier takes "
            f"exactly one image input"
        )
    (image,) = inputs
    if image.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(image.type.tensor_type.elem_type)
        raise OnnxRefused(f"input {image.name!r} is {kind}; a served classifier takes FLOAT")
    shape = dims(image)
    if len(shape) != 4:
        raise OnnxRefused(
            f"input {image.name!r} has rank {len(shape)} ({shape}); an image classifier's "
            f"input has rank 4 (NCHW or NHWC)"
        )
    channel, spatial = (1, (2, 3)) if spec.layout == "NCHW" else (3, (1, 2))
    if shape[channel] != 3:
        other = "NHWC" if spec.layout == "NCHW" else "NCHW"
        hint = f" (its layout looks like {other}: --layout {other})" if 3 in shape else ""
        raise OnnxRefused(
            f"input {image.name!r} has shape {shape}: as {spec.layout} it does not have 3 "
            f"channels{hint}"
        )
    height, width = (shape[axis] for axis in spatial)
    if height is None or width is None:
        if input_size is None:
            raise OnnxRefused(
                f"input {image.name!r} has a dynamic spatial size ({shape}): give the side "
                f"it is served at with --input-size"
            )
        size = input_size
    else:
        if height != width:
            raise OnnxRefused(f"input {image.name!r} is {height}x{width}; only square inputs")
        if input_size is not None and input_size != height:
            raise OnnxRefused(
                f"input {image.name!r} is fixed at {height}x{width}; --input-size "
                f"{input_size} does not fit it"
            )
        size = height
    resize_to = spec.resize_to or round(size / spec.crop_fraction)
    if spec.resize == "crop" and resize_to < size:
        raise OnnxRefused(f"--resize-to {resize_to} is smaller than the input size {size}")
    spec = dataclasses.replace(spec, size=size, resize_to=resize_to)
    real_shape = [-1] + [size if axis in spatial else 3 for axis in (1, 2, 3)]

    if not graph.output:
        raise OnnxRefused(f"{path.name} has no output")
    output = graph.output[0]
    out_shape = dims(output)
    if len(out_shape) != 2 or not out_shape[1]:
        raise OnnxRefused(
            f"output {output.name!r} has shape {out_shape}; a classifier outputs (N, classes)"
        )
    classes = out_shape[1]
    labels, source = model_labels(model, classes, labels_file)
    return OnnxModel(
        path=path,
        sha256=sha256_of(path),
        spec=spec,
        input_name=image.name,
        input_shape=real_shape,
        output_name=output.name,
        labels=labels,
        labels_source=source,
    )


def model_labels(model, classes: int, labels_file: str) -> tuple[list[str], str]:
    """(labels, where they came from): the labels file, else a metadata entry of the ONNX
    file holding one label per line, else class_0..class_N-1."""
    if labels_file:
        labels = read_labels(labels_file)
        if len(labels) != classes:
            raise OnnxRefused(
                f"the model outputs {classes} classes but {labels_file} has {len(labels)} labels"
            )
        return labels, f"file {Path(labels_file).resolve()}"
    for entry in model.metadata_props:
        lines = [line.split(",")[0].strip() for line in entry.value.splitlines()]
        if len(lines) == classes and all(lines):
            return lines, f"onnx metadata {entry.key!r}"
    return [f"class_{index}" for index in range(classes)], f"generated class_0..class_{classes - 1}"


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def spec_from_dict(values: dict) -> InputSpec:
    """The InputSpec a manifest records (as_dict)."""
    fields = {field.name for field in dataclasses.fields(InputSpec)}
    known = {key: value for key, value in values.items() if key in fields}
    known["mean"], known["std"] = tuple(known["mean"]), tuple(known["std"])
    return InputSpec(**{"crop_fraction": 1.0, **known})
