"""One trace per job through the real processes: nginx and the web, Celery, a worker, the
bridge and Celery again export their spans over OTLP/HTTP to a receiver in this test, as
they would to a collector (common/tracing.py)."""

import subprocess
import time
from collections import defaultdict

import pytest
import requests
from django.test import override_settings

from bench.otlp_receiver import OtlpReceiver
from kafka_wire.config import kafka_names
from kafka_wire.topics import ensure_topics
from stack import processes
from stack.harness import PYTHON, unique_celery_hostname
from tests.conftest import DATA, REPO, start_front_door, started_processes
from tests.settings import RUN_ID
from tests.test_pipeline import wait_until_finished

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
UPLOAD_PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def receiver():
    with OtlpReceiver() as server:
        yield server


@pytest.fixture
def traced_stack(receiver, process_env, tmp_path):
    """The whole path with tracing on, on topics, Celery queues and images of its own: the
    session's untraced processes must not take its work."""
    run_id = f"{RUN_ID}tr"
    topics = kafka_names(f"test-{run_id}")
    with override_settings(**topics):
        ensure_topics()
    env = {
        **topics,
        "INFERENCEHUB_TEST_RUN_ID": run_id,
        "MEDIA_ROOT": str(tmp_path / "media"),
        "MODEL_NAME": "instant",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        # Spans leave each process within a tenth of a second instead of five.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        # Beat's dispatch pass every second: idle, it must leave no trace.
        "DISPATCH_INTERVAL_SECONDS": "1",
    }
    with started_processes({**process_env, **env}, tmp_path / "logs") as start:
        start(processes.results_celery(PYTHON, hostname=unique_celery_hostname("traced-r")))
        start(processes.preprocess_celery(PYTHON, hostname=unique_celery_hostname("traced-p")))
        start(processes.worker(PYTHON, "traced-worker"))
        start(processes.bridge(PYTHON))
        start(processes.beat(PYTHON, schedule=str(tmp_path / "beat-schedule")))
        yield start_front_door(start, name="traced-front-door")


def spans_of_jobs(receiver: OtlpReceiver, job_ids: list[str], timeout: float = 30) -> list[dict]:
    """The spans of the jobs' traces and the upload's, once every job's last hop arrived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spans = receiver.received()
        stored = {
            s["attributes"].get("inferencehub.job_id"): s["trace_id"]
            for s in spans
            if s["name"] == "result stored"
        }
        if stored.keys() >= set(job_ids):
            traces = {TRACE_ID} | {stored[job_id] for job_id in job_ids}
            return [s for s in spans if s["trace_id"] in traces]
        time.sleep(0.2)
    raise AssertionError(f"some jobs' traces lack their stored result: {sorted(stored)}")


def request_span(receiver: OtlpReceiver, request_id: str, timeout: float = 10) -> dict:
    """The span of the request with this X-Request-ID, once it has arrived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for span in receiver.received():
            if span["attributes"].get("inferencehub.request_id") == request_id:
                return span
        time.sleep(0.1)
    raise AssertionError(f"no span carries the request id {request_id}")


def test_every_job_has_one_connected_trace_through_every_hop_linked_to_its_upload(
    traced_stack, receiver, user, tmp_path
):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=user).key
    names = ("bolete.jpg", "fox.png", "toaster.png")
    files = [("image", (name, (DATA / name).read_bytes(), "image/octet-stream")) for name in names]
    answer = requests.post(
        f"{traced_stack}/api/jobs/",
        files=files,
        headers={"Authorization": f"Token {token}", "traceparent": UPLOAD_PARENT},
        timeout=60,
    )
    assert answer.status_code == 202, answer.text
    job_ids = [job["id"] for job in answer.json()["jobs"]]
    assert {job.status for job in wait_until_finished(job_ids)} == {"succeeded"}

    spans = spans_of_jobs(receiver, job_ids)
    by_id = {span["span_id"]: span for span in spans}
    per_job = defaultdict(dict)
    for span in spans:
        if job_id := span["attributes"].get("inferencehub.job_id"):
            per_job[job_id][span["name"]] = span
    # The web's span of the upload continues the client's trace.
    [upload] = [
        s for s in spans if s["service"] == "inferencehub-web" and s["parent"] == "00f067aa0ba902b7"
    ]
    assert upload["trace_id"] == TRACE_ID
    # Named by its route's template, as the HTTP conventions say, and found by its request id.
    assert (upload["name"], upload["attributes"]["http.route"]) == ("POST /api/jobs/", "/api/jobs/")
    assert upload["attributes"]["inferencehub.request_id"] == answer.headers["X-Request-ID"]
    job_traces = set()
    for job_id in job_ids:
        hops = per_job[job_id]
        assert {"preprocess", "inference request", "result received", "result stored"} <= set(hops)
        # Each job's trace is its own, and starts where the web accepted the job, linked to
        # the upload's span: the chain of parents of every hop stays inside it.
        accepted = hops["job accepted"]
        assert accepted["service"] == "inferencehub-web"
        assert accepted["links"] == [(TRACE_ID, upload["span_id"])]
        # Zipkin shows no links: the tag names the upload's trace.
        assert accepted["attributes"]["inferencehub.linked_trace_id"] == TRACE_ID
        job_traces.add(accepted["trace_id"])
        for hop in hops.values():
            assert hop["trace_id"] == accepted["trace_id"], hop["name"]
            span = hop
            while span["parent"] and span["parent"] in by_id:
                span = by_id[span["parent"]]
            assert span["span_id"] == accepted["span_id"], (hop["name"], span["name"])
        assert hops["preprocess"]["service"] == "inferencehub-celery"
        assert hops["inference request"]["service"] == "inferencehub-worker"
        assert hops["result received"]["service"] == "inferencehub-bridge"
        assert hops["result stored"]["service"] == "inferencehub-celery"
    assert len(job_traces) == len(job_ids) and TRACE_ID not in job_traces
    # The database's work is traced too: the upload's queries under its request.
    assert any(
        s["attributes"].get("db.system") == "mysql" and s["trace_id"] == TRACE_ID for s in spans
    )
    # The worker's batches are spans of their own, linked to each request they served.
    batches = [
        s
        for s in receiver.spans
        if s["name"] == "inference batch" and s["service"] == "inferencehub-worker"
    ]
    linked = {link for batch in batches for link in batch["links"]}
    for job_id in job_ids:
        preprocess = per_job[job_id]["preprocess"]
        assert (preprocess["trace_id"], preprocess["span_id"]) in linked
    assert all(batch["attributes"]["inferencehub.model"] == "instant" for batch in batches)
    batch_traces = {batch["trace_id"] for batch in batches}
    for job_id in job_ids:
        request = per_job[job_id]["inference request"]
        assert request["attributes"]["inferencehub.linked_trace_id"] in batch_traces
    # A job's id finds its lines in the log of every process it crossed, and the upload's
    # request id finds them too.
    logs = {path.stem: path.read_text() for path in (tmp_path / "logs").glob("*.log")}
    request_id = answer.headers["X-Request-ID"]
    for name in ("celery", "traced-worker", "bridge", "celery-results"):
        assert all(job_id in logs[name] for job_id in job_ids), name
    for name in ("traced-front-door-app", "celery", "traced-worker", "bridge"):
        assert request_id in logs[name], name
    # The job's answer names its trace.
    for job_id in job_ids:
        body = requests.get(
            f"{traced_stack}/api/jobs/{job_id}/",
            headers={"Authorization": f"Token {token}"},
            timeout=30,
        ).json()
        assert (body["trace_id"], body["request_id"]) == (
            per_job[job_id]["job accepted"]["trace_id"],
            request_id,
        )
    # The web's and the held process's request spans are named by route, never by path,
    # and carry the request id.
    for service, query in (("inferencehub-web", ""), ("inferencehub-held", "?wait=1")):
        answer = requests.get(
            f"{traced_stack}/api/jobs/{job_ids[0]}/{query}",
            headers={"Authorization": f"Token {token}"},
            timeout=30,
        )
        span = request_span(receiver, answer.headers["X-Request-ID"])
        assert (span["service"], span["kind"], span["name"]) == (
            service,
            "SPAN_KIND_SERVER",
            "GET /api/jobs/<pk>/",
        )
    assert not [s["name"] for s in receiver.received() if job_ids[0] in s["name"]]
    # An upload of one image is one job: its trace is the upload's own.
    one = requests.post(
        f"{traced_stack}/api/jobs/",
        files=files[:1],
        headers={"Authorization": f"Token {token}", "traceparent": UPLOAD_PARENT},
        timeout=60,
    ).json()
    wait_until_finished([one["id"]])
    assert one["trace_id"] == TRACE_ID
    assert {s["trace_id"] for s in spans_of_jobs(receiver, [one["id"]])} == {TRACE_ID}


def dispatch_passes(log_dir) -> int:
    """Beat's dispatch passes the results worker has run so far, by its log."""
    log = (log_dir / "celery-results.log").read_text()
    return log.count("Task predictions.tasks.dispatch_jobs[") // 2  # received, succeeded


def test_beat_dispatch_leaves_a_trace_only_when_it_admits_jobs(
    traced_stack, receiver, user, tmp_path
):
    from django.db import connection
    from rest_framework.authtoken.models import Token

    from predictions.models import Job

    token = Token.objects.create(user=user).key
    # Idle, beat's passes admit nothing, and Celery sends no span at all.
    deadline = time.monotonic() + 30
    while dispatch_passes(tmp_path / "logs") < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert dispatch_passes(tmp_path / "logs") >= 3
    time.sleep(0.5)  # the last pass's spans, if it made any, leave within 0.1 s
    assert [s for s in receiver.received() if s["service"] == "inferencehub-celery"] == []
    # While this test holds the dispatcher's lock, the upload's own dispatch admits
    # nothing: beat's first pass after it is let go admits the job.
    with connection.cursor() as cursor:
        cursor.execute("SELECT GET_LOCK(CONCAT(DATABASE(), '.dispatch'), 0)")
        assert cursor.fetchone()[0] == 1
        try:
            answer = requests.post(
                f"{traced_stack}/api/jobs/",
                files=[("image", ("fox.png", (DATA / "fox.png").read_bytes()))],
                headers={"Authorization": f"Token {token}"},
                timeout=60,
            )
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["id"]
            time.sleep(1.5)
            assert Job.objects.get(pk=job_id).admitted_at is None
        finally:
            cursor.execute("SELECT RELEASE_LOCK(CONCAT(DATABASE(), '.dispatch'))")
    wait_until_finished([job_id])
    spans_of_jobs(receiver, [job_id])
    spans = receiver.received()
    # Beat's admission is a trace of its own, started by its "dispatch" span, holding the
    # preprocessing task it enqueued; beat's task spans started none.
    [dispatch] = [s for s in spans if s["name"] == "dispatch"]
    assert (dispatch["service"], dispatch["parent"]) == ("inferencehub-celery", "")
    assert dispatch["attributes"]["inferencehub.admitted"] == 1
    assert dispatch["links"] == []  # to beat's task span, which no trace keeps
    [task] = [s for s in spans if s["name"] == "run/predictions.tasks.preprocess_jobs"]
    assert task["trace_id"] == dispatch["trace_id"]
    assert not [s for s in spans if s["name"] == "run/predictions.tasks.dispatch_jobs"]
    # No query starts a trace of its own: every client span has a parent.
    assert [s["name"] for s in spans if s["kind"] == "SPAN_KIND_CLIENT" and not s["parent"]] == []


# A query outside any span, then one inside a span, in a process of its own tracing as the
# app's processes do.
QUERIES = """
import django

django.setup()
from django.db import connection
from opentelemetry import trace

from common import tracing

tracing.configure("probe")
with connection.cursor() as cursor:
    cursor.execute("SELECT 'alone'")
with tracing.tracer.start_as_current_span("work"), connection.cursor() as cursor:
    cursor.execute("SELECT 'at work'")
trace.get_tracer_provider().shutdown()
"""


def spans_of_queries(receiver: OtlpReceiver, process_env: dict, service: str, **env) -> list:
    completed = subprocess.run(
        [PYTHON, "-c", QUERIES],
        cwd=REPO,
        env={
            **process_env,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_SERVICE_NAME": service,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    return [s for s in receiver.received() if s["service"] == service]


def test_a_query_outside_any_span_starts_no_trace_and_the_sampler_variables_still_decide(
    receiver, process_env
):
    spans = spans_of_queries(receiver, process_env, "probe")
    work = {s["span_id"]: s for s in spans if s["name"] == "work"}
    assert [(s["kind"], s["parent"] in work) for s in spans if s["name"] == "SELECT"] == [
        ("SPAN_KIND_CLIENT", True)
    ]
    assert len(spans) == 2
    # The standard sampler still decides the rest: a ratio of 0 traces nothing.
    sampled_out = spans_of_queries(
        receiver,
        process_env,
        "probe-sampled-out",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0",
    )
    assert sampled_out == []
