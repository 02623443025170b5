"""gunicorn's settings, read from the working directory by every `gunicorn` started from
the repository root (`make run`, the benchmark, the Docker image).

The web's Prometheus metrics are counted across all worker processes: each process writes
its counts to files in PROMETHEUS_MULTIPROC_DIR and /metrics adds them up
(inferencehub/metrics.py), so a scrape does not see only the process that answered it.
"""

import os
import shutil
import tempfile

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
