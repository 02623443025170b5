"""The Ray Serve peer: @serve.batch serving make run's model package over HTTP.

Run as `python -m bench.ray_peer --port P ...` with the Python of the peer's own venv
(bench/peers.py): starts a local Ray cluster limited to this machine's cores, deploys the
classifier at http://127.0.0.1:P/classify (POST the image file's bytes, get the top 5 as
JSON) and at /classify/batch (POST several images packed by pack_images, get a list of top
5s), prints "ray peer ready" and serves until SIGTERM, then shuts the cluster down. Loading,
decoding and the answer are bench/peer_serving.py's, shared with the other peers.
"""

import asyncio
import os

from bench.peer_serving import (
    BATCH_PATH,
    CLASSIFY_PATH,
    REPO,
    decode,
    load_model,
    peer_arguments,
    top_classes,
    unpack_images,
    wait_for_stop,
)


def main() -> None:
    args = peer_arguments("Ray Serve serving make run's model package")

    import ray
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(max_ongoing_requests=256)
    class Classifier:
        def __init__(self) -> None:
            self.model = load_model(args.model_package, args.threads)

        @serve.batch(
            max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_ms / 1000
        )
        async def classify(self, images: list) -> list[list[dict]]:
            return top_classes(self.model, images)

        async def __call__(self, request: Request) -> list:
            body = await request.body()
            if request.url.path.endswith(BATCH_PATH):
                # Each image joins @serve.batch's batches like a request of its own.
                images = [decode(data) for data in unpack_images(body)]
                return list(await asyncio.gather(*(self.classify(image) for image in images)))
            return await self.classify(decode(body))

    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(Classifier.bind(), route_prefix=CLASSIFY_PATH)
    print("ray peer ready", flush=True)
    wait_for_stop()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
