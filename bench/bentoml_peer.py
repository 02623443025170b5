"""The BentoML peer: its adaptive batching serving make run's model package over HTTP.

Run as `python -m bench.bentoml_peer --port P ...` with the Python of the peer's own venv
(bench/peers.py): it hands its options to the service below through the environment and
becomes `bentoml serve` (same process, so the benchmark's SIGTERM stops BentoML's own
supervisor, which stops its worker). One worker process, as the pipeline runs one inference
worker and Ray Serve one replica.

The service takes multipart forms at http://127.0.0.1:P/classify, one file or several in
the field "images", and answers a list of top 5s, one per image. Not the raw bodies the
Ray Serve peer takes: BentoML batches a batchable API by the list its one argument holds,
and a list of files reaches it only as a form (as the pipeline's uploads are). Decoding
happens in the batched call, on the batch's images, as BentoML runs a batchable API.
"""

import json
import os
import sys
from pathlib import Path

from bench.peer_serving import CLASSIFY_PATH, decode, load_model, peer_arguments, top_classes

# The peer's options, read where BentoML imports this module: in its worker process.
OPTIONS_ENV = "INFERENCEHUB_BENTOML_PEER"
# BentoML's max_latency_ms is a deadline, not a wait: a request it expects to miss it is
# refused (503). Its own default, so that under saturation it batches and never refuses;
# the wait for a batch to fill is its dispatcher's own adaptive choice.
MAX_LATENCY_MS = 60_000


def main() -> None:
    args = peer_arguments("BentoML serving make run's model package")
    env = {
        **os.environ,
        OPTIONS_ENV: json.dumps(vars(args)),
        # No usage reports; its store of models and bentos inside the peer's venv.
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(Path(sys.prefix) / "bentoml-home"),
    }
    argv = [sys.executable, "-m", "bentoml", "serve", "bench.bentoml_peer:Classifier"]
    argv += ["--host", "127.0.0.1", "--port", str(args.port)]
    os.execve(sys.executable, argv, env)


if __name__ == "__main__":
    main()
else:
    import bentoml

    options = json.loads(os.environ.get(OPTIONS_ENV, "{}"))

    @bentoml.service(workers=1, traffic={"timeout": 300})
    class Classifier:
        def __init__(self) -> None:
            self.model = load_model(options.get("model_package", ""), options.get("threads", 0))

        @bentoml.api(
            route=CLASSIFY_PATH,
            batchable=True,
            max_batch_size=options.get("max_batch_size", 32),
            max_latency_ms=MAX_LATENCY_MS,
        )
        def classify(self, images: list[Path]) -> list[list[dict]]:
            return top_classes(self.model, [decode(path) for path in images])
