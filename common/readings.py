"""Readings kept a few seconds per process: a fact that changes rarely (the model registry,
an API token's owner) read once for many requests instead of once per request."""

import math
import time
from collections.abc import Callable


def kept_reading(readings: dict, key, max_age_s: float, read: Callable):
    """readings[key] if it was read at most max_age_s ago, else read() kept as it. An
    exception of read() leaves the old reading and goes to the caller."""
    taken, value = readings.get(key, (-math.inf, None))
    if time.monotonic() - taken <= max_age_s:
        return value
    value = read()
    readings[key] = (time.monotonic(), value)
    return value
