"""How the store of uploaded originals (settings.STORAGES["default"]) fails when it is away."""

from botocore.exceptions import BotoCoreError, ClientError

# What the S3 storage raises when the bucket cannot be used: endpoint unreachable or too
# slow, no such bucket, request refused. An outage to wait out or report as 503, not a bug.
# (A missing object is FileNotFoundError, as with the file-system storage.)
STORE_UNAVAILABLE = (BotoCoreError, ClientError)
STORE_UNAVAILABLE_MESSAGE = "the image store is unavailable; try again in a few seconds"
