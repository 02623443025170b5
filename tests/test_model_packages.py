"""Model packages with real runtimes: the suite's trained colour CNN exported to OpenVINO
int8 through the faithfulness gate, predicted with locally, served by a real worker without
TensorFlow, and the clear errors for packages and calibration sets that are wrong."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from django.core.management import CommandError, call_command
from PIL import Image

from predictions.models import Job
from serving.inference import ModelLoadError
from serving.runtimes.openvino import cpu_runs_bf16
from tests.conftest import DATA, REPO
from tests.test_pipeline import wait_until_finished
from tests.test_trained_model import COLOURS, SIZE, png, start_stack, train_colour_model

# Seconds each (a real model exported, loaded or run, or processes started): make test
# runs them, make test-fast leaves them out (tests/conftest.py).
pytestmark = pytest.mark.slow

PER_COLOUR = 4


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory):
    return train_colour_model(tmp_path_factory.mktemp("colour-model"))


def colour_files(folder: Path, *, seed: int) -> Path:
    """PNG files of noisy colour fields, named after their colour, in sub-folders (the
    calibration folder is searched recursively)."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (folder / name).mkdir(parents=True)
        for index in range(PER_COLOUR):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 35, (48, 64, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / name / f"{index}.png")
    return folder


def export(colour_model, output: Path, *args: str) -> str:
    lines = []

    class Sink:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    call_command(
        "export_model",
        "--output",
        str(output),
        "--name",
        "colours",
        "--model-file",
        str(colour_model / "colours.keras"),
        "--labels-file",
        str(colour_model / "labels.txt"),
        "--input-size",
        str(SIZE),
        *args,
        stdout=Sink(),
    )
    return "".join(lines)


@pytest.fixture(scope="module")
def int8_package(colour_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    images = colour_files(folder / "calibration", seed=3)
    output = export(
        colour_model, folder / "package", "--precision", "int8", "--calibration-dir", str(images)
    )
    return folder / "package", output


def test_int8_export_of_the_trained_cnn_passes_the_gate_and_describes_itself(
    int8_package,
    colour_model,
):
    package, output = int8_package
    manifest = json.loads((package / "manifest.json").read_text())
    figures = manifest["faithfulness"]
    assert "top-1 agreement" in output
    assert figures["top1_agreement"] >= 0.99
    assert figures["top5_overlap"] == 1.0  # three classes: the top 5 is all of them
    assert 0 <= figures["max_probability_difference"] < 0.2
    # Every fourth image is held out of calibration for the gate.
    assert figures["images"] == len(COLOURS) * PER_COLOUR // 4
    assert manifest["calibration"]["images"] == len(COLOURS) * PER_COLOUR - figures["images"]
    assert manifest["precision"] == "int8" and manifest["runtime"] == "openvino"
    assert manifest["input_size"] == SIZE and manifest["classes"] == len(COLOURS)
    assert manifest["source"]["model_file"].endswith("colours.keras")
    assert len(manifest["source"]["model_file_sha256"]) == 64
    assert manifest["openvino_version"] and manifest["created_at"]
    assert set(manifest["files"]) == {"model.xml", "model.bin", "labels.txt"}
    assert (package / "labels.txt").read_text().split() == list(COLOURS)


def write_pngs(folder: Path) -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = []
    for name, rgb in COLOURS.items():
        (folder / f"{name}.png").write_bytes(png(rgb))
        paths.append(folder / f"{name}.png")
    return paths


def predict_json(*args: str) -> list[dict]:
    lines = []

    class Sink:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    call_command("predict", *args, "--json", stdout=Sink())
    return [json.loads(line) for line in "".join(lines).splitlines()]


def test_predict_names_the_colour_of_real_files_with_the_package(int8_package, tmp_path):
    package, _ = int8_package
    files = write_pngs(tmp_path)
    answers = predict_json(*map(str, files), "--model-package", str(package), "--top-k", "2")
    assert [answer["file"] for answer in answers] == [str(path) for path in files]
    for answer, name in zip(answers, COLOURS, strict=True):
        assert len(answer["predictions"]) == 2
        assert answer["predictions"][0]["label"] == name
        assert answer["predictions"][0]["class_id"] == list(COLOURS).index(name)


def test_predict_with_tensorflow_agrees_with_the_package(
    int8_package,
    colour_model,
    tmp_path,
    settings,
):
    package, _ = int8_package
    settings.MODEL_NAME = "colours"
    settings.MODEL_FILE = str(colour_model / "colours.keras")
    settings.MODEL_LABELS_FILE = str(colour_model / "labels.txt")
    settings.MODEL_INPUT_SIZE = SIZE
    files = list(map(str, write_pngs(tmp_path)))
    keras_answers = predict_json(*files, "--runtime", "tensorflow", "--model-package", "")
    package_answers = predict_json(*files, "--model-package", str(package))
    for keras_answer, package_answer in zip(keras_answers, package_answers, strict=True):
        want, got = keras_answer["predictions"], package_answer["predictions"]
        assert [p["label"] for p in want] == [p["label"] for p in got]
        assert abs(want[0]["score"] - got[0]["score"]) < 0.2


def test_a_worker_serving_a_package_does_not_load_tensorflow(int8_package, process_env):
    package, _ = int8_package
    script = (
        "import json, sys, django; django.setup()\n"
        "from workers.management.commands import run_worker\n"
        "from serving.loading import load_served\n"
        f"served = load_served(package={str(package)!r})\n"
        "print(json.dumps({'runtime': served.runtime, 'precision': served.precision,"
        " 'loaded': sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=process_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"runtime": "openvino", "precision": "int8", "loaded": []}


@pytest.fixture(scope="module")
def package_stack(int8_package, kafka_topics, start_process, process_env):
    package, _ = int8_package
    return start_stack(start_process, process_env, "package", {"MODEL_PACKAGE": str(package)})


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_int8_package_served_by_a_real_worker_names_the_dominant_colour_end_to_end(
    package_stack, user
):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=user).key
    files = [
        ("image", (f"{name}.png", png(rgb), "application/octet-stream"))
        for name, rgb in COLOURS.items()
    ]
    headers = {"Authorization": f"Token {token}"}
    response = requests.post(
        f"{package_stack}/api/jobs/", files=files, data={"top_k": "3"}, headers=headers, timeout=30
    )
    assert response.status_code == 202, response.text
    jobs = wait_until_finished([job["id"] for job in response.json()["jobs"]])
    for job in jobs:
        assert job.status == Job.Status.SUCCEEDED, job.error
        top = job.predictions.order_by("rank").first()
        assert top.label == job.original_name.removesuffix(".png")
        assert (job.model_name, job.runtime, job.precision) == ("colours", "openvino", "int8")
    shown = requests.get(f"{package_stack}/api/jobs/{jobs[0].pk}/", headers=headers, timeout=30)
    model = shown.json()["model"]
    assert (model["runtime"], model["precision"]) == ("openvino", "int8")


def test_the_gate_refuses_a_package_converted_from_a_broken_model(
    colour_model,
    tmp_path,
):
    import dataclasses

    import keras

    from serving.export import GateRefused, export_package, image_files, load_image_files
    from serving.runtimes.tensorflow import load_model

    served = load_model(
        name="colours",
        weights="",
        model_file=str(colour_model / "colours.keras"),
        labels_file=str(colour_model / "labels.txt"),
        input_size=SIZE,
    )
    keras.utils.set_random_seed(7)
    # The same layers with fresh weights is what gets converted; the trained model stays
    # the reference the gate compares with.
    broken = dataclasses.replace(served, model=keras.models.clone_model(served.model))
    folder = colour_files(tmp_path / "held-out", seed=5)
    held_out = load_image_files(image_files(folder), size=SIZE, name="held out")
    arguments = dict(
        served=broken,
        output=tmp_path / "package",
        precision="fp32",
        source={"model": "colours"},
        calibration=None,
        held_out=held_out,
    )
    with pytest.raises(GateRefused, match="refused: top-1 agreement"):
        export_package(**arguments)
    assert not (tmp_path / "package").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["held-out"]

    manifest = export_package(**arguments, force=True)
    assert manifest["faithfulness"]["forced"] is True
    assert manifest["faithfulness"]["top1_agreement"] < 0.99
    assert (tmp_path / "package" / "manifest.json").is_file()


def broken_copy(package: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(package, tmp_path / "copy"))


def test_a_package_with_a_missing_file_is_refused_naming_it(int8_package, tmp_path):
    from serving.package import load_package

    copy = broken_copy(int8_package[0], tmp_path)
    (copy / "model.bin").unlink()
    with pytest.raises(ModelLoadError, match="is missing model.bin"):
        load_package(copy)


def test_a_package_with_an_edited_file_is_refused(int8_package, tmp_path):
    from serving.package import load_package

    copy = broken_copy(int8_package[0], tmp_path)
    with open(copy / "model.bin", "r+b") as file:
        first = file.read(1)
        file.seek(0)
        file.write(bytes([first[0] ^ 0xFF]))
    with pytest.raises(ModelLoadError, match="model.bin .* was changed after export"):
        load_package(copy)


def test_a_package_whose_labels_do_not_match_its_outputs_is_refused(int8_package, tmp_path):
    from serving.inference import sha256_of
    from serving.package import load_package

    copy = broken_copy(int8_package[0], tmp_path)
    (copy / "labels.txt").write_text("red\ngreen\n")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["labels.txt"] = sha256_of(copy / "labels.txt")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="3 output classes but .* has 2 labels"):
        load_package(copy)


def test_a_folder_holding_a_package_names_the_package_inside(int8_package):
    from serving.package import load_package

    package, _ = int8_package
    with pytest.raises(ModelLoadError, match=f"holds {package}: give one of those"):
        load_package(package.parent)


def test_predict_says_a_text_file_is_not_an_image_without_python_internals(
    int8_package, tmp_path, capsys
):
    package, _ = int8_package
    notes = tmp_path / "notes.png"
    notes.write_text("just text")
    with pytest.raises(CommandError, match="1 of 1 files could not be read"):
        call_command("predict", str(notes), "--model-package", str(package))
    err = capsys.readouterr().err
    assert f"{notes}: not an image in a format that can be read" in err
    assert "BufferedReader" not in err


def test_predict_warns_that_random_weights_do_not_classify(tmp_path, capsys, settings):
    settings.MODEL_WEIGHTS = "random"
    photo = tmp_path / "fox.png"
    photo.write_bytes((DATA / "fox.png").read_bytes())
    call_command("predict", str(photo), "--runtime", "tensorflow", "--precision", "fp32")
    assert "random weights" in capsys.readouterr().err


def test_a_folder_without_a_manifest_is_not_a_package(tmp_path):
    from serving.package import load_package

    with pytest.raises(ModelLoadError, match="is not a model package"):
        load_package(tmp_path)


def test_calibration_files_that_are_not_images_are_refused_naming_the_file(
    colour_model,
    tmp_path,
):
    folder = colour_files(tmp_path / "calibration", seed=1)
    (folder / "red" / "notes.txt").write_text("not an image")
    with pytest.raises(CommandError, match=r"notes.txt is not an image"):
        export(colour_model, tmp_path / "package", "--calibration-dir", str(folder))
    assert not (tmp_path / "package").exists()


def test_an_empty_calibration_folder_is_refused(colour_model, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(CommandError, match="holds no files"):
        export(colour_model, tmp_path / "package", "--calibration-dir", str(tmp_path / "empty"))


def test_int8_without_calibration_images_is_refused(colour_model, tmp_path):
    with pytest.raises(CommandError, match="needs calibration images"):
        export(colour_model, tmp_path / "package", "--precision", "int8")


def test_a_precision_tensorflow_cannot_run_is_refused():
    from serving.loading import load_served

    with pytest.raises(ModelLoadError, match="tensorflow runtime runs fp32 only, not int8"):
        load_served(runtime="tensorflow", precision="int8")


def test_bf16_refuses_on_a_cpu_without_bf16_unless_fallback_is_allowed(int8_package, tmp_path):
    from serving.package import load_package

    copy = broken_copy(int8_package[0], tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["precision"] = "bf16"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    if cpu_runs_bf16():
        assert load_package(copy).precision == "bf16"
        return
    with pytest.raises(ModelLoadError, match="this CPU cannot run bf16"):
        load_package(copy)
    assert load_package(copy, bf16_fallback=True).precision == "fp32"


def test_make_runs_package_is_the_fastest_that_passes_the_gate_exported_once(
    colour_model, tmp_path, settings, monkeypatch
):
    from serving.package import FASTEST_FIRST, read_manifest

    settings.MODEL_NAME = "colours"
    settings.MODEL_FILE = str(colour_model / "colours.keras")
    settings.MODEL_LABELS_FILE = str(colour_model / "labels.txt")
    settings.MODEL_INPUT_SIZE = SIZE
    monkeypatch.setenv("STACK_DIR", str(tmp_path / "stack"))

    def ensure(*args: str) -> str:
        out = io.StringIO()
        call_command("ensure_model_package", "--weights", "", *args, stdout=out)
        return out.getvalue().strip()

    package = Path(ensure())
    assert package.parent.parent == tmp_path / "stack" / "model-packages"
    manifest = read_manifest(package)
    figures = manifest["faithfulness"]
    assert figures["top1_agreement"] >= figures["min_top1_agreement"]
    assert "forced" not in figures
    # Nothing faster than the chosen precision was left on disk as a package.
    faster = FASTEST_FIRST[: FASTEST_FIRST.index(manifest["precision"])]
    assert not any((package.parent / other / "manifest.json").exists() for other in faster)
    written = (package / "manifest.json").stat().st_mtime_ns
    assert Path(ensure()) == package
    assert (package / "manifest.json").stat().st_mtime_ns == written
    assert ensure("--describe").startswith(f"openvino {manifest['precision']} (")
