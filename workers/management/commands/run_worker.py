"""`manage.py run_worker`: serve the model to the inference-requests topic until SIGTERM."""

import logging

from confluent_kafka import Consumer, Producer
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from inferencehub import metrics
from kafka_bridge.config import consumer_config, producer_config
from kafka_bridge.runner import BatchConsumer, BatchProducer
from workers.serving import ModelLoadError, load_model
from workers.worker import InferenceHandler, worker_id

logger = logging.getLogger(__name__)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


class Command(BaseCommand):
    help = "Consume inference requests from Kafka, classify them in batches, produce results."

    def add_arguments(self, parser):
        parser.add_argument(
            "--model-file", default=settings.MODEL_FILE, help="saved .keras classifier"
        )
        parser.add_argument(
            "--labels-file", default=settings.MODEL_LABELS_FILE, help="one class per line"
        )
        parser.add_argument(
            "--weights",
            default=settings.MODEL_WEIGHTS,
            help="imagenet, random or a weights file path",
        )
        parser.add_argument(
            "--max-batch-size", type=positive_int, default=settings.WORKER_MAX_BATCH_SIZE
        )
        parser.add_argument(
            "--max-batch-delay-ms",
            type=non_negative_int,
            default=settings.WORKER_MAX_BATCH_DELAY_MS,
        )
        parser.add_argument("--group-id", default=settings.KAFKA_WORKER_GROUP)
        parser.add_argument(
            "--threads", type=positive_int, default=None, help="TensorFlow intra-op threads"
        )
        metrics.add_metrics_port_argument(parser)

    def handle(self, *args, **options):
        try:
            model = load_model(
                name=settings.MODEL_NAME,
                weights=options["weights"],
                model_file=options["model_file"],
                labels_file=options["labels_file"],
                input_size=settings.MODEL_INPUT_SIZE,
                threads=options["threads"],
            )
        except ModelLoadError as error:
            raise CommandError(str(error)) from None
        logger.info(
            "worker %s: model=%s weights=%s%s input=%d classes=%d topic=%s results=%s "
            "dead_letters=%s group=%s bootstrap=%s max_batch_size=%d max_batch_delay_ms=%d "
            "threads=%s",
            worker_id(),
            model.name,
            model.weights,
            " (RANDOM WEIGHTS: predictions are meaningless)" if model.weights == "random" else "",
            model.input_size,
            len(model.labels),
            settings.KAFKA_REQUESTS_TOPIC,
            settings.KAFKA_RESULTS_TOPIC,
            settings.KAFKA_DEAD_LETTER_TOPIC,
            options["group_id"],
            settings.KAFKA_BOOTSTRAP_SERVERS,
            options["max_batch_size"],
            options["max_batch_delay_ms"],
            options["threads"] or "all cores",
        )
        metrics.serve_metrics(options["metrics_port"])
        # The model is loaded before joining the group, so no partition waits on a worker
        # that is still starting.
        consumer = Consumer(consumer_config(options["group_id"]))
        consumer.subscribe([settings.KAFKA_REQUESTS_TOPIC])
        producer = BatchProducer(Producer(producer_config()))
        handler = InferenceHandler(model, producer, results_topic=settings.KAFKA_RESULTS_TOPIC)
        BatchConsumer(
            consumer,
            handler,
            max_batch_size=options["max_batch_size"],
            max_batch_delay_ms=options["max_batch_delay_ms"],
            name="inference worker",
        ).run()
