"""inferencehub/celery.py patches kombu's Redis QoS.restore_unacked for the kombu versions
that lose the Celery worker when Redis goes away. The first test reproduces that bug against
the unpatched method, so it fails, saying to drop the patch, once the pinned kombu is fixed.

Each test runs a Redis of its own on a Unix socket, so it can kill it without touching the
shared one; the steps are those of a Celery worker losing its broker."""

import logging
import signal
import uuid
from collections.abc import Callable, Iterator

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu import __version__ as kombu_version
from kombu.transport import redis as kombu_redis

from inferencehub import celery as celery_module
from stack.harness import ManagedProcess
from tests.conftest import LOGS

pytestmark = pytest.mark.services


@pytest.fixture
def own_redis(tmp_path) -> Iterator[tuple[str, Callable[[], None]]]:
    """The URL of a Redis only this test uses, and a function that kills it."""
    socket_path = tmp_path / "redis.sock"
    argv = ["redis-server", "--port", "0", "--unixsocket", str(socket_path)]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    redis = ManagedProcess(f"redis-{uuid.uuid4().hex[:6]}", argv, {}, log_dir=LOGS).start()
    try:
        redis.wait_for_log("ready to accept connections", timeout=30)
        yield f"redis+socket://{socket_path}", lambda: redis.stop(signal.SIGKILL)
    finally:
        redis.stop(signal.SIGKILL)


def channel_left_open_after_redis_is_lost(url: str, kill_redis: Callable[[], None]):
    """A channel holding one unacked task, waiting on BRPOP when Redis dies; its connection
    is then closed, as a Celery worker closes its broker connection on losing it."""
    connection = Connection(url)
    channel = connection.channel()
    queue = Queue(f"q-{uuid.uuid4().hex[:6]}", Exchange("tasks", type="direct"), "task")
    Producer(channel).publish(
        {"task": 1}, exchange=queue.exchange, routing_key="task", declare=[queue]
    )
    Consumer(channel, [queue], callbacks=[lambda body, message: None]).consume()
    connection.drain_events(timeout=5)  # the task, left unacked
    with pytest.raises(TimeoutError):
        connection.drain_events(timeout=0.2)  # nothing more: BRPOP stays in flight
    assert len(channel.qos._delivered) == 1
    kill_redis()
    connection.close()
    return channel


def test_the_pinned_kombu_still_loses_the_worker_when_redis_goes_away(own_redis, monkeypatch):
    monkeypatch.setattr(kombu_redis.QoS, "restore_unacked", celery_module.unpatched_restore_unacked)
    channel = channel_left_open_after_redis_is_lost(*own_redis)
    try:
        channel.close()
    except AttributeError as exc:
        assert "hostname" in str(exc)
    else:
        pytest.fail(
            f"kombu {kombu_version} no longer raises AttributeError restoring unacked tasks "
            "after losing Redis: drop the restore_unacked patch and KOMBU_VERSIONS_NEEDING_PATCH "
            "from inferencehub/celery.py, and this test"
        )


def test_the_patch_is_applied_for_the_pinned_kombu_and_leaves_the_tasks(own_redis, caplog):
    assert kombu_version in celery_module.KOMBU_VERSIONS_NEEDING_PATCH, (
        f"kombu {kombu_version} is not in KOMBU_VERSIONS_NEEDING_PATCH; if the test above "
        "passes, add it there"
    )
    assert kombu_redis.QoS.restore_unacked is celery_module._restore_unacked_or_leave_them
    channel = channel_left_open_after_redis_is_lost(*own_redis)
    with caplog.at_level(logging.WARNING, logger="inferencehub.celery"):
        channel.close()
    assert "1 unacked task(s) left to the visibility timeout" in caplog.text


@pytest.fixture
def released_channel(own_redis):
    """A channel holding one unacked task after its connection let go of it: the state a
    task finishing during the worker's reconnect acks into (the release is done by hand
    here, as the worker's connection does on losing Redis). Yields it and the task's tag."""
    channel, delivery_tag = channel_whose_connection_is_released(own_redis[0])
    yield channel, delivery_tag
    # Otherwise kombu tries to requeue the task as the test run exits, long after this
    # test's Redis is gone, and logs the failure into pytest's closed output.
    channel.do_restore = False


def channel_whose_connection_is_released(url: str):
    connection = Connection(url)
    channel = connection.channel()
    queue = Queue(f"q-{uuid.uuid4().hex[:6]}", Exchange("tasks", type="direct"), "task")
    Producer(channel).publish(
        {"task": 1}, exchange=queue.exchange, routing_key="task", declare=[queue]
    )
    Consumer(channel, [queue], callbacks=[lambda body, message: None]).consume()
    connection.drain_events(timeout=5)
    (delivery_tag,) = channel.qos._delivered
    # What closing the lost connection leaves: no connection and no pool, so the ack's new
    # pool asks the missing connection for its parameters.
    channel.connection = None
    channel._pool = None
    return channel, delivery_tag


def test_the_pinned_kombu_still_raises_acking_on_a_released_connection(
    released_channel, monkeypatch
):
    monkeypatch.setattr(kombu_redis.QoS, "ack", celery_module.unpatched_ack)
    channel, delivery_tag = released_channel
    try:
        channel.qos.ack(delivery_tag)
    except AttributeError as exc:
        assert "client" in str(exc)
    else:
        pytest.fail(
            f"kombu {kombu_version} no longer raises AttributeError acking on a released "
            "connection: drop the ack patch from inferencehub/celery.py, and this test"
        )


def test_the_ack_patch_leaves_the_task_to_the_visibility_timeout(released_channel, caplog):
    assert kombu_redis.QoS.ack is celery_module._ack_or_leave_it
    channel, delivery_tag = released_channel
    with caplog.at_level(logging.WARNING, logger="inferencehub.celery"):
        channel.qos.ack(delivery_tag)
    assert f"the ack of task {delivery_tag} is left to the visibility timeout" in caplog.text
