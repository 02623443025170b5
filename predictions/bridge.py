"""The result bridge's handler: decoded results go to a store sink in chunks of STORE_CHUNK;
an undecodable one fails its job and is returned for the runner to dead-letter.

A plain function of a batch of messages whose sinks are passed in (the consume_results
command wires them to Celery tasks), so it imports no app code and is tested with fake
sinks. The runner commits the batch's offsets only after this returns, that is, after every
sink call has returned, and after it has delivered every dead letter.
"""

import logging
from collections.abc import Callable

from opentelemetry.trace import SpanKind

from common import tracing
from common.logs import about_jobs
from kafka_wire.contract import ContractError, InferenceResult, decode_result, job_id_of_key
from kafka_wire.headers import request_id_of, traceparent_of
from kafka_wire.runner import Message, Poison

log = logging.getLogger(__name__)

# Results per store call: bounds a task's size (a result with top_k=1000 is ~70 KiB).
STORE_CHUNK = 64


def handle_results(
    messages: list[Message],
    *,
    store: Callable[[list[InferenceResult]], None],
    fail_job: Callable[[str, str], None],
) -> list[Poison]:
    """store(results) for every STORE_CHUNK decoded results; fail_job(job_id, reason) for an
    undecodable result whose key names its job; returns the undecodable messages."""
    results = []
    request_ids = []
    poisoned = []
    for message in messages:
        try:
            result = decode_result(message.value())
        except ContractError as exc:
            poisoned.append(Poison(message, f"undecodable result: {exc}"))
            if job_id := job_id_of_key(message.key()):
                fail_job(job_id, f"the worker's result could not be read: {exc}")
            continue
        results.append(result)
        request_ids.append(request_id_of(message))
        # The hop from the worker's produce to here, in the job's trace (tracing on).
        with tracing.tracer.start_as_current_span(
            "result received",
            context=tracing.context_of(traceparent_of(message)),
            kind=SpanKind.CONSUMER,
            start_time=result.inferred_at_ms * 1_000_000,
            attributes={"inferencehub.job_id": result.job_id},
        ):
            pass
    for start in range(0, len(results), STORE_CHUNK):
        store(results[start : start + STORE_CHUNK])
    if results:
        about, extra = about_jobs([result.job_id for result in results], request_ids)
        log.info("%d results sent to be stored: %s", len(results), about, extra=extra)
    return poisoned
