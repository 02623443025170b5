"""`manage.py loadtest`: the front door and the fair share under real traffic, against a
running stack (`make run`), in one run (docs/performance.md, "Under real traffic").

Three parts, each reported side by side with the light-load figures of the same run:
- front: /healthz and a normal job read while many event streams, `?wait=` clients and
  slow uploads (a few KB/s) are open; and how many held requests were refused;
- backlog: user B's single upload, from upload to stored result, while user A has a large
  backlog queued;
- big: the same while A uploads large WEBPs.

The clients are threads of this process: a held request here costs a thread, which is the
client's cost, not the server's.
"""

import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

from bench.run import percentiles


@dataclass
class Users:
    """The base URL and the two users' API tokens (made by the command)."""

    base_url: str
    token_a: str
    token_b: str


@dataclass
class Refusals:
    lock: threading.Lock = field(default_factory=threading.Lock)
    held: int = 0
    held_answered: int = 0
    errors: list[str] = field(default_factory=list)

    def count(self, refused: bool, error: str = "") -> None:
        with self.lock:
            self.held_answered += 1
            self.held += refused
            if error and len(self.errors) < 10:
                self.errors.append(error)


def session(token: str) -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"Token {token}"
    return s


def upload(s: requests.Session, base_url: str, files: list[tuple[str, bytes]]) -> list[str]:
    parts = [("image", (name, data, "application/octet-stream")) for name, data in files]
    response = s.post(f"{base_url}/api/jobs/", files=parts, timeout=300)
    if response.status_code != 202:
        raise RuntimeError(f"upload refused: {response.status_code} {response.text[:300]}")
    body = response.json()
    return [job["id"] for job in body.get("jobs", [body])]


def result_latency_ms(s: requests.Session, base_url: str, image: tuple[str, bytes]) -> float:
    """One upload, then `?wait=` until its result is stored: the time a user sees."""
    started = time.monotonic()
    [job_id] = upload(s, base_url, [image])
    while True:
        job = s.get(f"{base_url}/api/jobs/{job_id}/?wait=30", timeout=60).json()
        if job["status"] in ("succeeded", "failed"):
            return (time.monotonic() - started) * 1000
        if time.monotonic() - started > 900:
            raise RuntimeError(f"job {job_id} unfinished after 900 s")


def light_load_ms(users: Users, image: tuple[str, bytes], count: int) -> list[float]:
    s = session(users.token_b)
    return [result_latency_ms(s, users.base_url, image) for _ in range(count)]


def hold_event_stream(url: str, token: str, stop: threading.Event, refusals: Refusals) -> None:
    s = session(token)
    while not stop.is_set():
        try:
            with s.get(url, stream=True, timeout=(10, 60)) as response:
                if response.status_code != 200:
                    refusals.count(True, f"stream {response.status_code}")
                    time.sleep(1)
                    continue
                first = True
                for line in response.iter_lines(decode_unicode=True):
                    if first and "held request" in (line or ""):
                        refusals.count(True, line)
                        break
                    if first:
                        refusals.count(False)
                        first = False
                    if stop.is_set():
                        return
        except requests.RequestException as error:
            refusals.count(True, f"stream {type(error).__name__}")
            time.sleep(1)


def hold_wait(url: str, token: str, stop: threading.Event, refusals: Refusals) -> None:
    s = session(token)
    while not stop.is_set():
        try:
            response = s.get(url, timeout=60)
            refused = response.status_code != 200 or "Retry-After" in response.headers
            refusals.count(refused, f"wait {response.status_code}" if refused else "")
            if refused:
                time.sleep(1)
        except requests.RequestException as error:
            refusals.count(True, f"wait {type(error).__name__}")
            time.sleep(1)


def slow_upload(base_url: str, token: str, image: tuple[str, bytes], bytes_per_s: int) -> int:
    """An upload whose body is sent at bytes_per_s, as a slow mobile client would; returns
    the status code it got (0 when the connection was closed without an answer)."""
    boundary = uuid.uuid4().hex
    name, data = image
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    address = urlsplit(base_url)
    head = (
        f"POST /api/jobs/ HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Token {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    chunk = max(1, bytes_per_s // 10)
    with socket.create_connection((address.hostname, address.port or 80), timeout=120) as sock:
        try:
            sock.sendall(head)
            for start in range(0, len(body), chunk):
                sock.sendall(body[start : start + chunk])
                time.sleep(0.1)
            answer = sock.recv(64)
        except OSError:
            return 0
    return int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0


def sample_latencies(
    get: Callable[[], requests.Response], seconds: float, every_s: float
) -> list[float]:
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        response = get()
        latencies.append((time.monotonic() - started) * 1000 if response.ok else float("inf"))
        time.sleep(max(0.0, every_s - (time.monotonic() - started)))
    return latencies


def front_door(
    users: Users,
    *,
    batch_id: str,
    unfinished_job_id: str,
    finished_job_id: str,
    image: tuple[str, bytes],
    streams: int,
    waits: int,
    slow_uploads: int,
    slow_bytes_per_s: int,
    seconds: float,
    log: Callable[[str], None] = print,
) -> dict:
    """Opens the held requests and slow uploads, then samples /healthz and a job read."""
    base = users.base_url
    stop = threading.Event()
    refusals = Refusals()
    stream_url = f"{base}/api/batches/{batch_id}/events/"
    wait_url = f"{base}/api/jobs/{unfinished_job_id}/?wait=30"
    holders = [
        threading.Thread(target=hold_event_stream, args=(stream_url, users.token_a, stop, refusals))
        for _ in range(streams)
    ] + [
        threading.Thread(target=hold_wait, args=(wait_url, users.token_a, stop, refusals))
        for _ in range(waits)
    ]
    for thread in holders:
        thread.daemon = True
        thread.start()
    slow = ThreadPoolExecutor(slow_uploads or 1)
    slow_answers = [
        slow.submit(slow_upload, base, users.token_a, image, slow_bytes_per_s)
        for _ in range(slow_uploads)
    ]
    time.sleep(3)  # let every connection open before sampling
    log(f"front: {streams} streams, {waits} waits, {slow_uploads} slow uploads open")
    b = session(users.token_b)
    health, job = [], []
    sampler = threading.Thread(
        target=lambda: health.extend(
            sample_latencies(lambda: requests.get(f"{base}/healthz", timeout=30), seconds, 0.1)
        )
    )
    sampler.start()
    job.extend(
        sample_latencies(
            lambda: b.get(f"{base}/api/jobs/{finished_job_id}/", timeout=30), seconds, 0.1
        )
    )
    sampler.join()
    stop.set()
    # Taken now: the holders still running end with their next answer, after the test.
    with refusals.lock:
        held = {
            "held_answers": refusals.held_answered,
            "held_refused": refusals.held,
            "held_errors": list(refusals.errors),
        }
    statuses = [answer.result() for answer in slow_answers]
    slow.shutdown()
    return {
        "healthz_ms": percentiles(health),
        "job_read_ms": percentiles(job),
        **held,
        "slow_upload_statuses": sorted(statuses),
    }


def b_under_backlog(
    users: Users,
    *,
    backlog: list[tuple[str, bytes]],
    per_request: int,
    image: tuple[str, bytes],
    light_ms: float,
    log: Callable[[str], None] = print,
) -> dict:
    """A queues `backlog` in requests of per_request files; then B uploads one image."""
    a = session(users.token_a)
    started = time.monotonic()
    a_jobs: list[str] = []
    for start in range(0, len(backlog), per_request):
        a_jobs += upload(a, users.base_url, backlog[start : start + per_request])
    log(f"A queued {len(a_jobs)} jobs in {time.monotonic() - started:.1f} s; B uploads one")
    b_ms = result_latency_ms(session(users.token_b), users.base_url, image)
    return {
        "a_jobs": len(a_jobs),
        "a_job_ids": a_jobs,
        "b_ms": b_ms,
        "ratio_to_light": b_ms / light_ms,
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
