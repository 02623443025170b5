"""Small measuring helpers that the benchmark's parts share (bench/run.py, its pipeline
runs, and bench/peer_runs.py, the peers')."""

import contextlib
import os
import time

import requests


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: how busy the shared machine was."""
    return [round(value, 2) for value in os.getloadavg()]


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "count": len(values)}


def wait_for_http(url: str, timeout: float = 60) -> None:
    """Until the server at url answers anything but a server error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=5).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")
