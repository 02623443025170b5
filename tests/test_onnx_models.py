"""ONNX classifiers with their own input spec: a small conv classifier with known weights is
built here with the onnx package's helper API, exported to OpenVINO packages (the spec's
layout, channels, scale, mean, std and softmax inside the compiled model) and to an ONNX
Runtime package, gated against ONNX Runtime at int8, registered and served by its own
worker groups beside ResNet50, and every bad model or option is refused with nothing
registered."""

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from django.core.management import CommandError, call_command
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from common.images import Fit, prepare_for_model
from predictions.models import Job
from registry.models import ModelVersion
from serving.onnx import PRESETS, read_onnx, spec_from_options
from serving.package import load_package
from serving.runtimes.onnxruntime import runner as onnxruntime_runner
from tests.test_models_served import bridge, create_topics, register, start_worker  # noqa: F401
from tests.test_pipeline import wait_until_finished

# Seconds each (a real model exported, loaded or run, or processes started): make test
# runs them, make test-fast leaves them out (tests/conftest.py).
pytestmark = pytest.mark.slow

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
# How far OpenVINO fp32's answers may be from ONNX Runtime's for the same preprocessed
# image, |a - b| <= ATOL + RTOL * |b|: they differ in summation order only.
ATOL = RTOL = 1e-5


def colour_classifier(
    path: Path,
    *,
    shape=("N", 3, "S", "S"),
    output_shape=("N", 3),
    extra_input: bool = False,
    metadata: dict | None = None,
) -> Path:
    """An NCHW conv classifier of the dominant colour with known weights: a 3x3 conv whose
    centre tap passes each channel (plus fixed noise), ReLU, global average pooling, and a
    dense head of logits. Its input and output shapes can be made wrong on purpose."""
    rng = np.random.default_rng(0)
    conv = rng.normal(0, 0.02, (8, 3, 3, 3)).astype(np.float32)
    for channel in range(3):
        conv[channel, channel, 1, 1] += 1.0
    head = 4 * np.eye(8, 3, dtype=np.float32) + rng.normal(0, 0.02, (8, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["pixels", "conv", "conv_bias"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "head", "head_bias"], ["logits"]),
    ]
    weights = [
        numpy_helper.from_array(conv, "conv"),
        numpy_helper.from_array(np.zeros(8, np.float32), "conv_bias"),
        numpy_helper.from_array(head, "head"),
        numpy_helper.from_array(np.zeros(3, np.float32), "head_bias"),
    ]
    inputs = [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, list(shape))]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("depth", TensorProto.FLOAT, list(shape)))
    graph = helper.make_graph(
        nodes,
        "colours",
        inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(output_shape))],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def colour_png(rgb, *, seed: int = 1, size=(96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(rgb) + rng.normal(0, 35, (size[1], size[0], 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """The colour classifier (dynamic and 32x32), its labels and calibration images."""
    folder = tmp_path_factory.mktemp("onnx")
    colour_classifier(folder / "colours.onnx")
    colour_classifier(folder / "colours32.onnx", shape=("N", 3, 32, 32))
    (folder / "labels.txt").write_text("\n".join(COLOURS) + "\n")
    for index in range(4):
        for name, rgb in COLOURS.items():
            (folder / "calibration" / name).mkdir(parents=True, exist_ok=True)
            png = colour_png(rgb, seed=10 + index)
            (folder / "calibration" / name / f"{index}.png").write_bytes(png)
    return folder


def export(*args: str) -> str:
    out = io.StringIO()
    call_command("export_model", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def uint8_images(count: int, size: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def onnxruntime_answers(onnx_file: Path, images: np.ndarray, **options) -> np.ndarray:
    """ONNX Runtime's probabilities for uint8 images: the spec applied in numpy, the raw
    ONNX file run, softmax on its logits."""
    spec = spec_from_options({"input_preset": "imagenet", **options})
    model = read_onnx(onnx_file, spec=spec, input_size=images.shape[1])
    return onnxruntime_runner(model.path, model.spec)(images)


def test_input_presets_say_how_each_kind_of_model_wants_its_pixels():
    imagenet = spec_from_options({"input_preset": "imagenet"})
    assert (imagenet.layout, imagenet.channels, imagenet.output) == ("NCHW", "RGB", "logits")
    assert (imagenet.mean, imagenet.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert PRESETS["caffe"].channels == "BGR" and PRESETS["raw"].scale == 1.0
    custom = spec_from_options(
        {"input_preset": "imagenet", "channels": "BGR", "resize": "stretch", "scale": 1.0}
    )
    assert (custom.channels, custom.resize, custom.scale, custom.layout) == (
        "BGR",
        "stretch",
        1.0,
        "NCHW",
    )


def test_resize_and_crop_follow_the_spec():
    """Short side to R then the centre S x S, as torchvision's Resize(R) + CenterCrop(S);
    or the whole image stretched to S x S."""
    # Smooth, and different everywhere: a cut of the wrong part differs a lot.
    y, x = np.mgrid[0:300, 0:400].astype(np.float32)
    pixels = np.stack(
        [127 + 120 * np.sin(x / 23), 127 + 120 * np.cos(y / 17), (x + y) * 255 / 700], axis=-1
    ).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    image = Image.fromarray(pixels)
    resized = image.resize((341, 256), Image.Resampling.BILINEAR)  # short side 300 -> 256
    left, top = (341 - 224) // 2, (256 - 224) // 2
    expected = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.int16)
    buffer.seek(0)
    got = prepare_for_model(buffer, size=224, fit=Fit(resize_to=256)).astype(np.int16)
    # The same part of the image; resampling the crop box directly differs by rounding.
    assert np.abs(got - expected).mean() < 2.0
    buffer.seek(0)
    stretched = prepare_for_model(buffer, size=224, fit=Fit(stretch=True)).astype(np.int16)
    whole = np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.int16)
    assert np.abs(stretched - whole).mean() < 2.0
    assert np.abs(got - stretched).mean() > 10  # and they are not the same cut


@pytest.mark.parametrize(
    "flags, spec",
    [
        ((), {}),
        (("--channels", "BGR", "--std", "0.5,0.25,1"), {"channels": "BGR", "std": (0.5, 0.25, 1)}),
        (("--input-preset", "caffe", "--layout", "NCHW"), {"input_preset": "caffe"}),
        (
            ("--input-preset", "raw", "--layout", "NCHW", "--output-kind", "logits"),
            {"input_preset": "raw", "output_kind": "logits"},
        ),
    ],
)
def test_openvino_package_answers_as_onnx_runtime_with_the_spec_inside_the_model(
    models, tmp_path, flags, spec
):
    export(
        *("--onnx", str(models / "colours32.onnx"), "--input-preset", "imagenet", *flags),
        *("--precision", "fp32", "--output", str(tmp_path / "package")),
    )
    served = load_package(tmp_path / "package")
    # The compiled model takes the uint8 images themselves: the spec runs inside it.
    assert served.model.input(0).get_element_type().to_dtype() == np.uint8
    assert served.input_transform == "spec"
    images = uint8_images(6, 32)
    want = onnxruntime_answers(models / "colours32.onnx", images, layout="NCHW", **spec)
    got = served.probabilities(images)
    assert np.allclose(got, want, rtol=RTOL, atol=ATOL), np.abs(got - want).max()


def test_the_onnxruntime_runtime_serves_the_onnx_file_itself(models, tmp_path):
    output = export(
        *("--onnx", str(models / "colours.onnx"), "--input-preset", "imagenet"),
        *("--input-size", "32", "--labels", str(models / "labels.txt")),
        *("--runtime", "onnxruntime", "--precision", "fp32", "--output", str(tmp_path / "ort")),
    )
    assert "onnxruntime fp32" in output
    manifest = json.loads((tmp_path / "ort" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.onnx", "labels.txt"}
    served = load_package(tmp_path / "ort")
    assert (served.runtime, served.precision, served.labels) == (
        "onnxruntime",
        "fp32",
        list(COLOURS),
    )
    images = uint8_images(4, 32)
    want = onnxruntime_answers(models / "colours.onnx", images)
    assert np.array_equal(served.probabilities(images), want)


def test_int8_is_gated_against_onnx_runtimes_fp32_answers(models, tmp_path):
    output = export(
        *("--onnx", str(models / "colours.onnx"), "--input-preset", "imagenet"),
        *("--input-size", "32", "--labels", str(models / "labels.txt")),
        *("--precision", "int8", "--calibration-dir", str(models / "calibration")),
        *("--output", str(tmp_path / "int8")),
    )
    assert "faithfulness against fp32 ONNX Runtime" in output
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    figures = manifest["faithfulness"]
    assert figures["reference"] == "fp32 ONNX Runtime"
    assert figures["top1_agreement"] >= figures["min_top1_agreement"] == 0.99
    assert (
        manifest["source"]["onnx_sha256"]
        == read_onnx(models / "colours.onnx", spec=PRESETS["imagenet"], input_size=32).sha256
    )
    assert manifest["input_spec"]["resize_to"] == 37  # 32 / (224 / 256)
    served = load_package(tmp_path / "int8")
    assert served.precision == "int8"
    for name, rgb in COLOURS.items():
        image = prepare_for_model(io.BytesIO(colour_png(rgb, seed=99)), size=32, fit=served.fit)
        assert served.predict([image], [1])[0][0].label == name


def register_onnx(name: str, onnx_file: Path, *args: str) -> str:
    out = io.StringIO()
    call_command("models", "register", name, "--onnx", str(onnx_file), *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "make, args, error",
    [
        (
            lambda folder: (folder / "notes.onnx").write_text("not a model") and "notes.onnx",
            ("--input-preset", "imagenet"),
            "is not a valid ONNX model",
        ),
        (
            lambda folder: colour_classifier(folder / "two.onnx", extra_input=True).name,
            ("--input-preset", "imagenet", "--input-size", "32"),
            "takes 2 inputs (pixels, depth); a served classifier takes exactly one image input",
        ),
        (
            lambda folder: colour_classifier(folder / "rank3.onnx", shape=("N", 3, 32)).name,
            ("--input-preset", "imagenet"),
            "input 'pixels' has rank 3",
        ),
        (
            lambda folder: colour_classifier(folder / "dynamic.onnx").name,
            ("--input-preset", "imagenet"),
            "has a dynamic spatial size ([None, 3, None, None]): give the side it is served at "
            "with --input-size",
        ),
        (
            lambda folder: (
                colour_classifier(
                    folder / "out3.onnx", shape=("N", 3, 32, 32), output_shape=("N", 3, 1)
                ).name
            ),
            ("--input-preset", "imagenet"),
            "output 'logits' has shape [None, 3, 1]; a classifier outputs (N, classes)",
        ),
        (
            lambda folder: colour_classifier(folder / "labels.onnx", shape=("N", 3, 32, 32)).name,
            ("--input-preset", "imagenet", "--labels", "FOLDER/two-labels.txt"),
            "the model outputs 3 classes but FOLDER/two-labels.txt has 2 labels",
        ),
        (
            lambda folder: colour_classifier(folder / "preset.onnx", shape=("N", 3, 32, 32)).name,
            ("--input-preset", "pytorch"),
            "argument --input-preset: invalid choice: 'pytorch' "
            "(choose from 'caffe', 'imagenet', 'raw')",
        ),
        (
            lambda folder: colour_classifier(folder / "nopreset.onnx", shape=("N", 3, 32, 32)).name,
            (),
            "an ONNX model needs --input-preset (caffe, imagenet, raw)",
        ),
        (
            lambda folder: colour_classifier(folder / "nhwc.onnx", shape=("N", 32, 32, 3)).name,
            ("--input-preset", "imagenet"),
            "as NCHW it does not have 3 channels (its layout looks like NHWC: --layout NHWC)",
        ),
    ],
)
def test_a_bad_onnx_model_or_option_is_refused_naming_the_problem_and_registers_nothing(
    tmp_path, make, args, error
):
    (tmp_path / "two-labels.txt").write_text("red\ngreen\n")
    onnx_file = tmp_path / make(tmp_path)
    args = [arg.replace("FOLDER", str(tmp_path)) for arg in args]
    with pytest.raises(CommandError) as refused:
        register_onnx("bad", onnx_file, *args)
    message = str(refused.value).replace(str(tmp_path), "FOLDER")
    assert error in message, message
    assert not ModelVersion.objects.exists()
    assert not list(tmp_path.glob("*-fp32"))  # no package left behind either


@pytest.mark.django_db
def test_registering_again_never_replaces_the_package_a_version_serves(tmp_path):
    """A refused name is refused before anything is written; the same file registered under
    another name or with other labels gets a folder of its own; an --output that a version
    serves is refused."""
    onnx_file = colour_classifier(tmp_path / "colours.onnx", shape=("N", 3, 32, 32))
    (tmp_path / "labels.txt").write_text("\n".join(COLOURS) + "\n")
    register_onnx(
        "colours", onnx_file, "--input-preset", "imagenet", "--labels", str(tmp_path / "labels.txt")
    )
    (served,) = ModelVersion.objects.all()
    manifest = (Path(served.path) / "manifest.json").read_bytes()

    with pytest.raises(CommandError, match="model name 'Colours.2'"):
        register_onnx("Colours.2", onnx_file, "--input-preset", "imagenet")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["colours.onnx", "labels.txt", Path(served.path).name]
    )
    register_onnx("shades", onnx_file, "--input-preset", "imagenet")
    with pytest.raises(CommandError, match="is the package colours:1 serves"):
        register_onnx("colours", onnx_file, "--input-preset", "imagenet", "--output", served.path)
    assert (Path(served.path) / "manifest.json").read_bytes() == manifest
    assert load_package(Path(served.path)).labels == list(COLOURS)
    paths = set(ModelVersion.objects.values_list("path", flat=True))
    assert len(paths) == 2


@pytest.mark.django_db
def test_a_package_written_past_its_gate_is_registered_with_a_warning(tmp_path):
    onnx_file = colour_classifier(tmp_path / "colours.onnx", shape=("N", 3, 32, 32))
    register_onnx("colours", onnx_file, "--input-preset", "imagenet")
    package = Path(ModelVersion.objects.get().path)
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["faithfulness"] = {
        "top1_agreement": 0.9,
        "reference": "fp32 ONNX Runtime",
        "min_top1_agreement": 0.99,
        "forced": True,
    }
    (package / "manifest.json").write_text(json.dumps(manifest))
    err = io.StringIO()
    call_command(
        "models", "register", "colours", "--package", str(package), stdout=io.StringIO(), stderr=err
    )
    assert (
        "failed its faithfulness gate (top-1 agreement 90.00% with fp32 ONNX Runtime"
        in err.getvalue()
    )
    assert ModelVersion.objects.count() == 2


@pytest.mark.django_db
def test_labels_come_from_the_file_else_the_onnx_metadata_else_are_numbered(tmp_path):
    labels = "\n".join(COLOURS)
    with_metadata = colour_classifier(
        tmp_path / "meta.onnx", shape=("N", 3, 32, 32), metadata={"labels": labels}
    )
    bare = colour_classifier(tmp_path / "bare.onnx", shape=("N", 3, 32, 32))
    said = register_onnx("meta", with_metadata, "--input-preset", "imagenet")
    assert "labels: onnx metadata 'labels'" in said
    said = register_onnx("bare", bare, "--input-preset", "imagenet")
    assert "labels: generated class_0..class_2" in said
    packages = {version.model.name: Path(version.path) for version in ModelVersion.objects.all()}
    assert load_package(packages["meta"]).labels == list(COLOURS)
    assert load_package(packages["bare"]).labels == ["class_0", "class_1", "class_2"]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_onnx_classifier_is_served_beside_resnet50_answering_as_onnx_runtime(
    bridge,  # noqa: F811
    models,
    start_worker,  # noqa: F811
    api,
):
    """Registered in one command with its preset (imagenet: short side 37, centre 32 for
    this 32x32 model), OpenVINO and ONNX Runtime versions each served by a worker group of
    its own beside ResNet50; each upload's scores are ONNX Runtime's for the same
    preprocessed image."""
    register("resnet", "--builtin", "resnet50", "--weights", "random")
    onnx_file = models / "colours.onnx"
    common = ("--input-preset", "imagenet", "--input-size", "32")
    said = register_onnx("colours", onnx_file, *common, "--labels", str(models / "labels.txt"))
    assert "registered colours:1 (model package, openvino fp32, input 32, 3 classes" in said
    register_onnx(
        "colours",
        onnx_file,
        *common,
        "--labels",
        str(models / "labels.txt"),
        "--runtime",
        "onnxruntime",
    )
    create_topics()
    for ref in ("resnet:1", "colours:1", "colours:2"):
        start_worker(ref)

    uploads = {
        (name, version): api.post(
            f"{api.base_url}/api/jobs/",
            files=[("image", (f"{name}.png", colour_png(rgb, seed=5), "image/png"))],
            data={"top_k": 3, "model": "colours", "model_version": version},
        )
        for name, rgb in COLOURS.items()
        for version in (1, 2)
    }
    beside = api.post(
        f"{api.base_url}/api/jobs/",
        files=[("image", ("resnet.png", colour_png(COLOURS["red"]), "image/png"))],
    )
    for response in (*uploads.values(), beside):
        assert response.status_code == 202, response.text
    ids = [response.json()["id"] for response in (*uploads.values(), beside)]
    jobs = {str(job.pk): job for job in wait_until_finished(ids)}

    spec = spec_from_options({"input_preset": "imagenet"})
    reference = read_onnx(onnx_file, spec=spec, input_size=32)
    answer = onnxruntime_runner(reference.path, reference.spec)
    for (name, version), response in uploads.items():
        job = jobs[response.json()["id"]]
        assert job.status == Job.Status.SUCCEEDED, job.error
        runtime = {1: "openvino", 2: "onnxruntime"}[version]
        assert (job.model_name, job.model_version, job.runtime) == ("colours", version, runtime)
        image = prepare_for_model(
            io.BytesIO(colour_png(COLOURS[name], seed=5)), size=32, fit=Fit(resize_to=37)
        )
        want = answer(image[None])[0]
        got = {p.class_id: (p.label, p.score) for p in job.predictions.all()}
        assert [got[i][0] for i in range(3)] == list(COLOURS)
        assert np.allclose([got[i][1] for i in range(3)], want, rtol=RTOL, atol=ATOL)
        assert max(got.values(), key=lambda pair: pair[1])[0] == name
    resnet_job = jobs[beside.json()["id"]]
    assert (resnet_job.status, resnet_job.model_name) == (Job.Status.SUCCEEDED, "resnet")

    metadata = api.get(f"{api.base_url}/api/models/colours/").json()
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
    assert {
        key: metadata["input_spec"][key] for key in ("layout", "resize_to", "size", "output")
    } == {
        "layout": "NCHW",
        "resize_to": 37,
        "size": 32,
        "output": "logits",
    }
    assert api.get(f"{api.base_url}/api/models/resnet/").json()["input_spec"] is None
