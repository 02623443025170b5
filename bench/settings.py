"""Benchmark overrides (`manage.py benchmark`, `make bench`). Like the test settings, each
run has its own Kafka topics, Celery queue, database and media folder, so a benchmark does
not disturb a `make run` stack or a test run on the same services. The processes the
benchmark starts get the same values through their environment."""

import os
import uuid

from kafka_wire.config import kafka_names

BENCH_RUN_ID = RUN_ID = os.environ.setdefault("INFERENCEHUB_BENCH_RUN_ID", uuid.uuid4().hex[:8])
# Each configuration of a run gets its own topics (see bench/run.py); these are the defaults.
for name, value in kafka_names(f"bench-{RUN_ID}").items():
    os.environ.setdefault(name, value)
# Set, not defaulted: the benchmark deletes this folder when it ends.
os.environ["MEDIA_ROOT"] = f"/tmp/inferencehub-bench-{RUN_ID}"
os.environ.setdefault("MODEL_WEIGHTS", "random")
# Production settings: DEBUG off (with it, every query is recorded and formatted). The
# processes serve plain HTTP on 127.0.0.1, so no HTTPS redirect.
os.environ.setdefault("DJANGO_DEBUG", "false")
os.environ.setdefault("DJANGO_SECRET_KEY", uuid.uuid4().hex * 2)
os.environ.setdefault("DJANGO_SECURE_SSL_REDIRECT", "false")
# The benchmark's clients upload far faster than any person.
os.environ.setdefault("API_THROTTLE_USER", "100000000/hour")
os.environ.setdefault("API_THROTTLE_ANON", "100000000/hour")

from inferencehub.settings import *  # noqa: E402,F403
from inferencehub.settings import CELERY_BROKER_TRANSPORT_OPTIONS, DATABASES  # noqa: E402

# The benchmark creates this database when it starts and drops it when it ends; the
# test_ prefix is the one the stack grants the project user the right to create.
DATABASES["default"]["TEST"]["NAME"] = f"test_inferencehub_bench_{RUN_ID}"
# Every Redis key of Celery (its queues, unacked tasks) under a prefix of this run's own:
# the queue names stay those of stack/processes.py, which the worker command lines name.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    **CELERY_BROKER_TRANSPORT_OPTIONS,
    "global_keyprefix": f"bench-{RUN_ID}:",
}
