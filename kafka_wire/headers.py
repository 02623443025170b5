"""The Kafka headers every message of a job carries besides its payload: the id of the HTTP
request that uploaded the job (common/request_ids.py), so that `grep <request id>` finds the
worker's and the bridge's lines about it too, and the W3C `traceparent` of the job's trace
(common/tracing.py) (docs/message-contract.md)."""

from confluent_kafka import Message

REQUEST_ID = "inferencehub-request-id"
TRACEPARENT = "traceparent"


def request_id_headers(
    request_id: str | None, traceparent: str | None = None
) -> list[tuple[str, bytes]]:
    """The headers for a message of a job uploaded by request_id, in the trace traceparent
    names (each left out when unknown)."""
    headers = [(REQUEST_ID, request_id.encode())] if request_id else []
    if traceparent:
        headers.append((TRACEPARENT, traceparent.encode()))
    return headers


def traceparent_of(message: Message) -> str | None:
    """The traceparent a message carries, or None."""
    for name, value in message.headers() or ():
        if name == TRACEPARENT and value:
            return value.decode("ascii", "replace")
    return None


def request_id_of(message: Message) -> str | None:
    """The request id a message carries, or None (an older producer's message has none)."""
    for name, value in message.headers() or ():
        if name == REQUEST_ID and value:
            return value.decode("utf-8", "replace")
    return None
