"""A real trained model through the real loading path: a small Keras CNN is trained here on
generated images (which colour dominates), saved as .keras with a labels file, served by
a real worker, and must name the right colour for uploads that went through every hop."""

import io

import numpy as np
import pytest
import requests
from PIL import Image

from predictions.models import Job
from stack import processes
from stack.common import redis_url
from stack.harness import PYTHON, free_port, unique_celery_hostname
from stack.processes import AppProcess
from tests.conftest import manage
from tests.test_pipeline import wait_until_finished

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
SIZE = 32


def noisy_images(rgb, count: int, rng) -> np.ndarray:
    base = np.array(rgb, dtype=np.float32)
    images = base + rng.normal(0, 35, size=(count, SIZE, SIZE, 3))
    return np.clip(images, 0, 255).astype(np.float32)


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory):
    return train_colour_model(tmp_path_factory.mktemp("colour-model"))


def train_colour_model(folder):
    """colours.keras and labels.txt in folder: a small CNN trained to name the dominant
    colour of an image."""
    import keras

    rng = np.random.default_rng(0)
    x = np.concatenate([noisy_images(rgb, 150, rng) for rgb in COLOURS.values()])
    y = np.repeat(np.arange(len(COLOURS)), 150)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(COLOURS), activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(x, y, epochs=15, batch_size=32, verbose=0, shuffle=True)
    assert history.history["accuracy"][-1] > 0.95, history.history["accuracy"]
    model.save(folder / "colours.keras")
    (folder / "labels.txt").write_text("\n".join(COLOURS) + "\n")
    return folder


@pytest.fixture(scope="module")
def colour_stack(colour_model, kafka_topics, start_process, process_env):
    """Web, Celery, one worker serving the colour model and a bridge, on their own topics."""
    model_env = {
        "MODEL_NAME": "colours",
        "MODEL_FILE": str(colour_model / "colours.keras"),
        "MODEL_LABELS_FILE": str(colour_model / "labels.txt"),
        "MODEL_INPUT_SIZE": str(SIZE),
    }
    return start_stack(start_process, process_env, "colours", model_env)


def start_stack(start_process, process_env, prefix: str, model_env: dict) -> str:
    """Start web, Celery, a worker with model_env and a bridge on topics of their own;
    returns the web server's URL."""
    from kafka_wire.config import kafka_names
    from kafka_wire.topics import ensure_topics

    run = process_env["INFERENCEHUB_TEST_RUN_ID"]
    env = {
        **kafka_names(f"test-{run}-{prefix}"),
        "CELERY_BROKER_URL": redis_url(2),
        **model_env,
    }
    from django.test import override_settings

    with override_settings(**{k: v for k, v in env.items() if k.startswith("KAFKA_")}):
        ensure_topics()
    port = free_port()
    runserver = manage("runserver", "--noreload", f"127.0.0.1:{port}")
    start_process(AppProcess(f"{prefix}-web", runserver, "Quit the server"), **env)
    celery = processes.celery(PYTHON, hostname=unique_celery_hostname(prefix), concurrency=1)
    start_process(celery, name=f"{prefix}-celery", **env)
    start_process(processes.worker(PYTHON, f"{prefix}-worker"), **env)
    start_process(processes.bridge(PYTHON), name=f"{prefix}-bridge", **env)
    return f"http://127.0.0.1:{port}"


def png(rgb) -> bytes:
    rng = np.random.default_rng(1)
    pixels = noisy_images(rgb, 1, rng)[0].astype(np.uint8)
    image = Image.fromarray(np.kron(pixels, np.ones((4, 4, 1), np.uint8)))  # 128x128
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_trained_colour_model_names_the_dominant_colour_end_to_end(colour_stack, user):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=user).key
    files = [
        ("image", (f"{name}.png", png(rgb), "application/octet-stream"))
        for name, rgb in COLOURS.items()
    ]
    response = requests.post(
        f"{colour_stack}/api/jobs/",
        files=files,
        data={"top_k": "3"},
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    jobs = wait_until_finished([job["id"] for job in response.json()["jobs"]])
    for job in jobs:
        assert job.status == Job.Status.SUCCEEDED, job.error
        expected = job.original_name.removesuffix(".png")
        top = job.predictions.order_by("rank").first()
        assert top.label == expected
        assert top.score > 0.5
        assert job.model_name == "colours"
        assert job.model_weights.endswith("colours.keras")
