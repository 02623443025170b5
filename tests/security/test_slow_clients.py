"""Slow clients cost nothing (issue 22): connections that stall, or trickle a byte a second,
in their request's head or body, hold none of the app's threads, since nginx reads each
request whole before passing it on; and nginx closes those that stall.

Against the real nginx and gunicorn (the `front_door` fixture). gunicorn alone (4 threads)
left another user's request unanswered for 90 s behind four such connections."""

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from common.limits import CLIENT_IDLE_SECONDS

pytestmark = pytest.mark.services

SLOW_CONNECTIONS = 8
# Generous: another request through the front door normally takes milliseconds.
ANSWERED_WITHIN_S = 10
STALLED_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: b"
BODY_HEAD = (
    b"POST /api/jobs/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Length: 100000\r\n\r\n"
)


def connect(front_door: str) -> socket.socket:
    parts = urlsplit(front_door)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


@contextlib.contextmanager
def slow_clients(front_door: str, first: bytes, then_each_second: bytes) -> Iterator[None]:
    """SLOW_CONNECTIONS connections that send `first`, then `then_each_second` once a second
    (nothing if empty) until the block ends."""
    stop = threading.Event()
    sockets = [connect(front_door) for _ in range(SLOW_CONNECTIONS)]

    def trickle(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # closed by the proxy: fine
            sock.sendall(first)
            while then_each_second and not stop.wait(1):
                sock.sendall(then_each_second)

    threads = [threading.Thread(target=trickle, args=(s,), daemon=True) for s in sockets]
    for thread in threads:
        thread.start()
    time.sleep(1)  # every slow connection has sent its first bytes
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for sock in sockets:
            sock.close()


def assert_answered(front_door: str) -> None:
    response = requests.get(f"{front_door}/healthz", timeout=ANSWERED_WITHIN_S)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("first", "then_each_second"),
    [
        pytest.param(STALLED_HEAD, b"", id="head-stalled"),
        pytest.param(b"G", b"E", id="head-a-byte-a-second"),
        pytest.param(BODY_HEAD, b"", id="body-stalled"),
        pytest.param(BODY_HEAD, b"x", id="body-a-byte-a-second"),
    ],
)
def test_the_app_answers_while_slow_connections_are_open(front_door, first, then_each_second):
    with slow_clients(front_door, first, then_each_second):
        for _ in range(3):
            assert_answered(front_door)
            time.sleep(1)


def closed_by_peer_within(sock: socket.socket, seconds: float) -> bytes:
    """What the peer sent before closing the connection; fails if it is still open."""
    sock.settimeout(seconds)
    received = b""
    with contextlib.suppress(ConnectionResetError):  # closed with a reset: closed all the same
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize("stalled", [STALLED_HEAD, BODY_HEAD + b"x" * 10], ids=["head", "body"])
def test_the_proxy_closes_a_connection_stalled_in_its_request(front_door, stalled):
    with connect(front_door) as sock:
        sock.sendall(stalled)
        # A timeout (socket.timeout) here means the proxy left the connection open.
        received = closed_by_peer_within(sock, CLIENT_IDLE_SECONDS + 20)
    # nginx closes a stalled head without an answer, a stalled body with a 408.
    assert received == b"" or received.startswith(b"HTTP/1.1 408")


def test_the_proxy_closes_a_connection_whose_head_trickles_past_the_idle_limit(front_door):
    """A head must arrive whole within CLIENT_IDLE_SECONDS, however steadily it trickles."""
    with connect(front_door) as sock:
        started = time.monotonic()
        with contextlib.suppress(OSError):  # broken pipe once the proxy has closed it
            for byte in STALLED_HEAD:
                sock.sendall(bytes([byte]))
                time.sleep(1)
        received = closed_by_peer_within(sock, CLIENT_IDLE_SECONDS + 20)
    assert received == b""
    assert time.monotonic() - started < len(STALLED_HEAD)
