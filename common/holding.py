"""Requests held open: a job's `?wait=N` and a batch's event stream.

In the held process (uvicorn, inferencehub/asgi.py) a held request costs no thread, only
a little memory, so WEB_HELD_REQUESTS is a high safety limit per process (10000 by
default). gunicorn.conf.py lowers it to 2 for gunicorn's processes, where a held request
that reaches them anyway keeps one of their 4 threads. A request that finds the limit
reached is answered at once (`?wait`) or told to come back (the stream), never queued.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

_lock = threading.Lock()
_held = 0


@contextmanager
def held_slot() -> Iterator[bool]:
    """Yields whether this request may be held; frees its slot on leaving."""
    global _held
    with _lock:
        acquired = _held < settings.WEB_HELD_REQUESTS
        if acquired:
            _held += 1
    try:
        yield acquired
    finally:
        if acquired:
            with _lock:
                _held -= 1
