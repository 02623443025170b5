"""Nothing lost: a stream of uploads runs while a process is killed or a service stopped.

Each test reports jobs sent, accepted, succeeded, failed, lost and duplicated, the results
redelivered on Kafka (harmless: storage is idempotent) and the time to recover, which is
reported and never asserted (two shared cores make it vary widely)."""

import os
import random
import signal
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import MySQLdb
import psutil
import pytest
import requests

from serving.package import read_manifest
from tests.faults.conftest import (
    CLUSTER_KAFKA,
    DATABASE,
    App,
    JobStream,
    MemorySampler,
    WebhookReceiver,
    assert_nothing_lost,
    job_states,
    redis_cli,
    settle,
    wait_for_progress,
)

pytestmark = pytest.mark.faults

OUTAGE_S = 30


def test_a_killed_inference_worker_batch_is_redone_by_its_model_group_beside_another_model(
    start_app, model_package
):
    # Two registered models served at once, each with its topic and group: the built-in
    # ResNet50 on TensorFlow (two workers, one killed) and the model package on OpenVINO.
    app = start_app("worker-kill", workers=())
    app.manage("models", "register", "resnet", "--builtin", "resnet50", "--weights", "random")
    app.manage("models", "register", "resnet-openvino", "--package", model_package)
    app.manage("kafka_topics", "create")
    app.start_worker("resnet1", "--model", "resnet")
    app.start_worker("resnet2", "--model", "resnet")
    app.start_worker("openvino1", "--model", "resnet-openvino")
    with (
        JobStream(app, rate=3, model="resnet") as killed,
        JobStream(app, rate=3, model="resnet-openvino") as other,
    ):
        wait_for_progress(app, 10, model="resnet")
        # The stream keeps both of the model's workers busy: the kill lands inside a batch.
        app.current("resnet1").stop(signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(40)
    for stream, what in (
        (killed, "SIGKILL one of its two inference workers"),
        (other, "another model's worker killed beside it"),
    ):
        outcome = settle(
            f"two models served; model {stream.model}: {what}", app, stream, fault_at=killed_at
        )
        assert_nothing_lost(outcome)
        # Every result names the model its upload chose, at its one version.
        assert outcome.answered_by == {f"{stream.model}:1": outcome.accepted}, outcome


def test_a_killed_result_bridge_restarted_stores_every_result_once(start_app):
    app = start_app("bridge-kill")
    with JobStream(app, rate=6) as stream:
        wait_for_progress(app, 10)
        app.current("bridge").stop(signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(10)
        app.start_bridge()
        time.sleep(20)
    outcome = settle("SIGKILL the result bridge, restart it", app, stream, fault_at=killed_at)
    assert_nothing_lost(outcome)


def test_cancellations_deadlines_and_webhooks_hold_while_a_worker_and_the_bridge_are_killed(
    start_app,
):
    # The receiver is on loopback, which callbacks may reach only when allowed. The sweep
    # every 10 s (not 60) expires the short-deadline jobs that wait behind the dead worker.
    app = start_app(
        "cancel-expire-webhooks",
        WEBHOOK_ALLOWED_NETWORKS="127.0.0.1",
        SWEEP_INTERVAL_SECONDS="10",
    )
    app.start_webhooks()
    with WebhookReceiver(app) as receiver:

        def extra(number: int) -> dict[str, str]:
            # Every upload asks for a webhook; every third gives up after 2 s.
            short = {"timeout_s": "2"} if number % 3 == 0 else {}
            return {"callback_url": receiver.url, **short}

        with (
            JobStream(app, rate=6, extra=extra) as stream,
            Canceller(app, stream) as canceller,
        ):
            wait_for_progress(app, 10)
            app.current("worker1").stop(signal.SIGKILL)
            killed_at = time.monotonic()
            time.sleep(10)
            app.current("bridge").stop(signal.SIGKILL)
            time.sleep(10)
            app.start_bridge()
            # Until past the group's session timeout (45 s), when the other worker takes
            # the dead one's partitions: requests by then cancelled or past their deadline.
            time.sleep(max(0.0, killed_at + 55 - time.monotonic()))
        outcome = settle(
            "SIGKILL one of two inference workers, then the result bridge (restarted 10 s "
            "later), while jobs are cancelled and every third upload has timeout_s=2; every "
            "upload has a callback URL",
            app,
            stream,
            fault_at=killed_at,
            webhooks=receiver,
            notes=f"cancel answers: {len(canceller.cancelled)} cancelled, "
            f"{len(canceller.finished_first)} 409 (finished first)",
        )
    assert_nothing_lost(outcome)
    assert not canceller.errors, canceller.errors
    # The scenario reached every end a job can have here.
    assert outcome.succeeded and outcome.cancelled and outcome.expired, outcome
    states = job_states(app.username)
    # A cancellation answered 200 stands, one answered 409 changed nothing, and only the
    # jobs asked to were cancelled.
    cancelled = {job for job, state in states.items() if state.status == "cancelled"}
    assert cancelled == canceller.cancelled, (cancelled ^ canceller.cancelled, outcome)
    stored_though_ended = [
        job
        for job, state in states.items()
        if state.status in ("cancelled", "expired") and state.predictions
    ]
    assert not stored_though_ended, (stored_though_ended, outcome)
    webhooks = outcome.webhooks
    assert webhooks["untold"] == 0, outcome
    assert webhooks["bad_signature"] == webhooks["wrong_status"] == 0, outcome
    assert webhooks["second_deliveries"] == webhooks["unreadable"] == 0, outcome
    deadlines = taken_after_deadline(app)
    print({"deadlines": deadlines})
    assert deadlines["taken_after_deadline"] == [], deadlines


class Canceller:
    """Cancels accepted jobs through the API while a stream runs: every second its newest
    job and one of its last 30 at random (which may still wait in the database or in the
    requests of the dead worker), and keeps each answer."""

    def __init__(self, app: App, stream: JobStream, every: float = 1.0) -> None:
        self.app, self.stream, self.every = app, stream, every
        self.asked: set[str] = set()
        # Answered 200, and 409: the job had finished first.
        self.cancelled: set[str] = set()
        self.finished_first: set[str] = set()
        self.errors: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> "Canceller":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join()

    def run(self) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {self.app.token}"
        while not self.stopping.wait(self.every):
            recent = [job for job in self.stream.snapshot()[-30:] if job not in self.asked]
            if recent:
                for job in {recent[-1], random.choice(recent)}:
                    self.cancel(session, job)

    def cancel(self, session: requests.Session, job: str) -> None:
        self.asked.add(job)
        try:
            response = session.post(f"{self.app.url}/api/jobs/{job}/cancel/", timeout=60)
        except requests.RequestException as error:
            self.errors[type(error).__name__] += 1
            return
        if response.status_code == 200:
            self.cancelled.add(job)
        elif response.status_code == 409:
            self.finished_first.add(job)
        else:
            self.errors[f"{response.status_code} {response.text[:120]}"] += 1


# A worker checks a request's deadline just before the batch's predict; its inference is
# reckoned to have begun at inferred_at - inference_ms, later than that check by the
# batch's bookkeeping (more on a loaded machine). A request taken after its deadline is
# late by far more: it waited behind a dead worker.
DEADLINE_SLACK = timedelta(seconds=0.5)


def taken_after_deadline(app: App) -> dict:
    """The scenario's succeeded jobs that had a deadline: how many, the least time left at
    the start of their inference, and those begun after it."""
    connection = MySQLdb.connect(**DATABASE)
    try:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT j.id, j.deadline, j.inferred_at, j.inference_ms FROM predictions_job j"
            " JOIN auth_user u ON u.id = j.owner_id WHERE u.username = %s"
            " AND j.status = 'succeeded' AND j.deadline IS NOT NULL",
            [app.username],
        )
        rows = cursor.fetchall()
    finally:
        connection.close()
    left = {
        str(job): deadline - (inferred_at - timedelta(milliseconds=inference_ms))
        for job, deadline, inferred_at, inference_ms in rows
    }
    return {
        "succeeded_with_deadline": len(left),
        "least_left_s": round(min(left.values()).total_seconds(), 3) if left else None,
        "taken_after_deadline": sorted(job for job, t in left.items() if t < -DEADLINE_SLACK),
    }


def test_a_killed_web_server_loses_no_upload_its_clients_send_again(start_app):
    # Short timeouts: a job committed by a request killed before it enqueued the job's
    # preprocessing is left to the sweep.
    app = start_app("web-kill", JOB_TIMEOUT_SECONDS="20", SWEEP_INTERVAL_SECONDS="5")
    with JobStream(app, rate=8, threads=4, resend_for=60) as stream:
        wait_for_progress(app, 10)
        web = psutil.Process(app.current("web").popen.pid)
        for process in [*web.children(recursive=True), web]:
            process.kill()  # gunicorn and its workers, whatever request they are in
        killed_at = time.monotonic()
        time.sleep(5)
        app.start_web()
        time.sleep(20)
    outcome = settle(
        "SIGKILL the web server (gunicorn and its workers), restart it; clients send "
        "unanswered uploads again with the same Idempotency-Key",
        app,
        stream,
        fault_at=killed_at,
        notes=f"jobs resubmitted by the sweep: {resubmitted(app)}; job timeout 20 s here",
    )
    assert outcome.connection_retries, "no upload met the outage"
    assert_nothing_lost(outcome)


def test_a_celery_worker_killed_mid_task_still_finishes_every_job(start_app):
    # Short enough that the restarted node gets the dead node's unacked tasks back, and the
    # sweep resubmits a job whose task died with the node, within the test; production keeps
    # 300 s for both (see settings). The sweep is needed: kombu takes a task off the Redis
    # list (BRPOP) before it records it as unacked, and a node killed in between loses it.
    app = start_app(
        "celery-kill",
        CELERY_VISIBILITY_TIMEOUT_SECONDS="30",
        JOB_TIMEOUT_SECONDS="60",
        SWEEP_INTERVAL_SECONDS="10",
    )
    with JobStream(app, rate=6) as stream:
        wait_for_progress(app, 10)
        # A pool process dies while it runs a task (e.g. the OOM killer): the main
        # process sees it (WorkerLostError) and requeues the task at once.
        kill_a_busy_pool_process(app)
        killed_at = time.monotonic()
        time.sleep(15)
        # The whole nodes die (preprocessing and results): their unacked tasks wait in
        # Redis for the visibility timeout, then the restarted nodes take them back.
        nodes = [psutil.Process(app.current(role).popen.pid) for role in CELERY_ROLES]
        deadline = time.monotonic() + 60
        while int(redis_cli("hlen", "unacked")) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # until a node holds a task
        for node in nodes:
            for process in [*node.children(recursive=True), node]:
                process.kill()
        unacked = int(redis_cli("hlen", "unacked"))
        time.sleep(5)
        app.start_celery()
        time.sleep(20)
    lost_in_child = "WorkerLostError" in app.processes["celery"].log_path.read_text()
    outcome = settle(
        "SIGKILL a Celery pool process mid-task, then the whole Celery nodes (restarted)",
        app,
        stream,
        fault_at=killed_at,
        notes=f"task lost with the pool process: {lost_in_child}; unacked tasks in Redis "
        f"after the node kill: {unacked}; jobs resubmitted by the sweep: "
        f"{resubmitted(app)}; visibility timeout 30 s, job timeout 60 s here",
    )
    assert_nothing_lost(outcome)


# Every Celery node of an app (App.start_celery starts one of each).
CELERY_ROLES = ("celery", "celery-results")


def resubmitted(app) -> int:
    """How many of the scenario's jobs needed a second attempt (the sweep's doing)."""
    connection = MySQLdb.connect(**DATABASE)
    try:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT COUNT(*) FROM predictions_job j JOIN auth_user u ON u.id = j.owner_id"
            " WHERE u.username = %s AND j.attempts > 1",
            [app.username],
        )
        return cursor.fetchone()[0]
    finally:
        connection.close()


def kill_a_busy_pool_process(app, attempts: int = 2000) -> None:
    """SIGKILL a Celery pool process caught running (a task, with preprocessing ~0.1 s)."""
    celery = psutil.Process(app.current("celery").popen.pid)
    for _ in range(attempts):
        for child in celery.children():
            if child.status() == psutil.STATUS_RUNNING:
                child.kill()
                return
        time.sleep(0.005)
    celery.children()[0].kill()


@pytest.mark.parametrize("service", ["kafka", "mariadb", "redis"])
def test_a_data_service_stopped_for_30_s_loses_nothing(start_app, fault_stack, service):
    # Tasks whose ack was lost with Redis come back after the visibility timeout.
    app = start_app(f"{service}-outage", CELERY_VISIBILITY_TIMEOUT_SECONDS="60")
    with JobStream(app, rate=4) as stream:
        wait_for_progress(app, 10)
        fault_stack.down(service)
        stopped_at = time.monotonic()
        time.sleep(OUTAGE_S)
        fault_stack.up(service)
        time.sleep(20)
    outcome = settle(f"stop {service} for {OUTAGE_S} s", app, stream, fault_at=stopped_at)
    assert_nothing_lost(outcome)
    if service == "kafka":
        # Uploads need no broker: every one during the outage is accepted and finished.
        assert outcome.refused_503 == 0


def test_a_three_node_cluster_survives_one_broker_and_stops_safely_without_two(
    start_app, fault_stack
):
    fault_stack.run("cluster", "up")
    app = start_app("cluster", kafka=CLUSTER_KAFKA, KAFKA_REPLICATION_FACTOR="3")
    with JobStream(app, rate=4) as stream:
        wait_for_progress(app, 10)
        fault_stack.kill("kafka1")
        killed_at = time.monotonic()
        time.sleep(30)
        before = succeeded(app)
        time.sleep(30)
        assert succeeded(app) > before, "the stream stopped with one broker of three down"
        fault_stack.kill("kafka2")
        time.sleep(60)
        fault_stack.up("kafka1", "kafka2")
        time.sleep(20)
    outcome = settle(
        "3-node KRaft cluster: SIGKILL one broker, then a second, restart both",
        app,
        stream,
        fault_at=killed_at,
    )
    assert_nothing_lost(outcome)
    # With one broker of three, acks=all cannot be met: producing failed loudly.
    log = app.log_text()
    assert "DeliveryError" in log or "KafkaException" in log or "timed out" in log.lower()


def succeeded(app) -> int:
    return sum(1 for state in job_states(app.username).values() if state[0] == "succeeded")


def test_ten_thousand_jobs_at_full_upload_rate_lose_nothing_and_memory_stays_bounded(
    start_app, fault_stack, model_package
):
    jobs = int(os.environ.get("FAULTS_LOAD_JOBS", "10000"))
    # ResNet50 at its real 224x224 input, served as `make run` serves it: the model package.
    app = start_app("load", MODEL_PACKAGE=model_package)
    started = time.monotonic()
    with MemorySampler(app, fault_stack, ("mariadb", "redis", "kafka")) as memory:
        with JobStream(app, rate=None, threads=6, limit=jobs) as stream:
            while not stream.done():
                time.sleep(1)
        uploaded_s = time.monotonic() - started
        precision = read_manifest(Path(model_package))["precision"]
        outcome = settle(
            f"load: {jobs} jobs at full upload rate, 224x224 on OpenVINO {precision}",
            app,
            stream,
            fault_at=started,
            timeout=3600,
            notes=f"uploads took {uploaded_s:.0f} s ({jobs / uploaded_s:.1f}/s)",
        )
    report = memory.report()
    print({"memory_mb_and_cpu_s": report})
    # CPU per job, which the machine's other load does not change much: 2 cores divided
    # by it is the rate this run would reach on a quiet 2-core machine.
    print({"core_ms_per_job": round(1000 * sum(r["cpu_s"] for r in report.values()) / jobs)})
    assert_nothing_lost(outcome)
    assert outcome.sent == jobs
    for name, rss in report.items():
        # Bounded: a leak per job would grow with 10,000 jobs far past a warm process's size.
        assert rss["end"] <= 2 * rss["start"] + 1024, (name, rss)
