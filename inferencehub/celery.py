import logging
import os

from celery import Celery
from celery.signals import before_task_publish, task_postrun, task_prerun, worker_process_init
from django.db import close_old_connections
from kombu import __version__ as kombu_version
from kombu.transport import redis as kombu_redis

from common import request_ids, tracing

logger = logging.getLogger(__name__)
# The task header holding the request id of the upload that led to the task.
REQUEST_ID_HEADER = "inferencehub_request_id"

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inferencehub.settings")

app = Celery("inferencehub")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# The Celery instrumentation's span of beat's dispatch task, every DISPATCH_INTERVAL_SECONDS.
# It starts no trace: most passes admit nothing, and made most of the traces (81 of 105 in
# one run). A sampler decides as a span starts, before the pass knows whether it will
# admit, and a span already exported cannot be taken back, so the pass is not traced and
# one that admits is traced by its own "dispatch" span (predictions/pipeline.py).
BEAT_DISPATCH_SPAN = "run/predictions.tasks.dispatch_jobs"


@worker_process_init.connect(weak=False)
def _trace_the_tasks(**_kwargs) -> None:
    """With tracing on (common/tracing.py), a span per task, in the trace of whoever
    enqueued it; in each pool process, as the SDK's exporter thread does not survive a fork."""
    if tracing.configure("inferencehub-celery", untraced_roots={BEAT_DISPATCH_SPAN}):
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()


@before_task_publish.connect
def _pass_the_request_id_along(headers, **_kwargs) -> None:
    """A task enqueued while a request is handled (or by a task working for one) carries
    that request's id in its headers."""
    if request_id := request_ids.current.get():
        headers.setdefault(REQUEST_ID_HEADER, request_id)


@task_prerun.connect
def _take_the_request_id_up(task, **_kwargs) -> None:
    # An eager task (run in its caller) keeps its caller's id. The token is kept on this
    # run's request, not on the task: the threads pool (the webhooks worker) runs one task
    # object in several threads at once, each of which must put down its own.
    if request_id := task.request.get(REQUEST_ID_HEADER):
        task.request.request_id_token = request_ids.current.set(request_id)


@task_postrun.connect
def _put_the_request_id_down(task, **_kwargs) -> None:
    if token := getattr(task.request, "request_id_token", None):
        request_ids.current.reset(token)
        task.request.request_id_token = None


@task_prerun.connect
@task_postrun.connect
def _close_broken_or_expired_connections(task, **_kwargs) -> None:
    """What Django does at the start and end of a request (see CELERY_DB_REUSE_MAX).
    An eager task runs inside its caller's transaction, which must stay open."""
    if not task.request.is_eager:
        close_old_connections()


# The kombu versions the patch below is for. tests/test_kombu_patch.py reproduces the bug
# against the unpatched method and fails, saying to drop the patch, once kombu is fixed.
KOMBU_VERSIONS_NEEDING_PATCH = ("5.7.0",)


def _restore_unacked_or_leave_them(self, client=None):
    """When Redis is lost, the worker closes its broker connection: closing the channel that
    waits on BRPOP raises, so the connection lets go of its transport with the channel still
    open. Closing that channel afterwards requeues its unacked tasks through the released
    connection, and kombu raises AttributeError ("'NoneType' object has no attribute
    'hostname'", in Channel._connparams), which Celery treats as an unrecoverable error: the
    worker exits. No upstream report of this for kombu 5.x was found; the same failure on
    older kombu: https://github.com/celery/kombu/issues/582 (closing a channel after its
    connection) and https://github.com/celery/kombu/issues/970 (restore_unacked on close).

    Leaving the tasks is safe: they stay in Redis's unacked set and are handed out again
    after the visibility timeout, while the worker reconnects and carries on (tests/faults:
    stop redis for 30 s)."""
    try:
        return unpatched_restore_unacked(self, client)
    except AttributeError:
        logger.warning(
            "broker connection lost: %d unacked task(s) left to the visibility timeout",
            len(self._delivered),
        )
        return None


def _ack_or_leave_it(self, delivery_tag):
    """The same loss seen from the other side: a task that finishes while the worker is
    reconnecting acks through a channel whose connection is already released, and kombu
    raises AttributeError ("'NoneType' object has no attribute 'client'", in
    Channel._create_client), again an unrecoverable error for Celery (seen in tests/faults,
    stop redis for 30 s, under load). Leaving the ack is safe for the same reason: the task
    stays unacked in Redis and runs again after the visibility timeout, and every task is
    idempotent."""
    try:
        return unpatched_ack(self, delivery_tag)
    except AttributeError:
        logger.warning(
            "broker connection lost: the ack of task %s is left to the visibility timeout",
            delivery_tag,
        )
        return None


unpatched_restore_unacked = kombu_redis.QoS.restore_unacked
unpatched_ack = kombu_redis.QoS.ack
if kombu_version in KOMBU_VERSIONS_NEEDING_PATCH:
    kombu_redis.QoS.restore_unacked = _restore_unacked_or_leave_them
    kombu_redis.QoS.ack = _ack_or_leave_it
else:
    logger.warning(
        "kombu %s: the restore_unacked patch (for kombu %s) is not applied; "
        "tests/test_kombu_patch.py shows whether this version still needs it",
        kombu_version,
        ", ".join(KOMBU_VERSIONS_NEEDING_PATCH),
    )
