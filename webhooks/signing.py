"""The signature of a webhook, as Stripe's is made: HMAC-SHA256, under the owner's secret,
of "<unix time>.<body>", sent as `InferenceHub-Signature: t=<unix time>,v1=<hex>`.
docs/webhooks.md shows a receiver checking it."""

import hashlib
import hmac

SIGNATURE_HEADER = "InferenceHub-Signature"
DELIVERY_HEADER = "InferenceHub-Delivery"
EVENT_HEADER = "InferenceHub-Event"
EVENT = "job.finished"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The header's value for this body sent at this time."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
