"""`manage.py loadtest`: the front door and the fair share under real traffic, against a
running stack (`make run`), in one run (docs/performance.md, "Under real traffic").

Four parts, each reported side by side with figures of the same run taken without its load
(user B's light-load latency; for cancel, A's run without cancelling):
- front: /healthz and a normal job read while many event streams, `?wait=` clients and
  slow uploads (a few KB/s) are open; and how many held requests were refused;
- backlog: user B's single upload, from upload to stored result, while user A has a large
  backlog queued;
- big: the same while A uploads large WEBPs;
- cancel: A's throughput at saturation without cancelling, then with half of an equal
  backlog cancelled job by job mid-stream, and how many of the cancelled jobs were still
  inferred (read back from the workers' own results on Kafka).

The clients are threads of this process: a held request here costs a thread, which is the
client's cost, not the server's.
"""

import contextlib
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests

from bench.run import cpu_seconds, percentiles, service_pids
from kafka_wire.contract import InferenceResult

# The cancel part's target: at most this share of the jobs cancelled may still be inferred.
CANCELLED_INFERRED_TARGET = 0.05


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


def upload(
    s: requests.Session,
    base_url: str,
    files: list[tuple[str, bytes]],
    fields: dict[str, str] | None = None,
) -> list[str]:
    parts = [("image", (name, data, "application/octet-stream")) for name, data in files]
    response = s.post(f"{base_url}/api/jobs/", files=parts, data=fields or {}, timeout=300)
    if response.status_code != 202:
        raise RuntimeError(f"upload refused: {response.status_code} {response.text[:300]}")
    body = response.json()
    return [job["id"] for job in body.get("jobs", [body])]


def result_latency_ms(
    s: requests.Session,
    base_url: str,
    image: tuple[str, bytes],
    fields: dict[str, str] | None = None,
) -> float:
    """One upload (of these form fields), then `?wait=` until its result is stored: the
    time a user sees."""
    started = time.monotonic()
    [job_id] = upload(s, base_url, [image], fields)
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
    a_jobs, seconds = upload_all(users, backlog, per_request)
    log(f"A queued {len(a_jobs)} jobs in {seconds:.1f} s; B uploads one")
    b_ms = result_latency_ms(session(users.token_b), users.base_url, image)
    return {
        "a_jobs": len(a_jobs),
        "a_job_ids": a_jobs,
        "b_ms": b_ms,
        "ratio_to_light": b_ms / light_ms,
    }


LOW, HIGH = {"priority": "low"}, {"priority": "high"}


def high_behind_low(
    users: Users,
    *,
    backlog: list[tuple[str, bytes]],
    per_request: int,
    image: tuple[str, bytes],
    light_ms: float,
    log: Callable[[str], None] = print,
) -> dict:
    """A queues `backlog` at low priority; then A itself uploads one image at high: its
    latency is the lanes' alone (owners' turns do not help A pass its own jobs)."""
    a_jobs, seconds = upload_all(users, backlog, per_request, LOW)
    log(f"A queued {len(a_jobs)} low jobs in {seconds:.1f} s; one high")
    high_ms = result_latency_ms(session(users.token_a), users.base_url, image, HIGH)
    return {
        "a_jobs": len(a_jobs),
        "a_job_ids": a_jobs,
        "high_ms": high_ms,
        "ratio_to_light": high_ms / light_ms,
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def upload_all(
    users: Users,
    images: list[tuple[str, bytes]],
    per_request: int,
    fields: dict[str, str] | None = None,
) -> tuple[list[str], float]:
    """A uploads images in requests of per_request, each with fields; their job ids in
    upload order, and the seconds it took."""
    a = session(users.token_a)
    started = time.monotonic()
    job_ids: list[str] = []
    for start in range(0, len(images), per_request):
        job_ids += upload(a, users.base_url, images[start : start + per_request], fields)
    return job_ids, time.monotonic() - started


@dataclass(frozen=True)
class CancelAnswer:
    job_id: str
    status: int  # 0: no answer
    answered_at: float  # epoch seconds, on this machine's clock (the workers' too)
    ms: float


def cancel_each(users: Users, job_ids: list[str], threads: int) -> list[CancelAnswer]:
    """POST /api/jobs/{id}/cancel/ for each job, from `threads` client threads (a session
    each), as a client cancelling job by job would."""
    local = threading.local()

    def cancel(job_id: str) -> CancelAnswer:
        if not hasattr(local, "session"):
            local.session = session(users.token_a)
        started = time.monotonic()
        try:
            url = f"{users.base_url}/api/jobs/{job_id}/cancel/"
            status = local.session.post(url, timeout=60).status_code
        except requests.RequestException:
            status = 0
        return CancelAnswer(job_id, status, time.time(), (time.monotonic() - started) * 1000)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(cancel, job_ids))


def cancellation_summary(
    cancelled_at: dict[str, float],
    sent: set[str],
    results: list[InferenceResult],
    target: float = CANCELLED_INFERRED_TARGET,
) -> dict:
    """What became of the jobs cancelled: cancelled_at, each job whose cancel was answered
    200 and when (epoch s); sent, the jobs whose request was found in Kafka; results, every
    result the workers produced meanwhile (any job's, redeliveries included).

    A cancelled job counts as inferred when a worker produced a result with predictions for
    it, whenever that was: the work was done either way. When, against the time its cancel
    was answered (by then the cancellation had been handed to Kafka): inferred already
    (only the storing was left), under way (in a batch being inferred), or begun after
    (one a worker could have dropped). A job sent but never answered is one a worker
    dropped.
    """
    answered: dict[str, InferenceResult] = {}
    for result in results:
        # Inferred beats answered otherwise (an expired or failed result).
        if result.job_id in cancelled_at and (result.ok or result.job_id not in answered):
            answered[result.job_id] = result
    inferred = {job_id: r for job_id, r in answered.items() if r.ok}
    done = began_after = 0
    for job_id, result in inferred.items():
        ended_s = result.inferred_at_ms / 1000
        done += ended_s <= cancelled_at[job_id]
        began_after += ended_s - result.inference_ms / 1000 > cancelled_at[job_id]
    sent_cancelled = sent & cancelled_at.keys()
    count = len(cancelled_at)
    share = len(inferred) / count if count else 0.0
    return {
        "cancelled": count,
        "sent_to_kafka": len(sent_cancelled),
        "never_sent": count - len(sent_cancelled),
        "inferred": len(inferred),
        "inferred_before_cancel_answered": done,
        "inferred_while_cancel_answered": len(inferred) - done - began_after,
        "inference_began_after_cancel_answered": began_after,
        "answered_without_inference": len(answered) - len(inferred),
        "dropped_by_workers": len(sent_cancelled - answered.keys()),
        # Answered though no request was found: none unless a request predates the read.
        "answered_not_found_sent": len(answered.keys() - sent),
        "inferred_share": share,
        "target_share": target,
        "target_met": share <= target,
    }


# make run's app processes (stack/processes.py), each known by a word of its command line.
APP_PROCESSES = (
    ("gunicorn", "web"),
    ("uvicorn", "held"),
    ("nginx", "proxy"),
    ("run_worker", "worker"),
    ("consume_results", "bridge"),
    (" beat ", "beat"),
    ("--queues preprocess", "celery"),
    ("--queues results", "celery-results"),
    ("--queues webhooks", "celery-webhooks"),
)


def process_name(cmdline: str) -> str:
    return next((name for word, name in APP_PROCESSES if word in cmdline), "other")


def stack_cpu_seconds(supervisor_pid_file: Path) -> dict[str, float]:
    """CPU seconds used so far by each app process of a make run stack (with its children:
    gunicorn's and Celery's workers) and by its data services; {} for a stack this machine
    does not run. Taken before and after a part: what the stack spent on it, whatever else
    the machine was doing meanwhile."""
    used: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError):
        supervisor = int(supervisor_pid_file.read_text().strip())
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != supervisor:
                    continue
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                name = process_name(f" {cmdline} ")
                used[name] = used.get(name, 0.0) + cpu_seconds([int(stat.parent.name)])
    if used:
        used.update({name: cpu_seconds(pids) for name, pids in service_pids().items()})
    return used


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each process (and all together, "total") spent between two readings."""
    spent = {name: round(after[name] - before.get(name, 0.0), 1) for name in after}
    return {**spent, "total": round(sum(spent.values()), 1)} if spent else {}
