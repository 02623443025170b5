"""The inference handler: request messages in, one result message per request out.

It is a plain callable of a list of Kafka messages, run by kafka_wire.runner.BatchConsumer.
Before a batch is predicted, its requests for cancelled jobs are dropped without an answer
(the job has ended already), and those past their deadline are answered with an expired
result instead. A request that cannot be decoded or classified gets an error result, so
its job is marked failed instead of blocking the partition, and is returned as a Poison for
the runner to dead-letter; the handler raises only when its output could not be
delivered, so the runner redoes the batch.

With tracing on (common/tracing.py), each batch is one span linked to the span of every
request it served, and each request gets a span of its own trace from the time it was
handed to Kafka to its result: the wait in Kafka and the inference.
"""

import logging
import os
import socket
import time
from collections.abc import Container

from opentelemetry.trace import Link, SpanKind

from common import metrics, tracing
from common.logs import about_jobs
from kafka_wire.contract import (
    ClassScore,
    ContractError,
    InferenceRequest,
    InferenceResult,
    decode_request,
    encode_key,
    encode_result,
    job_id_of_key,
)
from kafka_wire.headers import request_id_headers, request_id_of, traceparent_of
from kafka_wire.producer import BatchProducer
from kafka_wire.runner import Message, Poison
from serving.inference import ServedModel

logger = logging.getLogger(__name__)


def worker_id() -> str:
    """How results name the process that produced them."""
    return f"{socket.gethostname()}:{os.getpid()}"


class InferenceHandler:
    def __init__(
        self,
        model: ServedModel,
        producer: BatchProducer,
        *,
        results_topic: str,
        model_version: int = 0,
        cancelled: Container[str] = frozenset(),
    ) -> None:
        """cancelled: the ids of cancelled jobs known so far (kafka_wire.cancellations)."""
        self.model = model
        self.cancelled = cancelled
        # The registered version served (0: an unregistered model), named in every result.
        self.model_version = model_version
        self.producer = producer
        self.results_topic = results_topic
        self.worker = worker_id()

    def __call__(self, messages: list[Message]) -> list[Poison]:
        poisoned: list[Poison] = []
        decoded = []
        for message in messages:
            try:
                decoded.append((message, decode_request(message.value())))
            except ContractError as error:
                reason = f"undecodable request: {error}"
                self.fail(job_id_of_key(message.key()), reason, message)
                poisoned.append(Poison(message, reason))
        decoded = self.drop_unwanted(decoded)
        if decoded:
            self.infer(decoded, poisoned)
        self.producer.flush_or_raise()
        return poisoned

    def drop_unwanted(
        self, decoded: list[tuple[Message, InferenceRequest]]
    ) -> list[tuple[Message, InferenceRequest]]:
        """The requests still wanted. A cancelled job's is dropped unanswered (the job has
        ended, and the bridge would ignore any answer); one past its deadline gets an
        expired result, so its job ends expired now rather than at its timeout. Either way
        its offset is committed with the batch's."""
        now_ms = int(time.time() * 1000)
        wanted = []
        for message, request in decoded:
            if request.job_id in self.cancelled:
                metrics.REQUESTS_DROPPED.labels("cancelled").inc()
                logger.info(
                    "request of cancelled job %s dropped",
                    request.job_id,
                    extra={"job_id": request.job_id, "request_id": request_id_of(message) or "-"},
                )
            elif request.deadline_ms is not None and request.deadline_ms <= now_ms:
                metrics.REQUESTS_DROPPED.labels("expired").inc()
                late_s = (now_ms - request.deadline_ms) / 1000
                self.publish(
                    self.result(
                        request.job_id,
                        error=f"deadline passed {late_s:.1f} s before a worker took the request",
                        expired=True,
                    ),
                    request_id_headers(request_id_of(message), traceparent_of(message)),
                )
            else:
                wanted.append((message, request))
        return wanted

    def infer(
        self, decoded: list[tuple[Message, InferenceRequest]], poisoned: list[Poison]
    ) -> None:
        """One predict over the whole batch; if that fails, each request alone, so that one
        poison image fails only its own job (and is added to poisoned)."""
        requests = [request for _, request in decoded]
        started = time.perf_counter()
        try:
            with self.batch_span(decoded) as batch:
                all_predictions = self.model.predict(
                    [request.image for request in requests],
                    [request.top_k for request in requests],
                )
        except Exception as error:
            if len(decoded) == 1:
                message, request = decoded[0]
                request_id = request_id_of(message)
                logger.exception(
                    "inference failed for job %s",
                    request.job_id,
                    extra={"job_id": request.job_id, "request_id": request_id or "-"},
                )
                reason = f"inference failed: {error}"
                self.fail(request.job_id, reason, message)
                poisoned.append(Poison(message, reason))
                return
            logger.warning(
                "batch of %d failed (%s); retrying each request alone", len(decoded), error
            )
            for pair in decoded:
                self.infer([pair], poisoned)
            return
        inference_s = time.perf_counter() - started
        metrics.INFERENCE_SECONDS.observe(inference_s)
        about, extra = about_jobs(
            [request.job_id for request in requests],
            [request_id_of(message) for message, _ in decoded],
        )
        logger.info(
            "inferred a batch of %d in %.1f ms: %s",
            len(requests),
            inference_s * 1000,
            about,
            extra=extra,
        )
        for (message, request), predictions in zip(decoded, all_predictions, strict=True):
            with self.request_span(message, request, batch):
                self.publish(
                    self.result(
                        request.job_id,
                        predictions=predictions,
                        batch_size=len(requests),
                        inference_ms=inference_s * 1000,
                    ),
                    request_id_headers(request_id_of(message), tracing.current_traceparent()),
                )

    def batch_span(self, decoded: list[tuple[Message, InferenceRequest]]):
        """One span for the batch's predict, linked to each request's span."""
        contexts = (tracing.span_context_of(traceparent_of(message)) for message, _ in decoded)
        return tracing.tracer.start_as_current_span(
            "inference batch",
            links=[Link(context) for context in contexts if context is not None],
            attributes={
                "inferencehub.batch_size": len(decoded),
                "inferencehub.model": self.model.name,
                "inferencehub.model_version": self.model_version,
                "inferencehub.runtime": self.model.runtime,
                "inferencehub.precision": self.model.precision,
            },
        )

    def request_span(self, message: Message, request: InferenceRequest, batch):
        """The request's span in its job's trace: from its hand-over to Kafka to its result,
        linked to the batch that served it."""
        links, linked = tracing.link_to(batch.get_span_context())
        return tracing.tracer.start_as_current_span(
            "inference request",
            context=tracing.context_of(traceparent_of(message)),
            kind=SpanKind.CONSUMER,
            start_time=request.submitted_at_ms * 1_000_000,
            links=links,
            attributes={"inferencehub.job_id": request.job_id, **linked},
        )

    def fail(self, job_id: str | None, reason: str, message: Message) -> None:
        """An error result, so the job fails now rather than at its timeout; a message whose
        key names no job has no one to tell."""
        if job_id is not None:
            headers = request_id_headers(request_id_of(message), traceparent_of(message))
            self.publish(self.result(job_id, error=reason), headers)

    def result(
        self,
        job_id: str,
        *,
        predictions: list[ClassScore] | None = None,
        error: str = "",
        batch_size: int = 0,
        inference_ms: float = 0.0,
        expired: bool = False,
    ) -> InferenceResult:
        """The answer to one request: its predictions, or the error that stopped it."""
        return InferenceResult(
            job_id=job_id,
            ok=not error,
            predictions=predictions or [],
            error=error,
            worker=self.worker,
            model=self.model.name,
            weights=self.model.weights,
            runtime=self.model.runtime,
            precision=self.model.precision,
            model_version=self.model_version,
            batch_size=batch_size,
            inference_ms=inference_ms,
            inferred_at_ms=int(time.time() * 1000),
            expired=expired,
        )

    def publish(self, result: InferenceResult, headers: list) -> None:
        """Produce the result with the request's id and trace (kafka_wire/headers.py), so the
        bridge's lines and spans join them."""
        self.producer.produce(
            self.results_topic,
            key=encode_key(result.job_id),
            value=encode_result(result),
            headers=headers,
        )
