"""Requests held open: a job's `?wait=N` and a batch's event stream.

gunicorn runs each web process with a few threads (4, gunicorn.conf.py, under make run
and in the deployments), and a held request keeps one of them. So at most WEB_HELD_REQUESTS of
them per process may be held at once; the others stay free for the rest of the API. A
request that finds no free slot is answered at once (`?wait`) or told to come back
(the stream), never queued behind the held ones.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

_lock = threading.Lock()
_slots: threading.BoundedSemaphore | None = None
_size: int | None = None


def _semaphore() -> threading.BoundedSemaphore | None:
    global _slots, _size
    with _lock:
        if _size != settings.WEB_HELD_REQUESTS:
            _size = settings.WEB_HELD_REQUESTS
            _slots = threading.BoundedSemaphore(_size) if _size else None
        return _slots


@contextmanager
def held_slot() -> Iterator[bool]:
    """Yields whether this request may be held; frees its slot on leaving."""
    slots = _semaphore()
    acquired = slots is not None and slots.acquire(blocking=False)
    try:
        yield acquired
    finally:
        if acquired:
            slots.release()
