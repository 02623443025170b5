"""Limits of what a request may ask for, each written once: the top_k range, page sizes,
how long an answer is held, the pixels an upload may claim.

It imports nothing, so that what runs without Django (predictions/client.py, the Kafka
contract) reads the same values as the app; the checks that need Django's settings are in
common/uploads.py."""

# How many classes a job may ask for: every form, serializer, schema and check reads these.
TOP_K_MIN = 1
TOP_K_MAX = 1000
TOP_K_DEFAULT = 5


def top_k_problem(top_k: int, *, name: str = "top_k") -> str | None:
    """What is wrong with a top_k (name: the field as the caller calls it), or None."""
    if TOP_K_MIN <= top_k <= TOP_K_MAX:
        return None
    return f"{name} must be between {TOP_K_MIN} and {TOP_K_MAX}, got {top_k}"


# Jobs per page of a list (the API's page_size, the pages' pagination).
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 500

# How long GET /api/jobs/{id}/?wait=N may hold its answer until the job finishes; under
# gunicorn's --timeout (120 s), and short enough that a proxy does not cut it off.
WAIT_MAX_SECONDS = 30

# Cancellations (kafka_wire/cancellations.py): how long the topic keeps one, longer than a
# request waits in Kafka; and how many cancelled job ids a worker remembers, the oldest
# forgotten first (~180 bytes each in CPython: 18 MB when full).
CANCELLATION_RETENTION_S = 7 * 24 * 3600
CANCELLATIONS_REMEMBERED = 100_000

# The furthest deadline an upload may ask for (deadline or timeout_s): a queue is drained
# in hours, so a later one is no deadline at all, and far enough ones overflow the clock.
DEADLINE_MAX_S = 30 * 24 * 3600

# The front door (nginx, stack/nginx.conf) disconnects a client that sends nothing of its
# request's head or body, or reads nothing of its answer, for this long; a head must
# arrive whole within it. Slow clients then cost nginx a connection, never a thread of
# the app.
CLIENT_IDLE_SECONDS = 10

# --- Pixels an upload may claim, so that its decode stays within a budget -------------
# Measured per format at 12, 25 and 50 MP (docs/performance.md, "Big images"; `python -m
# bench.decode`). A JPEG is decoded at a reduced DCT scale: 0.12 s and a few MB at 50 MP,
# so it may have UPLOAD_MAX_PIXELS. Every other format is decoded whole, and its decode's
# memory grows with its pixels whatever the file's size (a WebP's about 15 MB a megapixel);
# this bounds one decode to under a second of CPU and 250 MB, two at once within a Celery
# pod's 1 GiB.
DECODED_WHOLE_MAX_PIXELS = 16_000_000
# A picture above this many pixels holds at least this many bytes per million pixels: a
# flat 25 MP lossy WebP 1,800, a flat PNG 4,400, a photo hundreds of thousands. Fewer is a
# decompression bomb's ratio (the 1,970-byte lossless WebP of 50 MP: 39).
RATIO_CHECKED_ABOVE_PIXELS = 4_000_000
MIN_BYTES_PER_MEGAPIXEL = 1_000
# Pixels decoded whole that one request may bring, all its files together: about ten
# seconds of one Celery process.
REQUEST_MAX_DECODED_WHOLE_PIXELS = 160_000_000
