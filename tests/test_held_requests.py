"""The held process (uvicorn, inferencehub/asgi.py): a job's ?wait= and a batch's event
stream held without a thread each, woken by the services' Redis notifications, and by
polling the database while that Redis is away. Real uvicorn, Redis and MariaDB."""

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
import requests
from rest_framework.authtoken.models import Token

from kafka_wire.contract import ClassScore, InferenceResult
from predictions import pipeline
from predictions.models import Job
from stack import processes
from tests.conftest import PYTHON, free_port
from tests.factories import BatchFactory, JobFactory

pytestmark = pytest.mark.django_db(transaction=True)

FOX = ClassScore(class_id=277, label="red fox", score=0.9)
# Where nothing listens: the held process started with it has no Redis.
NO_REDIS = "redis://127.0.0.1:9/1"


def finish(jobs: list[Job]) -> None:
    """As the result bridge's store task does: one service call for them all."""
    results = [InferenceResult(job_id=str(job.pk), ok=True, predictions=[FOX]) for job in jobs]
    assert pipeline.record_results(results=results) == len(jobs)


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def cpu_seconds_of(pid: int) -> float:
    utime, stime = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]
    return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


async def until_idle(pid: int, limit_s: float = 20) -> None:
    """Until the process has used almost no CPU for half a second: it has taken in what
    it was sent. Hundreds of requests arriving at once take seconds on a busy machine."""
    deadline = time.monotonic() + limit_s
    used = cpu_seconds_of(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        used, before = cpu_seconds_of(pid), used
        if used - before < 0.05:
            return
    raise AssertionError(f"process {pid} still busy after {limit_s} s")


async def get(port: int, path: str, token: str) -> tuple[int, dict, dict]:
    """One HTTP/1.1 GET on a connection of its own: (status, headers, JSON body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, json.loads(body)


@pytest.fixture
def token(user) -> str:
    return Token.objects.create(user=user).key


@pytest.fixture(scope="session")
def held_port(start_process) -> tuple[int, int]:
    """A held process told of changes over Redis that never polls while it is there:
    (port, pid)."""
    port = free_port()
    process = start_process(processes.held(PYTHON, port=port), HELD_POLL_SECONDS="600")
    return port, process.popen.pid


def test_500_held_waits_cost_no_thread_each_and_are_answered_when_their_jobs_finish(
    held_port, user, token
):
    port, pid = held_port
    jobs = [JobFactory(owner=user, status=Job.Status.SUBMITTED) for _ in range(500)]
    threads_before = threads_of(pid)

    async def scenario():
        waits = [
            asyncio.create_task(get(port, f"/api/jobs/{job.pk}/?wait=30", token)) for job in jobs
        ]
        await until_idle(pid)  # every one of them received and held
        assert not any(wait.done() for wait in waits)
        held_threads = threads_of(pid)
        # Meanwhile another request is answered at once.
        started = time.monotonic()
        plain = await asyncio.to_thread(
            requests.get,
            f"http://127.0.0.1:{port}/api/jobs/{jobs[0].pk}/",
            headers={"Authorization": f"Token {token}"},
            timeout=10,
        )
        plain_s = time.monotonic() - started
        await asyncio.to_thread(finish, jobs)
        finished = time.monotonic()
        answers = await asyncio.wait_for(asyncio.gather(*waits), 20)
        return held_threads, plain, plain_s, answers, time.monotonic() - finished

    held_threads, plain, plain_s, answers, answered_s = asyncio.run(scenario())
    assert held_threads <= threads_before + 2 and held_threads < 20, (threads_before, held_threads)
    assert plain.status_code == 200 and plain.json()["status"] == "submitted"
    assert plain_s < 2
    assert [status for status, _, _ in answers] == [200] * 500
    assert {body["status"] for _, _, body in answers} == {"succeeded"}
    assert {body["id"] for _, _, body in answers} == {str(job.pk) for job in jobs}
    # The one shared thread answers them one after another, ~12 ms of CPU each here
    # (docs/performance.md, "Held requests"): 6-8 s on this machine when quiet.
    assert answered_s < 15


def test_a_held_wait_is_woken_by_the_notification_not_by_polling(held_port, user, token):
    port, _ = held_port  # it would poll every 600 s
    job = JobFactory(owner=user, status=Job.Status.SUBMITTED)

    async def scenario():
        wait = asyncio.create_task(get(port, f"/api/jobs/{job.pk}/?wait=20", token))
        await asyncio.sleep(1.5)
        assert not wait.done()
        await asyncio.to_thread(finish, [job])
        finished = time.monotonic()
        answer = await wait
        return answer, time.monotonic() - finished

    (status, _, body), answered_s = asyncio.run(scenario())
    assert status == 200 and body["status"] == "succeeded"
    assert body["predictions"][0]["label"] == "red fox"
    assert answered_s < 1.0


def test_a_held_event_stream_sends_the_change_told_by_the_notification(held_port, user, token):
    port, pid = held_port
    batch = BatchFactory(owner=user)
    job = JobFactory(owner=user, batch=batch, seq=0, status=Job.Status.SUBMITTED)
    url = f"http://127.0.0.1:{port}/api/batches/{batch.pk}/events/?since=0"
    headers = {"Authorization": f"Token {token}"}
    with requests.get(url, headers=headers, stream=True, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = response.iter_lines(decode_unicode=True)
        events = (json.loads(line[6:]) for line in lines if line.startswith("data: "))
        assert next(events)["status"] == "submitted"
        assert next(events)["counts"]["submitted"] == 1
        finish([job])
        finished = time.monotonic()
        changed = next(events)
        answered_s = time.monotonic() - finished
    assert changed["id"] == str(job.pk) and changed["status"] == "succeeded"
    assert answered_s < 1.5


def test_without_redis_a_held_wait_gets_the_result_by_polling(start_process, user, token):
    port = free_port()
    start_process(
        processes.held(PYTHON, port=port, name="held-no-redis"),
        name="held-no-redis",
        CELERY_BROKER_URL=NO_REDIS,
        HELD_POLL_SECONDS="1",
    )
    job = JobFactory(owner=user, status=Job.Status.SUBMITTED)

    async def scenario():
        wait = asyncio.create_task(get(port, f"/api/jobs/{job.pk}/?wait=20", token))
        await asyncio.sleep(1.5)
        assert not wait.done()
        await asyncio.to_thread(finish, [job])
        finished = time.monotonic()
        answer = await wait
        return answer, time.monotonic() - finished

    (status, _, body), answered_s = asyncio.run(scenario())
    assert status == 200 and body["status"] == "succeeded"
    assert answered_s < 3  # a poll's interval (1 s), not the wait's 20 s


def test_the_held_process_middleware_answers_errors_in_the_apps_shape(held_port):
    """Its middleware runs as async code: Django's debug page for a foreign Host header
    (DEBUG, as the tests run) is still replaced by the app's answer (common/errors.py),
    and a page keeps its branded 404."""
    port, _ = held_port
    base = f"http://127.0.0.1:{port}"
    foreign = requests.get(
        f"{base}/api/jobs/{JobFactory.build().pk}/?wait=5",
        headers={"Host": "elsewhere.example"},
        timeout=10,
    )
    assert foreign.status_code == 400
    assert foreign.json() == {"error": "the request is malformed"}
    page = requests.get(f"{base}/no/such/page/", timeout=10)
    assert page.status_code == 404 and page.headers["Content-Type"].startswith("text/html")
    assert "/no/such/page/" in page.text


def test_many_streams_of_one_batch_share_one_reading_per_change(start_process, user, token):
    port = free_port()
    held = start_process(
        processes.held(PYTHON, port=port, name="held-readings"),
        HELD_POLL_SECONDS="600",
        LOG_LEVEL="DEBUG",
    )
    batch = BatchFactory(owner=user)
    jobs = [
        JobFactory(owner=user, batch=batch, seq=n, status=Job.Status.SUBMITTED) for n in range(3)
    ]
    path = f"/api/batches/{batch.pk}/events/?since=0"
    streams = 40

    async def stream_until_succeeded(first_look: asyncio.Event, seen: list) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        while line := await reader.readline():
            if line.startswith(b"event: counts"):
                seen.append("counts")
                if len(seen) == streams:
                    first_look.set()
            if line.startswith(b"data: ") and b'"status": "succeeded"' in line:
                writer.close()
                return

    async def scenario() -> None:
        first_look, seen = asyncio.Event(), []
        tasks = [
            asyncio.create_task(stream_until_succeeded(first_look, seen)) for _ in range(streams)
        ]
        await asyncio.wait_for(first_look.wait(), 30)  # every stream has made its own look
        await asyncio.to_thread(finish, jobs[:1])
        await asyncio.wait_for(asyncio.gather(*tasks), 30)  # every stream was told

    asyncio.run(scenario())
    readings = held.log_path.read_text().count(f"batch {batch.pk} read for its")
    # One change, forty streams: one shared reading (two if a stream's wake came while it
    # was being taken), not one per stream.
    assert 1 <= readings <= 2, readings
