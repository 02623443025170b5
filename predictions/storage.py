"""The store of uploaded originals and their thumbnails (settings.STORAGES["default"]), and
how it fails when it is away."""

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from redis.exceptions import LockError

from common.images import thumbnail_jpeg
from common.uploads import upload_pixel_limits
from predictions.models import Job
from predictions.throttles import counter_client

# What the S3 storage raises when the bucket cannot be used: endpoint unreachable or too
# slow, no such bucket, request refused. An outage to wait out or report as 503, not a bug.
# (A missing object is FileNotFoundError, as with the file-system storage.)
STORE_UNAVAILABLE = (BotoCoreError, ClientError)
STORE_UNAVAILABLE_MESSAGE = "the image store is unavailable; try again in a few seconds"

# The thumbnails kept of each original, by the side of the square each fits in: the
# lists' 96 and the job page's 480. Only these are made, so a request cannot ask for an
# arbitrarily large image.
THUMBNAIL_SIZES = (96, 480)
# How long a request waits for another one making the same thumbnail, and how long a
# maker may hold the lock (a decode within the upload limits takes about a second).
THUMBNAIL_WAIT_S = 20
THUMBNAIL_LOCK_S = 60


class NoThumbnail(Exception):
    """The job's thumbnail cannot be had (`status`: 404, or 503 for now); the message says
    why, for the user."""

    def __init__(self, message: str, *, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


def thumbnail_name(original: str, size: int) -> str:
    # Next to the original, so that the store lists them together.
    return f"{original}.{size}.jpg"


def save_thumbnails(storage: Storage, original: str, thumbnails: dict[int, bytes]) -> None:
    for size, data in thumbnails.items():
        name = thumbnail_name(original, size)
        # A file-system storage would keep a second one under another name, never read.
        if not storage.exists(name):
            storage.save(name, ContentFile(data))


def delete_stored(storage: Storage, original: str) -> None:
    """Delete an original and its thumbnails (those not made yet are no error)."""
    for name in (original, *(thumbnail_name(original, size) for size in THUMBNAIL_SIZES)):
        storage.delete(name)


def job_thumbnail(job: Job, size: int) -> bytes:
    """The JPEG thumbnail of the job's original, read from the store.

    Preprocessing stores them; for a job preprocessed before it did, the first request
    makes it under a lock per job and size, so that concurrent requests decode it once,
    and stores it. Raises NoThumbnail, FileNotFoundError or STORE_UNAVAILABLE."""
    if not job.image.name:
        raise NoThumbnail("the original was deleted after IMAGE_RETENTION_DAYS")
    storage = job.image.storage
    name = thumbnail_name(job.image.name, size)
    try:
        return _read(storage, name)
    except FileNotFoundError:
        pass
    # An original accepted under earlier, higher limits is not decoded by the web.
    if job.image_width * job.image_height > upload_pixel_limits().for_format(job.image_format):
        raise NoThumbnail("the image is too large to preview; download the original")
    key = cache.make_and_validate_key(f"thumbnail:{job.pk}:{size}")
    lock = counter_client(settings.CACHES["default"]["LOCATION"]).lock(
        key, timeout=THUMBNAIL_LOCK_S, blocking_timeout=THUMBNAIL_WAIT_S
    )
    try:
        with lock:
            try:
                return _read(storage, name)  # made by the request that held the lock
            except FileNotFoundError:
                pass
            with job.image.open("rb") as file:
                data = thumbnail_jpeg(file, size=size)
            save_thumbnails(storage, job.image.name, {size: data})
            return data
    except LockError:
        raise NoThumbnail(
            "the thumbnail is being made; try again in a few seconds", status=503
        ) from None


def _read(storage: Storage, name: str) -> bytes:
    with storage.open(name, "rb") as file:
        return file.read()
