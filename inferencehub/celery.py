import logging
import os

from celery import Celery
from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections
from kombu.transport import redis as kombu_redis

logger = logging.getLogger(__name__)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inferencehub.settings")

app = Celery("inferencehub")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def _close_broken_or_expired_connections(task, **_kwargs) -> None:
    """What Django does at the start and end of a request (see CELERY_DB_REUSE_MAX).
    An eager task runs inside its caller's transaction, which must stay open."""
    if not task.request.is_eager:
        close_old_connections()


def _restore_unacked_or_leave_them(self, client=None):
    """kombu 5.7.0 stops the whole worker ("Unrecoverable error: AttributeError ... 'hostname'")
    when the Redis connection is lost while it holds unacked tasks: closing the channel tries
    to requeue them through a connection that is already gone. Leaving them is safe: they stay
    in Redis's unacked set and are handed out again after the visibility timeout, while the
    worker reconnects and carries on (tests/faults: stop redis for 30 s)."""
    try:
        return _restore_unacked(self, client)
    except AttributeError:
        logger.warning(
            "broker connection lost: %d unacked task(s) left to the visibility timeout",
            len(self._delivered),
        )
        return None


_restore_unacked = kombu_redis.QoS.restore_unacked
kombu_redis.QoS.restore_unacked = _restore_unacked_or_leave_them
