"""gunicorn's settings, read from the working directory by every `gunicorn` started from
the repository root (`make run`, the tests, the benchmark, the Docker image). The command
line (stack/processes.py) gives only the address; GUNICORN_CMD_ARGS overrides any of these
for one run.

One process of 4 threads by default (WEB_CONCURRENCY sets the process count): on the 2-core
machine, where the web shares the cores with Celery, the data services and the workers,
one process cost about a tenth less CPU per upload than two (near the run-to-run noise, never
more) and saved a Django process's memory; 8 threads cost more than 4, their requests
contending for the one interpreter lock (docs/performance.md). Give it more processes where
it has cores of its own: one Python process uses about one core.

The web's Prometheus metrics are counted across all worker processes: each process writes
its counts to files in PROMETHEUS_MULTIPROC_DIR and /metrics adds them up
(common/metrics.py), so a scrape does not see only the process that answered it.

Each worker process runs `threads` threads. Held requests (a job's `?wait=`, a batch's
event stream) go to the held process instead (uvicorn, inferencehub/asgi.py), where they
cost no thread: nginx sends them there. One that reaches gunicorn anyway keeps a thread for
up to 30 s, well under `timeout`, so WEB_HELD_REQUESTS is 2 here unless set (held
process: 10000), and the other threads stay free for the rest of the API. With threads = 1
set WEB_HELD_REQUESTS=0.
"""

import os
import shutil
import tempfile

workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
threads = 4
timeout = 120
# Oversized request heads are refused before Django runs; bodies are capped by
# REQUEST_MAX_BYTES (common/uploads.py) from their Content-Length.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190

# Read by inferencehub/settings.py in each worker: keep it below `threads`.
os.environ.setdefault("WEB_HELD_REQUESTS", "2")

# Set before any worker imports prometheus_client, which reads it at import time.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="inferencehub-web-metrics-")
metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server) -> None:
    # Counts left by an earlier server would be added to this one's.
    shutil.rmtree(metrics_dir, ignore_errors=True)
    os.makedirs(metrics_dir)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    shutil.rmtree(metrics_dir, ignore_errors=True)
