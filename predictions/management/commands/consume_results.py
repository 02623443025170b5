"""`manage.py consume_results`: the result bridge. Runs predictions.bridge' handler over the
results topic, its sinks wired to this app's Celery tasks."""

import functools
import logging

from django.conf import settings
from django.core.management.base import BaseCommand

from common import metrics, tracing
from kafka_wire.contract import InferenceResult
from kafka_wire.runner import BatchConsumer, subscribed_consumer
from kafka_wire.topics import preflight
from predictions.bridge import handle_results
from predictions.tasks import fail_job, store_results

log = logging.getLogger(__name__)


def store(results: list[InferenceResult]) -> None:
    """One store_results task per chunk: a batch of results is stored in one transaction."""
    store_results.delay([result.to_dict() for result in results])


def fail(job_id: str, reason: str) -> None:
    fail_job.delay(job_id, reason)


class Command(BaseCommand):
    help = "Consume the results topic and hand each result to Celery for storage (the bridge)."

    def add_arguments(self, parser):
        parser.add_argument("--group-id", default=settings.KAFKA_BRIDGE_GROUP)
        parser.add_argument("--max-batch-size", type=int, default=500)
        # Short: waiting delays every result at light load, and under load the results of
        # a whole inference batch arrive together anyway.
        parser.add_argument("--max-batch-delay-ms", type=int, default=5)
        # Once results come faster than one per delay, a longer wait gathers them into fewer
        # store tasks (each a Celery message and a transaction): docs/performance.md.
        parser.add_argument("--busy-batch-delay-ms", type=int, default=25)
        metrics.add_metrics_port_argument(parser)

    def handle(
        self,
        *args,
        group_id,
        max_batch_size,
        max_batch_delay_ms,
        busy_batch_delay_ms,
        **options,
    ):
        preflight()
        tracing.configure("inferencehub-bridge")
        consumer = subscribed_consumer(group_id, [settings.KAFKA_RESULTS_TOPIC])
        log.info(
            "result bridge consuming %s as group %s from %s (batches of up to %d, %d ms, "
            "%d ms when busy)",
            settings.KAFKA_RESULTS_TOPIC,
            group_id,
            settings.KAFKA_BOOTSTRAP_SERVERS,
            max_batch_size,
            max_batch_delay_ms,
            busy_batch_delay_ms,
        )
        metrics.serve_metrics(options["metrics_port"])
        handler = functools.partial(handle_results, store=store, fail_job=fail)
        BatchConsumer(
            consumer,
            handler,
            max_batch_size=max_batch_size,
            max_batch_delay_ms=max_batch_delay_ms,
            busy_batch_delay_ms=busy_batch_delay_ms,
            name="result-bridge",
        ).run()
