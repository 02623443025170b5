"""Test overrides. Processes the tests start (Celery, workers, bridge) get the same values
through their environment: see tests/conftest.py."""

import os
import uuid

from kafka_wire.config import kafka_names
from stack.common import redis_url

# One run's topics are its own, so a `make run` stack on the same services is not
# disturbed and a previous run's leftovers are not read.
RUN_ID = os.environ.setdefault("INFERENCEHUB_TEST_RUN_ID", uuid.uuid4().hex[:8])
for name, value in kafka_names(f"test-{RUN_ID}").items():
    os.environ.setdefault(name, value)
os.environ.setdefault("KAFKA_TOPIC_PARTITIONS", "4")
os.environ.setdefault("CELERY_BROKER_URL", redis_url(1))
os.environ.setdefault("MEDIA_ROOT", f"/tmp/inferencehub-test-{RUN_ID}/media")
os.environ.setdefault("MODEL_WEIGHTS", "random")
os.environ.setdefault("ALLOW_ANONYMOUS_UPLOADS", "false")
# As under `make run`: the seed API's clients call it without credentials.
os.environ.setdefault("SEED_API_ANONYMOUS", "true")
# The whole suite makes its anonymous requests from 127.0.0.1.
os.environ.setdefault("API_THROTTLE_ANON", "100000/hour")
os.environ.setdefault("PAGE_THROTTLE", "100000/hour")

from inferencehub.settings import *  # noqa: E402,F403
from inferencehub.settings import CACHES, CELERY_BROKER_TRANSPORT_OPTIONS, DATABASES  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Own test database and Celery queues per run, so two runs on one machine do not collide.
DATABASES["default"]["TEST"]["NAME"] = f"test_inferencehub_{RUN_ID}"
# Every Redis key of Celery (its queues, unacked tasks) under a prefix of this run's own:
# the queue names stay those of stack/processes.py, which the worker command lines name.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    **CELERY_BROKER_TRANSPORT_OPTIONS,
    "global_keyprefix": f"test-{RUN_ID}:",
}
# Throttle counts are per user id, and every run numbers its users from 1.
CACHES["default"]["KEY_PREFIX"] = f"test-{RUN_ID}"
# Job notifications: Redis pub/sub channels are shared by every database number.
NOTIFY_CHANNEL_PREFIX = f"test-{RUN_ID}"
