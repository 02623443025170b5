"""The result bridge's handler: results from the workers become Celery post-processing tasks,
one store_results task per STORE_CHUNK results, so a batch is stored in one transaction.

A plain function of Kafka messages, so it is tested without the consumer loop. The runner
commits the batch's offsets only after this returns, that is, after every task is in Redis
and every dead letter is delivered.
"""

import logging
from dataclasses import asdict

from confluent_kafka import Message

from kafka_bridge.contract import ContractError, decode_result, job_id_of_key
from kafka_bridge.runner import BatchProducer, send_to_dead_letter
from predictions.tasks import fail_job, store_results

log = logging.getLogger(__name__)

# Results per store_results task: bounds a task's size (a result with top_k=1000 is ~70 KiB).
STORE_CHUNK = 64


def handle_results(messages: list[Message], *, producer: BatchProducer) -> None:
    results = []
    for message in messages:
        try:
            result = decode_result(message.value())
        except ContractError as exc:
            job_id = job_id_of_key(message.key())
            log.warning(
                "undecodable result at %s[%d]@%d (job %s): %s",
                message.topic(),
                message.partition(),
                message.offset(),
                job_id,
                exc,
            )
            send_to_dead_letter(producer, message, f"undecodable result: {exc}")
            if job_id:
                fail_job.delay(job_id, f"the worker's result could not be read: {exc}")
            continue
        results.append(asdict(result))
    for start in range(0, len(results), STORE_CHUNK):
        store_results.delay(results[start : start + STORE_CHUNK])
    producer.flush_or_raise()
