"""`manage.py run_worker`: serve a model to its requests topic until SIGTERM.

Without --model it serves the model the MODEL_* settings (or options) describe on the
unregistered requests topic; with --model NAME[:VERSION] it serves that registered version
on its own topic in its own consumer group."""

import dataclasses
import logging
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from common import metrics, tracing
from kafka_wire.cancellations import CancellationReader
from kafka_wire.config import lanes_of
from kafka_wire.producer import BatchProducer, new_producer
from kafka_wire.runner import LaneBatchConsumer, Lanes
from kafka_wire.topics import preflight
from registry.models import ModelVersion
from registry.selectors import UnknownModel, find_version, parse_reference, servable_version
from serving.inference import PRECISIONS, RUNTIMES, ModelLoadError, ServedModel
from serving.loading import load_served
from workers.worker import InferenceHandler, worker_id

if TYPE_CHECKING:
    from serving.runtimes.openvino import Execution

logger = logging.getLogger(__name__)

# How long a started worker waits for the cancellations already on their topic before it
# takes requests; past it, it infers meanwhile and drops what it learns of later.
CANCELLATIONS_CATCH_UP_S = 30.0


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
            "--model",
            metavar="NAME[:VERSION]",
            help="serve this registered model version (default: its latest enabled one)",
        )
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
            "--model-package",
            default=settings.MODEL_PACKAGE,
            help="serve this model package (manage.py export_model); TensorFlow is not loaded",
        )
        parser.add_argument("--runtime", choices=RUNTIMES, default=settings.MODEL_RUNTIME)
        parser.add_argument("--precision", choices=PRECISIONS, default=settings.MODEL_PRECISION)
        parser.add_argument(
            "--bf16-fallback",
            action="store_true",
            default=settings.MODEL_BF16_FALLBACK,
            help="run fp32 when bf16 is asked for on a CPU without bf16, instead of refusing",
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
            "--threads", type=positive_int, default=None, help="inference threads (default all)"
        )
        metrics.add_metrics_port_argument(parser)

    def handle(self, *args, **options):
        # Before the slow model load, so a refused client learns it in seconds.
        preflight()
        tracing.configure("inferencehub-worker")
        # Read while the model loads.
        cancellations = CancellationReader(settings.KAFKA_CANCELLATIONS_TOPIC)
        cancellations.start()
        topic = settings.KAFKA_REQUESTS_TOPIC
        group = options["group_id"]
        version_number = 0
        try:
            if options["model"]:
                version = registered_version(options["model"])
                topic, group = version.route.requests_topic, version.route.worker_group
                version_number = version.version
                model = load_registered(version, options)
            else:
                model = load_served(
                    package=options["model_package"],
                    runtime=options["runtime"],
                    precision=options["precision"],
                    bf16_fallback=options["bf16_fallback"],
                    name=settings.MODEL_NAME,
                    weights=options["weights"],
                    model_file=options["model_file"],
                    labels_file=options["labels_file"],
                    input_size=settings.MODEL_INPUT_SIZE,
                    threads=options["threads"],
                    execution=execution(),
                )
        except ModelLoadError as error:
            raise CommandError(str(error)) from None
        logger.info(
            "worker %s: model=%s version=%s weights=%s%s runtime=%s precision=%s input=%d "
            "classes=%d "
            "topic=%s (and its -high and -low lanes) results=%s dead_letters=%s group=%s "
            "bootstrap=%s max_batch_size=%d "
            "max_batch_delay_ms=%d "
            "threads=%s execution=%s",
            worker_id(),
            model.name,
            version_number or "-",
            model.weights,
            " (RANDOM WEIGHTS: predictions are meaningless)" if model.weights == "random" else "",
            model.runtime,
            model.precision,
            model.input_size,
            len(model.labels),
            topic,
            settings.KAFKA_RESULTS_TOPIC,
            settings.KAFKA_DEAD_LETTER_TOPIC,
            group,
            settings.KAFKA_BOOTSTRAP_SERVERS,
            options["max_batch_size"],
            options["max_batch_delay_ms"],
            options["threads"] or "all cores",
            model.execution or "-",
        )
        metrics.serve_metrics(options["metrics_port"])
        if not cancellations.caught_up.wait(CANCELLATIONS_CATCH_UP_S):
            logger.warning(
                "cancellations not read within %.0f s; requests of jobs cancelled meanwhile "
                "may be inferred (their results are ignored)",
                CANCELLATIONS_CATCH_UP_S,
            )
        # The model is loaded before joining the groups, so no partition waits on a worker
        # that is still starting. One consumer per priority lane, read high first with a
        # share of each batch kept for the lower lanes (docs/scheduling.md).
        lanes = Lanes.subscribed(
            lanes_of(topic, group),
            share=settings.PRIORITY_LOWER_LANE_SHARE,
            name="inference worker",
        )
        producer = BatchProducer(new_producer())
        handler = InferenceHandler(
            model,
            producer,
            results_topic=settings.KAFKA_RESULTS_TOPIC,
            model_version=version_number,
            cancelled=cancellations.jobs,
        )
        LaneBatchConsumer(
            lanes,
            handler,
            max_batch_size=options["max_batch_size"],
            max_batch_delay_ms=options["max_batch_delay_ms"],
            name="inference worker",
            dead_letters=producer,
        ).run()
        cancellations.stop()


def registered_version(reference: str) -> ModelVersion:
    """NAME:VERSION, even disabled (its queued jobs still need a worker), or NAME's latest
    enabled version."""
    try:
        name, number = parse_reference(reference)
        if number is not None and (version := find_version(name, number)) is not None:
            return version
        return servable_version(name, number)
    except (UnknownModel, ValueError) as error:
        raise CommandError(str(error)) from None


def load_registered(version: ModelVersion, options: dict) -> ServedModel:
    """Load a registered version as its registration says; the worker's threads and bf16
    fallback options still apply."""
    source = ModelVersion.Source
    served = load_served(
        package=version.path if version.source == source.PACKAGE else "",
        runtime=version.runtime,
        precision=version.precision,
        bf16_fallback=options["bf16_fallback"],
        name="resnet50",  # the built-in one, for a BUILTIN source
        weights=version.weights if version.source == source.BUILTIN else "",
        model_file=version.path if version.source == source.KERAS else "",
        labels_file=version.labels_file,
        input_size=version.input_size,
        threads=options["threads"],
        execution=execution(),
    )
    # Results name the model as registered, whatever its package or file calls it.
    return dataclasses.replace(served, name=version.model.name)


def execution() -> "Execution":
    """How OpenVINO runs a package on this CPU, as the OPENVINO_* settings ask."""
    # Here, not at the top: a worker serving TensorFlow or the instant model never
    # imports OpenVINO.
    from serving.runtimes.openvino import Execution

    return Execution(
        hint=settings.OPENVINO_PERFORMANCE_HINT,
        streams=settings.OPENVINO_STREAMS,
        requests=settings.OPENVINO_INFER_REQUESTS,
    )
