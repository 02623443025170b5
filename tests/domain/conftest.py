"""The domain tests: the upload intake, the pipeline's transitions and the access rules,
run by `make test-fast` on SQLite in memory and by `make test` on MariaDB (tests/conftest.py).

What they show is the domain's own rules, so the services around it are fakes here: the
image store is Django's InMemoryStorage, the cache (the dispatcher's round-robin turn)
Django's local-memory one, and Celery, the Kafka producer and the Redis notifications are
recorders. Their real counterparts are tested against real services elsewhere (e.g.
tests/test_services.py, tests/test_pipeline.py). Callbacks run after commit only inside
`django_capture_on_commit_callbacks(execute=True)`, since each test is one transaction.

Each module here is marked `domain` and `django_db` (its pytestmark).
"""

from dataclasses import dataclass, field

import pytest
from celery import current_app
from django.core.cache import cache
from django.core.files.storage import Storage, storages

from common import notifications
from predictions import pipeline


@pytest.fixture(autouse=True)
def image_store(settings) -> Storage:
    """The store of originals and thumbnails, in memory: empty for each test."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
    }
    # The instance itself, which default_storage (the jobs' image field's) wraps.
    return storages["default"]


@pytest.fixture(autouse=True)
def local_cache(settings) -> None:
    """The cache in this process's memory, empty for each test."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    cache.clear()


@dataclass
class SentTasks:
    """The Celery tasks sent, by name, each with its arguments."""

    calls: list[tuple[str, list]] = field(default_factory=list)

    def preprocessed(self) -> list[list[str]]:
        """The job ids of each preprocessing task sent, in order."""
        return [args[0] for name, args in self.calls if name == pipeline.PREPROCESS_TASK]


@pytest.fixture(autouse=True)
def sent_tasks(monkeypatch) -> SentTasks:
    sent = SentTasks()

    def send_task(name: str, args=(), **_options) -> None:
        sent.calls.append((name, list(args)))

    monkeypatch.setattr(current_app._get_current_object(), "send_task", send_task)
    return sent


class Published(dict):
    """The requests handed to Kafka, by topic; headers: each job's record headers."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: dict[str, list] = {}


@pytest.fixture(autouse=True)
def published_requests(monkeypatch) -> Published:
    """The requests handed to Kafka, by topic; `refuse` in it makes the producer raise, as
    it does when Kafka does not take them."""
    published = Published()

    def publish_requests(by_topic: dict, headers: dict | None = None) -> None:
        if "refuse" in published:
            raise published["refuse"]
        for topic, requests in by_topic.items():
            published.setdefault(topic, []).extend(requests)
        published.headers.update(headers or {})

    monkeypatch.setattr(pipeline, "publish_requests", publish_requests)
    return published


@pytest.fixture(autouse=True)
def notified(monkeypatch) -> set[str]:
    """The notification channels published on (jobs and batches told of a change)."""
    channels: set[str] = set()
    monkeypatch.setattr(notifications, "publish", channels.update)
    return channels
