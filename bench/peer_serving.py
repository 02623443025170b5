"""What the peers' servers share: their options, the model they load, the decoding, the
answer, and the request bodies. Runs inside each peer's own venv (bench/peers.py) with
the checkout on PYTHONPATH, so it imports only the standard library at module level and
the project's serving/ and common/ code where it is used.

Every peer serves make run's model package with the project's own load_served and decodes
with the project's own prepare_for_model, so the only difference from the pipeline, and
between the peers, is the serving framework.
"""

import argparse
import io
import signal
import struct
import threading
from pathlib import Path

# The checkout: its serving/ and common/ are on every peer's PYTHONPATH.
REPO = Path(__file__).resolve().parent.parent
# The peers' routes: one image per request at CLASSIFY_PATH, several at BATCH_PATH below it.
CLASSIFY_PATH = "/classify"
BATCH_PATH = "/batch"
# The model's input side, as the pipeline's Celery decodes for it (settings.MODEL_INPUT_SIZE).
INPUT_SIZE = 224
TOP_K = 5


def peer_arguments(description: str) -> argparse.Namespace:
    """The options every peer's server takes: the benchmark passes each the same."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="0: the runtime's default")
    parser.add_argument("--model-package", default="", help="serve this OpenVINO package")
    return parser.parse_args()


def load_model(package: str, threads: int = 0):
    """The package loaded and warmed up as a worker loads it (serving/loading.py)."""
    from serving.loading import load_served

    return load_served(package=package, name="resnet50", weights="random", threads=threads or None)


def decode(image: bytes | Path):
    """The model's input array from an image file's bytes (or a file), as Celery makes it."""
    from common.images import prepare_for_model

    source = image if isinstance(image, Path) else io.BytesIO(image)
    return prepare_for_model(source, size=INPUT_SIZE)


def top_classes(model, images: list) -> list[list[dict]]:
    """The top 5 of each decoded image, as the JSON the peers answer with."""
    predictions = model.predict(images, [TOP_K] * len(images))
    return [
        [{"class_id": p.class_id, "label": p.label, "score": p.score} for p in best]
        for best in predictions
    ]


def pack_images(images: list[bytes]) -> bytes:
    """Several image files in one request body: each after its length (4 bytes, big-endian).
    Not multipart: parsing a form would be the peer's own cost, not the framework's."""
    return b"".join(struct.pack(">I", len(image)) + image for image in images)


def unpack_images(body: bytes) -> list[bytes]:
    images, offset = [], 0
    while offset < len(body):
        (size,) = struct.unpack_from(">I", body, offset)
        images.append(body[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return images


def wait_for_stop() -> None:
    """Block until SIGTERM or SIGINT (the benchmark stops a peer with SIGTERM)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
