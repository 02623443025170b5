"""The compose file's stack, running: uploads through the published front door, the worker
service scaled to three over the requests topic's partitions, a worker killed mid-stream.

In file order: the scaling test leaves three workers, one of which the kill test kills.
"""

import itertools
import re
import subprocess
import threading

import pytest

from tests.compose.conftest import Stack, parse_json_line, wait_for
from tests.conftest import DATA

pytestmark = pytest.mark.compose

IMAGES = [DATA / "bolete.jpg", DATA / "fox.png", DATA / "toaster.png"]
TOP_K = 3
# The workers load ResNet50 before joining their group: about a minute each here.
WORKERS_JOIN_S = 300
JOBS_DONE_S = 300
FINISHED = {"succeeded", "failed"}

# Who holds which partition of the served model's requests topic, as Kafka says.
ASSIGNMENT = """
import json, os
from confluent_kafka.admin import AdminClient
admin = AdminClient({"bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"]})
group = admin.describe_consumer_groups([%(group)r])[%(group)r].result()
topic = admin.list_topics(%(topic)r, timeout=30).topics[%(topic)r]
print(json.dumps({
    "partitions": sorted(topic.partitions),
    "members": {
        member.client_id + " " + member.host: sorted(
            tp.partition for tp in member.assignment.topic_partitions if tp.topic == %(topic)r
        )
        for member in group.members
    },
}))
"""


def upload(stack: Stack, image, **fields) -> dict:
    with image.open("rb") as file:
        answer = stack.post("/api/jobs/", files={"image": file}, data={"top_k": TOP_K, **fields})
    assert answer.status_code == 202, answer.text
    return answer.json()


def finished_job(stack: Stack, job_id: str) -> dict:
    def probe():
        job = stack.get(f"/api/jobs/{job_id}/", params={"wait": 20}).json()
        return job if job["status"] in FINISHED else None

    return wait_for(f"job {job_id} finished", probe, JOBS_DONE_S, every=0)


def assert_answered_once(job: dict) -> None:
    assert job["status"] == "succeeded", job
    assert [p["class_id"] for p in job["predictions"]], job
    assert len(job["predictions"]) == TOP_K, job
    assert all(p["label"] for p in job["predictions"]), job
    assert job["attempts"] == 1, job


def served_route(stack: Stack) -> tuple[str, str]:
    """The requests topic and group the workers serve, from their start-up line."""
    logs = stack.compose("logs", "--no-color", "worker")
    found = re.search(r" topic=(\S+) .* group=(\S+) ", logs)
    assert found, logs[-3000:]
    return found.group(1), found.group(2)


def assignment(stack: Stack) -> dict:
    topic, group = served_route(stack)
    return parse_json_line(stack.python("web", ASSIGNMENT % {"topic": topic, "group": group}))


def test_readyz_is_green_through_the_front_door(stack):
    answer = stack.get("/readyz")
    assert answer.status_code == 200, answer.text
    assert answer.json()["ready"] is True
    assert all(service["ok"] for service in answer.json()["services"].values())


def test_uploads_through_the_published_port_finish_with_top_k_labels(stack):
    jobs = [upload(stack, image) for image in IMAGES]
    for job in jobs:
        assert_answered_once(finished_job(stack, job["id"]))


def test_three_workers_share_the_requests_topics_partitions(stack):
    stack.compose(
        "up", "--detach", "--wait", "--no-build", "--no-deps", "--scale", "worker=3", "worker"
    )

    def spread():
        now = assignment(stack)
        held = [parts for parts in now["members"].values() if parts]
        return now if len(now["members"]) == 3 and len(held) == 3 else None

    now = wait_for("three workers holding partitions", spread, WORKERS_JOIN_S, every=5)
    held = list(now["members"].values())
    every = sorted(itertools.chain.from_iterable(held))
    # Each partition held by exactly one of the three, and none left out.
    assert every == now["partitions"], now


def test_a_worker_killed_mid_stream_loses_and_doubles_no_job(stack):
    batch = stack.post("/api/batches/", json={"name": "worker killed"}).json()["id"]
    total = 36
    jobs: list[dict] = []
    errors: list[BaseException] = []

    def send():
        try:
            for seq, image in zip(range(total), itertools.cycle(IMAGES), strict=False):
                jobs.append(upload(stack, image, batch=batch, seq=seq))
        except BaseException as error:  # reported by the test below
            errors.append(error)

    sender = threading.Thread(target=send)
    sender.start()

    def some_done():
        counts = stack.get(f"/api/batches/{batch}/").json()["counts"]
        return counts if counts.get("succeeded", 0) >= 3 else None

    before = wait_for("the first jobs of the stream done", some_done, JOBS_DONE_S, every=0.5)
    assert before["succeeded"] < total, f"the stream was over before the kill: {before}"
    # One replica only, at once: every replica holds partitions (the test above).
    subprocess.run(["podman", "kill", "--signal", "KILL", f"{stack.project}-worker-1"], check=True)
    sender.join()
    assert not errors, errors
    assert len(jobs) == total

    finished = [finished_job(stack, job["id"]) for job in jobs]
    for job in finished:
        assert_answered_once(job)
    detail = stack.get(f"/api/batches/{batch}/").json()
    # No job made twice, none lost.
    assert detail["total"] == total, detail
    assert detail["counts"].get("succeeded") == total, (before, detail)
    assert len({job["id"] for job in finished}) == total
