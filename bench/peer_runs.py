"""The peers' rows: each peer framework started from its own venv (bench/peers.py) serving
make run's model package, and driven by the same clients with the same images, 1 or 8 per
request, as the pipeline's rows are.

Ray Serve and MLServer take the same request bodies (one image file's bytes, or several
packed by pack_images); BentoML takes its own, a multipart form, since its batching
batches the list of files a form gives it (bench/bentoml_peer.py). Every peer answers a
top 5 per image, computed by the project's code (bench/peer_serving.py).
"""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.figures import load_average, percentiles, wait_for_http
from bench.peer_serving import BATCH_PATH, CLASSIFY_PATH, pack_images
from bench.peers import PEERS_DIR, PeerUnavailable
from stack.harness import REPO, ManagedProcess, free_port


@dataclass(frozen=True)
class Peer:
    venv: str  # its venv under .stack/peers, as bench/peers.py's FRAMEWORKS names it
    label: str
    batching: str  # how it batches, for the row's title
    module: str  # its server, run with the venv's Python
    ready_text: str  # what its log says once the model is loaded
    form: bool = False  # images as a multipart form, else raw bodies


PEERS = {
    "ray": Peer("ray", "Ray Serve", "@serve.batch", "bench.ray_peer", "ray peer ready"),
    "bentoml": Peer(
        "bentoml",
        "BentoML",
        "adaptive batching",
        "bench.bentoml_peer",
        "Service Classifier initialized",
        form=True,
    ),
    "mlserver": Peer(
        "mlserver",
        "MLServer",
        "adaptive batching",
        "bench.mlserver_peer",
        "Loaded model 'resnet50' successfully",
    ),
}
# The peers' parts of the benchmark: the peer, and images per request.
PEER_PARTS = {
    "ray-package": ("ray", 1),
    "ray-package-batch": ("ray", 8),
    "bentoml-package": ("bentoml", 1),
    "bentoml-package-batch": ("bentoml", 8),
    "mlserver-package": ("mlserver", 1),
    "mlserver-package-batch": ("mlserver", 8),
}


def ready_peer(name: str) -> Path:
    """The peer's venv's Python when it is made already (the benchmark's --no-peer-install)."""
    python = PEERS_DIR / name / "bin" / "python"
    if not python.exists():
        raise PeerUnavailable(
            f"the {name} peer's venv ({python.parent.parent}) is not made, and "
            f"--no-peer-install was given (a benchmark run without it makes it)"
        )
    return python


def peer_request(base_url: str, images: list[tuple[str, bytes]], form: bool) -> dict:
    """requests.post's arguments that send these images (name, file bytes) to a peer."""
    url = base_url + CLASSIFY_PATH
    if form:
        files = [("images", (name, data, "image/jpeg")) for name, data in images]
        return {"url": url, "files": files}
    if len(images) == 1:
        return {"url": url, "data": images[0][1]}
    return {"url": url + BATCH_PATH, "data": pack_images([data for _, data in images])}


def classify(
    session: requests.Session, peer: Peer, base_url: str, images: list[tuple[str, bytes]]
) -> None:
    response = session.post(**peer_request(base_url, images, peer.form), timeout=120)
    # One image's answer is its top 5 (Ray Serve's, MLServer's) or a list of one top 5.
    if response.status_code != 200 or (len(images) > 1 and len(response.json()) != len(images)):
        raise RuntimeError(f"{peer.label} answered {response.status_code}: {response.text[:500]}")


@dataclass(frozen=True)
class PeerSettings:
    """What the benchmark's options ask of a peer run (bench.run.Options)."""

    package: str
    count: int
    clients: int
    latency_images: int
    max_batch_size: int
    batch_delay_ms: int
    threads: int


def run_peer(
    peer: Peer,
    per_request: int,
    settings: PeerSettings,
    images: list[tuple[str, bytes]],
    python: Path,
    log_dir: Path,
    log_name: str,
) -> dict:
    """Start the peer, warm it up, send settings.count images per_request at a time from
    settings.clients concurrent clients, then one at a time for the latency; stop it."""
    port = free_port()
    argv = [str(python), "-m", peer.module, "--port", str(port)]
    argv += ["--model-package", settings.package]
    argv += ["--max-batch-size", str(settings.max_batch_size)]
    argv += ["--batch-wait-ms", str(settings.batch_delay_ms), "--threads", str(settings.threads)]
    # The project's code (serving/, common/, bench/) from the checkout; everything else
    # from the peer's venv.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = ManagedProcess(log_name, argv, env, log_dir).start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        process.wait_for_log(peer.ready_text, timeout=300)
        wait_for_http(base_url + "/")
        session = requests.Session()
        for index in range(4):
            classify(session, peer, base_url, [images[index % len(images)]])
        classify(session, peer, base_url, images[:per_request])
        load_before = load_average()
        local = threading.local()

        def one(start: int) -> None:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            end = min(start + per_request, settings.count)
            classify(
                local.session, peer, base_url, [images[i % len(images)] for i in range(start, end)]
            )

        started = time.time()
        with ThreadPoolExecutor(settings.clients) as pool:
            list(pool.map(one, range(0, settings.count, per_request)))
        seconds = time.time() - started
        load_after = load_average()
        latencies = []
        for index in range(settings.latency_images):
            before = time.time()
            classify(session, peer, base_url, [images[index % len(images)]])
            latencies.append((time.time() - before) * 1000)
    finally:
        process.stop(timeout=60)
    return {
        "title": f"{peer.label} peer ({peer.batching}, make run's model package, "
        f"{per_request} per request)",
        "unit": "images",
        "images_per_request": per_request,
        "count": settings.count,
        "failed": 0,
        "seconds": seconds,
        "throughput_per_s": settings.count / seconds,
        "load_before": load_before,
        "load_after": load_after,
        "latency_ms": percentiles(latencies),
        "latencies_ms": latencies,
    }
