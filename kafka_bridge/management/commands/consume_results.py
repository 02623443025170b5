import functools
import logging

from confluent_kafka import Consumer, Producer
from django.conf import settings
from django.core.management.base import BaseCommand

from inferencehub import metrics
from kafka_bridge.config import consumer_config, producer_config
from kafka_bridge.results import handle_results
from kafka_bridge.runner import BatchConsumer, BatchProducer

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Consume the results topic and hand each result to Celery for storage (the bridge)."

    def add_arguments(self, parser):
        parser.add_argument("--group-id", default=settings.KAFKA_BRIDGE_GROUP)
        parser.add_argument("--max-batch-size", type=int, default=500)
        # Short: waiting delays every result at light load, and under load the results of
        # a whole inference batch arrive together anyway.
        parser.add_argument("--max-batch-delay-ms", type=int, default=5)
        metrics.add_metrics_port_argument(parser)

    def handle(self, *args, group_id, max_batch_size, max_batch_delay_ms, **options):
        consumer = Consumer(consumer_config(group_id))
        consumer.subscribe([settings.KAFKA_RESULTS_TOPIC])
        producer = BatchProducer(Producer(producer_config()))
        log.info(
            "result bridge consuming %s as group %s from %s (batches of up to %d, %d ms)",
            settings.KAFKA_RESULTS_TOPIC,
            group_id,
            settings.KAFKA_BOOTSTRAP_SERVERS,
            max_batch_size,
            max_batch_delay_ms,
        )
        metrics.serve_metrics(options["metrics_port"])
        BatchConsumer(
            consumer,
            functools.partial(handle_results, producer=producer),
            max_batch_size=max_batch_size,
            max_batch_delay_ms=max_batch_delay_ms,
            name="result-bridge",
        ).run()
