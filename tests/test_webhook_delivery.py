"""Completion webhooks against the real stack: MariaDB, Redis, and the webhooks queue's own
Celery worker (stack/processes.py) POSTing to a test HTTP server on 127.0.0.1, which the
worker's WEBHOOK_ALLOWED_NETWORKS allows. A job is finished here, in the test, by the
pipeline's own transition (its result stored); the rest is the worker's."""

import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from common.callbacks import parse_allow_list
from kafka_wire.contract import ClassScore, InferenceResult
from predictions import pipeline
from predictions.models import Job
from stack import processes
from stack.harness import PYTHON, free_port, unique_celery_hostname
from tests.conftest import DATA
from tests.factories import JobFactory, UserFactory
from webhooks.models import Attempt, Delivery

pytestmark = pytest.mark.django_db(transaction=True)

WAIT_S = 60
HOOK = "https://hooks.example.com/inferencehub"


@pytest.fixture(scope="module")
def webhooks_worker(start_process):
    """The webhooks worker, allowed to call 127.0.0.1 only, retrying for a minute."""
    return start_process(
        processes.webhooks_celery(PYTHON, hostname=unique_celery_hostname("test-webhooks")),
        WEBHOOK_ALLOWED_NETWORKS="127.0.0.1/32",
        WEBHOOK_RETRY_FOR_S="60",
        WEBHOOK_TIMEOUT_S="5",
    )


class Receiver:
    """A webhook receiver on 127.0.0.1: answers each POST with the next of `answers` (the
    last one from then on) and keeps what it received."""

    def __init__(self, answers: list[int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.answers = list(answers)
        self.received: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                status = (
                    receiver.answers.pop(0) if len(receiver.answers) > 1 else receiver.answers[0]
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port or free_port()), Handler)
        self.url = f"http://{host}:{self.server.server_port}/hook"

    @contextlib.contextmanager
    def running(self) -> Iterator["Receiver"]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


def finish(job: Job) -> None:
    """The job's result stored as the bridge's task stores it."""
    pipeline.record_results(
        results=[
            InferenceResult(
                job_id=str(job.pk), ok=True, predictions=[ClassScore(277, "red fox", 0.9)]
            )
        ]
    )


def wait_for_state(job: Job, *states: str) -> Delivery:
    deadline = time.monotonic() + WAIT_S
    while True:
        delivery = Delivery.objects.filter(job=job).first()
        if delivery is not None and delivery.state in states:
            return delivery
        assert time.monotonic() < deadline, f"no delivery in {states} within {WAIT_S} s"
        time.sleep(0.2)


def verify(header: str, body: bytes, secret: str) -> bool:
    """A receiver's check of InferenceHub-Signature, as of Stripe-Signature."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    signed = f"{fields['t']}.".encode() + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return abs(time.time() - int(fields["t"])) < 300 and hmac.compare_digest(expected, fields["v1"])


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_a_finished_job_is_posted_as_its_detail_shows_it_with_a_valid_signature(
    webhooks_worker,
):
    with Receiver([200]).running() as receiver:
        job = JobFactory(status=Job.Status.SUBMITTED, callback_url=receiver.url)
        finish(job)
        delivery = wait_for_state(job, Delivery.State.DELIVERED)

    (headers, body), *more = receiver.received
    assert more == []
    secret = api(job.owner).get("/api/webhook-secret/").json()["secret"]
    assert verify(headers["InferenceHub-Signature"], body, secret)
    assert not verify(headers["InferenceHub-Signature"], body, secret + "0")
    assert headers["InferenceHub-Delivery"] == str(delivery.delivery_id)
    assert headers["InferenceHub-Event"] == "job.finished"
    sent = json.loads(body)
    detail = api(job.owner).get(f"/api/jobs/{job.pk}/").json()
    assert (sent["id"], sent["status"], sent["predictions"]) == (
        detail["id"],
        "succeeded",
        detail["predictions"],
    )
    assert sent.keys() == detail.keys()


def test_a_webhook_answered_500_is_retried_until_answered_2xx_and_the_api_shows_each_attempt(
    webhooks_worker,
):
    with Receiver([500, 500, 204]).running() as receiver:
        job = JobFactory(status=Job.Status.SUBMITTED, callback_url=receiver.url)
        finish(job)
        delivery = wait_for_state(job, Delivery.State.DELIVERED)

    ids = {headers["InferenceHub-Delivery"] for headers, _ in receiver.received}
    assert ids == {str(delivery.delivery_id)}, "every retry carries the one delivery id"
    assert len({body for _, body in receiver.received}) == 1, "every retry sends the same body"
    callback = api(job.owner).get(f"/api/jobs/{job.pk}/").json()["callback"]
    assert (callback["url"], callback["state"], callback["delivery_id"]) == (
        receiver.url,
        "delivered",
        str(delivery.delivery_id),
    )
    assert [a["status_code"] for a in callback["attempts"]] == [500, 500, 204]
    assert all(a["duration_ms"] > 0 and a["at"].endswith("Z") for a in callback["attempts"])
    # Backed off: about 1 s, then about 2 s (each jittered to between half and all of it).
    times = list(delivery.attempts.values_list("at", flat=True))
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0


def test_a_webhook_to_a_receiver_that_is_down_is_retried_until_it_is_up(webhooks_worker):
    receiver = Receiver([200])
    # The port is bound but nothing accepts yet: connections are refused until it serves.
    receiver.server.server_close()
    job = JobFactory(status=Job.Status.SUBMITTED, callback_url=receiver.url)
    finish(job)
    deadline = time.monotonic() + WAIT_S
    while not Delivery.objects.filter(job=job, attempts__error__contains="Connection").exists():
        assert time.monotonic() < deadline, "no failed attempt within the wait"
        time.sleep(0.2)
    port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
    with Receiver([200], port=port).running() as back_up:
        wait_for_state(job, Delivery.State.DELIVERED)
    assert len(back_up.received) == 1
    errors = list(Delivery.objects.get(job=job).attempts.values_list("error", flat=True))
    assert errors[-1] == "" and all("Connection" in error for error in errors[:-1])


def test_a_webhook_to_a_refused_address_is_not_sent(webhooks_worker):
    """127.0.0.2 is loopback but not in the worker's WEBHOOK_ALLOWED_NETWORKS: the job's
    URL is refused at send time, and nothing reaches the receiver listening there."""
    with Receiver([200], host="127.0.0.2").running() as receiver:
        job = JobFactory(status=Job.Status.SUBMITTED, callback_url=receiver.url)
        finish(job)
        delivery = wait_for_state(job, Delivery.State.REFUSED)
    assert receiver.received == []
    assert list(delivery.attempts.values_list("status_code", "error")) == [
        (None, "refused, not sent: is refused: 127.0.0.2 is a loopback address")
    ]
    callback = api(job.owner).get(f"/api/jobs/{job.pk}/").json()["callback"]
    assert callback["state"] == "refused"


def test_an_upload_with_a_callback_url_to_a_private_address_is_refused_with_400():
    user = UserFactory()
    with (DATA / "fox.png").open("rb") as image:
        answer = api(user).post(
            "/api/jobs/",
            {"image": image, "callback_url": "http://10.0.0.1/hook"},
            format="multipart",
        )
    assert answer.status_code == 400
    assert answer.json()["error"] == ("callback_url is refused: 10.0.0.1 is a private address")
    assert not Job.objects.exists()


def test_rotating_the_secret_gives_a_new_one_to_its_owner_alone():
    alice, bob = UserFactory(), UserFactory()
    first = api(alice).get("/api/webhook-secret/").json()["secret"]
    rotated = api(alice).post("/api/webhook-secret/rotate/").json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != first
    assert api(alice).get("/api/webhook-secret/").json()["secret"] == rotated["secret"]
    assert api(bob).get("/api/webhook-secret/").json()["secret"] != rotated["secret"]
    assert APIClient().get("/api/webhook-secret/").status_code in (401, 403)


def test_the_seed_api_takes_a_callback_url_from_a_signed_in_caller():
    user = UserFactory()
    seed = api(user)
    batch = seed.post("/api/batches/").json()["id"]
    with (DATA / "fox.png").open("rb") as image:
        refused = seed.post(
            "/image",
            {"uuid": batch, "seq": 0, "topk": 3, "payload": image, "callback_url": "http://[::1]/"},
            format="multipart",
        )
    assert refused.status_code == 400
    assert refused.json()["error"] == "callback_url is refused: ::1 is a loopback address"
    with (
        (DATA / "fox.png").open("rb") as image,
        override_settings(WEBHOOK_ALLOWED_NETWORKS=parse_allow_list("hooks.example.com")),
    ):
        accepted = seed.post(
            "/image",
            {"uuid": batch, "seq": 0, "topk": 3, "payload": image, "callback_url": HOOK},
            format="multipart",
        )
    assert accepted.status_code == 200, accepted.content
    assert Job.objects.get().callback_url == HOOK


def test_the_admin_shows_a_jobs_delivery_and_each_attempt(client):
    operator = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(operator)
    job = JobFactory(status=Job.Status.SUCCEEDED, callback_url=HOOK)
    delivery = Delivery.objects.create(
        job=job, job_attempt=1, url=HOOK, state=Delivery.State.DELIVERED
    )
    Attempt.objects.create(delivery=delivery, error="ConnectTimeout: gone", duration_ms=5000.0)
    Attempt.objects.create(delivery=delivery, status_code=202, duration_ms=31.0)

    job_page = client.get(f"/admin/predictions/job/{job.pk}/change/").content.decode()
    assert "Completion webhook" in job_page and "ConnectTimeout: gone" in job_page
    assert "<td>202</td>" in job_page
    delivery_page = client.get(f"/admin/webhooks/delivery/{delivery.pk}/change/")
    assert delivery_page.status_code == 200
    text = delivery_page.content.decode()
    assert str(delivery.delivery_id) in text and "ConnectTimeout: gone" in text and "202" in text
    listed = client.get("/admin/webhooks/delivery/", {"state__exact": "delivered"})
    assert str(delivery.delivery_id) in listed.content.decode()
