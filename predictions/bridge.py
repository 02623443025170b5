"""The result bridge's handler: decoded results go to a store sink in chunks of STORE_CHUNK;
undecodable ones are dead-lettered and their jobs failed.

A plain function of a batch of messages whose sinks are passed in (the consume_results
command wires them to Celery tasks), so it imports no app code and is tested with fake
sinks. The runner commits the batch's offsets only after this returns, that is, after every
sink call has returned and every dead letter is delivered.
"""

import logging
from collections.abc import Callable

from kafka_wire.contract import ContractError, InferenceResult, decode_result, job_id_of_key
from kafka_wire.producer import BatchProducer, send_to_dead_letter
from kafka_wire.runner import Message

log = logging.getLogger(__name__)

# Results per store call: bounds a task's size (a result with top_k=1000 is ~70 KiB).
STORE_CHUNK = 64


def handle_results(
    messages: list[Message],
    *,
    store: Callable[[list[InferenceResult]], None],
    fail_job: Callable[[str, str], None],
    dead_letters: BatchProducer,
) -> None:
    """store(results) for every STORE_CHUNK decoded results; fail_job(job_id, reason) for an
    undecodable result whose key names its job; dead_letters gets each undecodable message."""
    results = []
    for message in messages:
        try:
            results.append(decode_result(message.value()))
        except ContractError as exc:
            job_id = job_id_of_key(message.key())
            log.warning(
                "undecodable result at %s[%d]@%d (job %s): %s",
                message.topic(),
                message.partition(),
                message.offset(),
                job_id,
                exc,
                extra={"job_id": job_id},
            )
            send_to_dead_letter(dead_letters, message, f"undecodable result: {exc}")
            if job_id:
                fail_job(job_id, f"the worker's result could not be read: {exc}")
    for start in range(0, len(results), STORE_CHUNK):
        store(results[start : start + STORE_CHUNK])
    dead_letters.flush_or_raise()
