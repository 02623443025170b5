"""The Kafka header every message of a job carries besides its payload: the id of the HTTP
request that uploaded the job (common/request_ids.py), from the request to the worker's
result and on to the bridge, so that `grep <request id>` finds the worker's and the bridge's
lines about it too (docs/message-contract.md)."""

from confluent_kafka import Message

REQUEST_ID = "inferencehub-request-id"


def request_id_headers(request_id: str | None) -> list[tuple[str, bytes]]:
    """The headers for a message of a job uploaded by request_id (none when unknown)."""
    return [(REQUEST_ID, request_id.encode())] if request_id else []


def request_id_of(message: Message) -> str | None:
    """The request id a message carries, or None (an older producer's message has none)."""
    for name, value in message.headers() or ():
        if name == REQUEST_ID and value:
            return value.decode("utf-8", "replace")
    return None
