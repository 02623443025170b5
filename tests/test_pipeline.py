"""The whole pipeline through real processes: upload -> Celery -> Kafka -> two ResNet50
workers -> Kafka -> bridge -> Celery -> MariaDB, with random weights."""

import functools
import http.server
import json
import subprocess
import threading
import time
import uuid

import numpy as np
import pytest
import requests
from confluent_kafka import Consumer, Producer
from django.conf import settings

from kafka_wire.config import consumer_config, producer_config
from kafka_wire.contract import (
    ClassScore,
    InferenceRequest,
    InferenceResult,
    encode_request,
    encode_result,
)
from predictions import uploads
from predictions.models import Job
from predictions.pipeline import fail_job, record_results
from tests.conftest import DATA, REPO
from tests.factories import JobFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PHOTOS = ("bolete.jpg", "fox.png", "toaster.png")


def wait_until_finished(job_ids, timeout: float = 180) -> list[Job]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = list(Job.objects.filter(pk__in=job_ids))
        if len(jobs) == len(job_ids) and all(job.is_finished for job in jobs):
            return jobs
        time.sleep(0.25)
    states = dict(Job.objects.filter(pk__in=job_ids).values_list("pk", "status"))
    raise AssertionError(f"jobs not finished within {timeout}s: {states}")


def upload(api, *names: str, **fields) -> list[str]:
    files = [
        ("image", (name, (DATA / name).read_bytes(), "application/octet-stream")) for name in names
    ]
    response = api.post(f"{api.base_url}/api/jobs/", files=files, data=fields)
    assert response.status_code == 202, response.text
    body = response.json()
    return [job["id"] for job in body.get("jobs", [body])]


def test_three_real_photos_reach_succeeded_with_sorted_top_k(pipeline, api):
    job_ids = upload(api, *PHOTOS, top_k="5")
    wait_until_finished(job_ids)
    for job_id in job_ids:
        body = api.get(f"{api.base_url}/api/jobs/{job_id}/").json()
        assert body["status"] == "succeeded", body
        scores = [p["score"] for p in body["predictions"]]
        assert len(scores) == 5
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) <= 1 + 1e-5
        assert all(0 <= p["class_id"] < 1000 and p["label"] for p in body["predictions"])
        assert body["model"]["name"] == "resnet50"
        assert body["model"]["weights"] == "random"
        assert body["model"]["worker"]
        timings = body["timings"]
        for stage in ("uploaded_at", "preprocessed_at", "submitted_at", "inferred_at", "stored_at"):
            assert timings[stage], stage
        assert timings["uploaded_at"] <= timings["preprocessed_at"] <= timings["submitted_at"]
        assert timings["total_ms"] > 0


def test_jobs_list_filters_by_status_and_batch(pipeline, api):
    batch = api.post(f"{api.base_url}/api/batches/").json()["id"]
    job_ids = upload(api, "bolete.jpg", "fox.png", batch=batch)
    upload(api, "toaster.png")
    wait_until_finished(job_ids)
    listed = api.get(f"{api.base_url}/api/jobs/", params={"batch": batch}).json()
    assert listed["count"] == 2
    assert {job["id"] for job in listed["results"]} == set(job_ids)
    succeeded = api.get(f"{api.base_url}/api/jobs/", params={"status": "succeeded"}).json()
    assert set(job_ids) <= {job["id"] for job in succeeded["results"]}
    detail = api.get(f"{api.base_url}/api/batches/{batch}/", params={"seq_start": 1}).json()
    assert detail["counts"]["succeeded"] == 2
    assert [job["seq"] for job in detail["jobs"]] == [1]


def test_seed_compatible_api_register_image_result(pipeline, live_server):
    base = live_server.url
    registered = requests.post(f"{base}/register", json={})
    assert registered.status_code == 200
    batch = registered.json()["uuid"]
    for seq, name in enumerate(PHOTOS):
        response = requests.post(
            f"{base}/image",
            data={"uuid": batch, "seq": str(seq), "topk": "3"},
            files={"payload": (name, (DATA / name).read_bytes(), "application/octet-stream")},
        )
        assert response.status_code == 200, response.text
        assert response.content == b""
    bad = requests.post(
        f"{base}/image",
        data={"uuid": batch, "seq": "9", "topk": "3"},
        files={"payload": ("x.jpg", b"not an image", "application/octet-stream")},
    )
    assert bad.status_code == 400 and "not an image" in bad.json()["error"]
    wait_until_finished(list(Job.objects.filter(batch_id=batch).values_list("pk", flat=True)))
    items = requests.get(
        f"{base}/result", params={"uuid": batch, "seqStart": 1, "seqEnd": 2}
    ).json()
    assert [item["seq"] for item in items["items"]] == [1, 2]
    imagenet_short_names = {
        line.split(",")[0].strip()
        for line in (REPO / "serving" / "imagenet_labels.txt").read_text().splitlines()
    }
    for item in items["items"]:
        assert len(item["predictions"]) == 3
        assert all(label in imagenet_short_names for label in item["predictions"])


class FirstImageAnswerLost(http.server.ThreadingHTTPServer):
    """An HTTP proxy to the server that forwards every request, but hangs up instead of
    passing on the answer to the first POST /image: the server stored the image, and the
    client never hears so."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.lost: list[str] = []  # the Idempotency-Key of the image whose answer was lost
        self.keys: list[str] = []  # every POST /image's key, in order
        super().__init__(("127.0.0.1", 0), ForwardingHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class ForwardingHandler(http.server.BaseHTTPRequestHandler):
    server: FirstImageAnswerLost

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        self.rfile.readline()
        return b"".join(chunks)

    def forward(self) -> None:
        body = self.body() if self.command == "POST" else None
        headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
        answer = requests.request(
            self.command, self.server.upstream + self.path, data=body, headers=headers, timeout=60
        )
        if self.command == "POST" and self.path == "/image":
            key = self.headers.get("Idempotency-Key", "")
            self.server.keys.append(key)
            if not self.server.lost:
                self.server.lost.append(key)
                self.close_connection = True
                return
        self.send_response(answer.status_code)
        for name in ("Content-Type", "Idempotent-Replayed"):
            if name in answer.headers:
                self.send_header(name, answer.headers[name])
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = forward

    def log_message(self, *args) -> None:
        pass


def test_node_client_registers_uploads_and_prints_every_result(pipeline, live_server):
    """Through a proxy that loses the first image's answer: the client sends that image
    again with its Idempotency-Key, and the server makes no second job of it."""
    proxy = FirstImageAnswerLost(live_server.url)
    completed = subprocess.run(
        [
            "node",
            str(REPO / "client-demo" / "client.js"),
            "--server",
            proxy.url,
            "--dir",
            str(DATA),
            "--loops",
            "2",
            "--topk",
            "3",
            "--timeout",
            "180",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    proxy.shutdown()
    proxy.server_close()
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = [json.loads(line) for line in completed.stdout.splitlines()]
    results = [line for line in lines if line["type"] == "result"]
    assert sorted(r["seq"] for r in results) == list(range(6))
    assert all(len(r["predictions"]) == 3 for r in results)
    assert lines[-1]["type"] == "summary" and lines[-1]["done"] == 6
    assert len(proxy.keys) == 7 and len(set(proxy.keys)) == 6, proxy.keys
    assert proxy.keys.count(proxy.lost[0]) == 2
    assert Job.objects.filter(batch_id=lines[-1]["uuid"]).count() == 6


def test_node_client_skips_a_refused_file_and_still_prints_every_result(
    pipeline, live_server, tmp_path
):
    for name in ("a-bolete.jpg", "c-fox.png"):
        (tmp_path / name).write_bytes((DATA / name[2:]).read_bytes())
    (tmp_path / "b-broken.jpg").write_bytes(b"not a jpeg at all")
    client = [str(REPO / "client-demo" / "client.js"), "--server", live_server.url]
    completed = subprocess.run(
        ["node", *client, "--dir", str(tmp_path), "--timeout", "180", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 1, completed.stdout + completed.stderr
    lines = [json.loads(line) for line in completed.stdout.splitlines()]
    by_type = {
        kind: [line for line in lines if line["type"] == kind] for kind in ("result", "refused")
    }
    assert sorted((r["seq"], r["file"]) for r in by_type["result"]) == [
        (0, "a-bolete.jpg"),
        (2, "c-fox.png"),
    ]
    assert [(r["seq"], r["file"]) for r in by_type["refused"]] == [(1, "b-broken.jpg")]
    assert "not an image" in by_type["refused"][0]["error"]
    summary = lines[-1]
    assert summary["type"] == "summary"
    assert (summary["done"], summary["total"], summary["refused"]) == (2, 2, [1])


# Jobs already handed to Kafka, so the test can produce their messages itself.
make_job = functools.partial(JobFactory, top_k=3, status=Job.Status.SUBMITTED)


def produce(topic: str, key: bytes, value: bytes) -> None:
    producer = Producer(producer_config())
    producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def read_dead_letters(key: bytes, timeout: float = 60):
    consumer = Consumer(consumer_config(f"test-dlq-reader-{uuid.uuid4().hex[:6]}"))
    consumer.subscribe([settings.KAFKA_DEAD_LETTER_TOPIC])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None and message.key() == key:
                return message
    finally:
        consumer.close()
    raise AssertionError(f"no dead letter with key {key!r} within {timeout}s")


def test_poison_request_goes_to_dead_letter_and_its_job_fails_with_the_reason(pipeline):
    job = make_job()
    key = str(job.pk).encode()
    produce(settings.KAFKA_REQUESTS_TOPIC, key, b"IHUB\x01\x01garbage that is not a message")
    dead = read_dead_letters(key)
    headers = dict(dead.headers())
    assert b"undecodable request" in headers["error"]
    assert headers["source_topic"].decode() == settings.KAFKA_REQUESTS_TOPIC
    assert dead.value() == b"IHUB\x01\x01garbage that is not a message"
    (job,) = wait_until_finished([job.pk], timeout=60)
    assert job.status == Job.Status.FAILED
    assert "undecodable request" in job.error


def test_the_worker_group_carries_on_after_a_poison_message(pipeline, api):
    produce(settings.KAFKA_REQUESTS_TOPIC, b"not-a-uuid", b"\x00" * 10)
    (job_id,) = upload(api, "fox.png")
    (job,) = wait_until_finished([job_id])
    assert job.status == Job.Status.SUCCEEDED


def test_a_result_delivered_twice_is_stored_once(pipeline):
    job = make_job()
    result = InferenceResult(
        job_id=str(job.pk),
        ok=True,
        worker="test",
        model="resnet50",
        weights="random",
        predictions=[
            ClassScore(class_id=997, label="bolete", score=0.9),
            ClassScore(class_id=1, label="goldfish, Carassius auratus", score=0.05),
        ],
    )
    later = InferenceResult(job_id=str(job.pk), ok=False, error="a late duplicate must not win")
    for value in (encode_result(result), encode_result(result), encode_result(later)):
        produce(settings.KAFKA_RESULTS_TOPIC, str(job.pk).encode(), value)
    (job,) = wait_until_finished([job.pk], timeout=60)
    time.sleep(2)  # give the duplicates time to arrive; they must change nothing
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert list(job.predictions.values_list("rank", "class_id")) == [(1, 997), (2, 1)]
    assert record_results(results=[result]) == 0


def test_two_workers_share_the_partitions_and_every_job_finishes_once(pipeline, api):
    job_ids = []
    for _ in range(8):
        job_ids += upload(api, *PHOTOS, top_k="2")
    jobs = wait_until_finished(job_ids, timeout=300)
    assert all(job.status == Job.Status.SUCCEEDED for job in jobs)
    assert all(job.predictions.count() == 2 for job in jobs)
    assert len({job.worker for job in jobs}) == 2, {job.worker for job in jobs}


def test_request_for_a_job_that_was_deleted_is_ignored(pipeline):
    request = InferenceRequest(
        job_id=str(uuid.uuid4()),
        top_k=1,
        image=np.zeros((224, 224, 3), np.uint8),
        submitted_at_ms=1,
    )
    produce(settings.KAFKA_REQUESTS_TOPIC, request.job_id.encode(), encode_request(request))
    job = make_job()
    produce(
        settings.KAFKA_REQUESTS_TOPIC,
        str(job.pk).encode(),
        encode_request(
            InferenceRequest(
                job_id=str(job.pk),
                top_k=1,
                image=np.zeros((224, 224, 3), np.uint8),
                submitted_at_ms=1,
            )
        ),
    )
    (job,) = wait_until_finished([job.pk], timeout=60)
    assert job.status == Job.Status.SUCCEEDED


def test_a_failed_job_retried_through_the_api_runs_again_and_succeeds(pipeline, api, user):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.db import transaction

    with transaction.atomic():  # failed before its preprocessing is enqueued
        [job] = uploads.create_jobs(
            owner=user,
            uploads=[SimpleUploadedFile("fox.png", (DATA / "fox.png").read_bytes())],
            top_k=2,
        )
        fail_job(job_id=job.pk, reason="inference failed: out of memory")
    response = api.post(f"{api.base_url}/api/jobs/{job.pk}/retry/")
    assert response.status_code == 202, response.text
    assert (response.json()["status"], response.json()["attempts"]) == ("queued", 2)
    [job] = wait_until_finished([job.pk])
    assert (job.status, job.error, job.predictions.count()) == ("succeeded", "", 2)
    again = api.post(f"{api.base_url}/api/jobs/{job.pk}/retry/")
    assert again.status_code == 409
    assert again.json()["error"] == "only a failed job can be retried; this one is succeeded"
