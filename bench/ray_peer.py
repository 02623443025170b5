"""The peer: Ray Serve with @serve.batch serving the same Keras ResNet50 over HTTP.

Run as `python -m bench.ray_peer --port P ...`: starts a local Ray cluster limited to this
machine's cores, deploys the classifier at http://127.0.0.1:P/classify (POST the image
file's bytes, get the top 5 as JSON), prints "ray peer ready" and serves until SIGTERM,
then shuts the cluster down. It decodes and resizes with the project's own
prepare_for_model and predicts with the project's ServedModel, so the only difference
from the pipeline is the serving framework.
"""

import argparse
import io
import os
import signal
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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

        async def __call__(self, request: Request) -> list[dict]:
            from common.images import prepare_for_model

            body = await request.body()
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
