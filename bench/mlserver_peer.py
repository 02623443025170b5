"""The MLServer peer: Seldon's server, its adaptive batching, serving make run's model
package over HTTP.

Run as `python -m bench.mlserver_peer --port P ...` with the Python of the peer's own venv
(bench/peers.py). A custom runtime (an MLModel) loads the package with the project's code;
its predict takes the V2 protocol's BYTES input, one encoded image per element, and decodes
them in the batch. It answers at http://127.0.0.1:P/classify (the image file's bytes) and
/classify/batch (several packed by pack_images), the Ray Serve peer's request format: those
two routes are MLServer custom handlers that pass the images to predict as one V2 request,
which MLServer's adaptive batcher merges with the others (max_batch_size, max_batch_time).
The model runs in the server's own process (parallel_workers 0): MLServer calls a custom
handler in the process that serves it, and only there is predict the batched one.

Serves until SIGTERM, which MLServer handles itself.
"""

import asyncio
import json
import socket

from fastapi import Request, Response
from mlserver import MLModel, MLServer
from mlserver.context import model_context
from mlserver.handlers import custom_handler
from mlserver.settings import ModelParameters, ModelSettings, Settings
from mlserver.types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput

from bench.peer_serving import (
    BATCH_PATH,
    CLASSIFY_PATH,
    decode,
    load_model,
    peer_arguments,
    top_classes,
    unpack_images,
)

MODEL_NAME = "resnet50"


class Classifier(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        self.model = load_model(extra["package"], extra["threads"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        [images] = payload.inputs
        answers = top_classes(self.model, [decode(data) for data in images.data.root])
        top = ResponseOutput(
            name="top_classes",
            shape=[len(answers)],
            datatype="BYTES",
            data=[json.dumps(answer) for answer in answers],
        )
        return InferenceResponse(model_name=self.name, outputs=[top])

    @custom_handler(rest_path=CLASSIFY_PATH)
    async def classify(self, request: Request) -> Response:
        [answer] = await self.answers([await request.body()])
        return Response(answer, media_type="application/json")

    @custom_handler(rest_path=CLASSIFY_PATH + BATCH_PATH)
    async def classify_batch(self, request: Request) -> Response:
        answers = await self.answers(unpack_images(await request.body()))
        return Response("[" + ",".join(answers) + "]", media_type="application/json")

    async def answers(self, images: list[bytes]) -> list[str]:
        """Each image's top 5 as JSON, through predict: MLServer's batched one, in the
        model's context as MLServer's own inference endpoint calls it (its batcher asks)."""
        inputs = RequestInput(name="images", shape=[len(images)], datatype="BYTES", data=images)
        with model_context(self.settings):
            response = await self.predict(InferenceRequest(inputs=[inputs]))
        return list(response.outputs[0].data.root)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def serve() -> None:
    args = peer_arguments("MLServer serving make run's model package")
    settings = Settings(
        host="127.0.0.1",
        http_port=args.port,
        # Always started; nothing here uses it.
        grpc_port=free_port(),
        metrics_endpoint=None,
        parallel_workers=0,
    )
    model = ModelSettings(
        name=MODEL_NAME,
        implementation=Classifier,
        max_batch_size=args.max_batch_size,
        max_batch_time=args.batch_wait_ms / 1000,
        parameters=ModelParameters(extra={"package": args.model_package, "threads": args.threads}),
    )
    # Made inside the running loop: MLServer adds its signal handlers to it.
    await MLServer(settings).start([model])


if __name__ == "__main__":
    asyncio.run(serve())
