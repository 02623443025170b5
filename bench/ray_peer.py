"""The peer: Ray Serve with @serve.batch serving the same model over HTTP.

Run as `python -m bench.ray_peer --port P ...` with the Python of the peer's own venv
(bench/peers.py): starts a local Ray cluster limited to this machine's cores, deploys the
classifier at http://127.0.0.1:P/classify (POST the image file's bytes, get the top 5 as
JSON) and at /classify/batch (POST several images packed by pack_images, get a list of top
5s), prints "ray peer ready" and serves until SIGTERM, then shuts the cluster down. It
decodes and resizes with the project's own prepare_for_model and predicts with the
project's ServedModel, so the only difference from the pipeline is the serving framework.
"""

import argparse
import asyncio
import io
import os
import signal
import struct
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BATCH_PATH = "/batch"


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="0: the runtime's default")
    parser.add_argument("--model-package", default="", help="serve this OpenVINO package")
    args = parser.parse_args()

    import ray
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(max_ongoing_requests=256)
    class Classifier:
        def __init__(self) -> None:
            from serving.loading import load_served

            self.model = load_served(
                package=args.model_package,
                name="resnet50",
                weights="random",
                threads=args.threads or None,
            )

        @serve.batch(
            max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_ms / 1000
        )
        async def classify(self, images: list) -> list[list[dict]]:
            predictions = self.model.predict(images, [5] * len(images))
            return [
                [{"class_id": p.class_id, "label": p.label, "score": p.score} for p in best]
                for best in predictions
            ]

        async def __call__(self, request: Request) -> list:
            from common.images import prepare_for_model

            body = await request.body()
            if request.url.path.endswith(BATCH_PATH):
                # Each image joins @serve.batch's batches like a request of its own.
                images = [
                    prepare_for_model(io.BytesIO(data), size=224) for data in unpack_images(body)
                ]
                return list(await asyncio.gather(*(self.classify(image) for image in images)))
            return await self.classify(prepare_for_model(io.BytesIO(body), size=224))

    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(Classifier.bind(), route_prefix="/classify")
    print("ray peer ready", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
