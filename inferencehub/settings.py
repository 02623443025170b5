"""InferenceHub settings, read from the environment once, here.

Every default points at the local stack that `make run` starts (see stack/stack.py),
so a developer needs no configuration. A malformed value stops start-up with a
message that names the variable.

One long module on purpose: every setting is read from the environment once, here
(README's Configuration section describes each).
"""

import ipaddress
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from common.callbacks import parse_allow_list
from common.lanes import MAX_SHARE
from stack.common import STATE as STACK_STATE
from stack.common import redis_url
from stack.processes import PREPROCESS_QUEUE, RESULTS_QUEUE, WEBHOOKS_QUEUE

BASE_DIR = Path(__file__).resolve().parent.parent

_env = environ.Env()


def env(name: str, cast=str, default=environ.Env.NOTSET):
    """Read one variable; a missing required or malformed value names the variable."""
    try:
        return _env.get_value(name, cast=cast, default=default)
    except ImproperlyConfigured:
        raise
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"Setting {name} is malformed: {exc}") from None


_BOOLEANS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def env_bool(name: str, default: bool) -> bool:
    """Unlike a plain cast, a typo such as DJANGO_DEBUG=flase is an error, not False."""
    raw = env(name, str, "")
    if raw == "":
        return default
    if raw.lower() not in _BOOLEANS:
        raise ImproperlyConfigured(f"Setting {name} must be true or false, got {raw!r}")
    return _BOOLEANS[raw.lower()]


def env_positive_int(name: str, default: int) -> int:
    value = env(name, int, default)
    if value < 1:
        raise ImproperlyConfigured(f"Setting {name} must be a positive integer, got {value}")
    return value


def env_non_negative_int(name: str, default: int) -> int:
    value = env(name, int, default)
    if value < 0:
        raise ImproperlyConfigured(f"Setting {name} must be 0 or a positive integer, got {value}")
    return value


def env_fraction(name: str, default: float, *, most: float) -> float:
    value = env(name, float, default)
    if not 0 < value <= most:
        raise ImproperlyConfigured(
            f"Setting {name} must be above 0 and at most {most:.3g}, got {value}"
        )
    return value


def env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    value = env(name, str, default)
    if value not in choices:
        raise ImproperlyConfigured(
            f"Setting {name} must be one of {', '.join(choices)}, got {value!r}"
        )
    return value


def env_rate(name: str, default: str) -> str:
    """A DRF throttle rate such as 100/hour; checked here because DRF would only fail on
    the first request."""
    value = env(name, str, default)
    count, _, period = value.partition("/")
    # isascii: "²" passes isdigit() but not int().
    is_count = count.isascii() and count.isdigit()
    if not is_count or period not in ("second", "minute", "hour", "day"):
        raise ImproperlyConfigured(
            f"Setting {name} must look like 100/hour (second, minute, hour or day), got {value!r}"
        )
    return value


def env_file(name: str, default: str = "") -> str:
    """A path to a file that must exist and be readable; empty means none."""
    path = env(name, str, default)
    if path:
        try:
            Path(path).open("rb").close()
        except OSError as exc:
            raise ImproperlyConfigured(
                f"Setting {name} names a file that cannot be read: {exc}"
            ) from None
    return path


def env_database(name: str, default: str) -> dict:
    url = env(name, str, default)
    try:
        config = environ.Env.db_url_config(url)
    except (KeyError, ValueError) as exc:
        raise ImproperlyConfigured(f"Setting {name} is malformed: {exc}") from None
    if not config.get("ENGINE") or not config.get("NAME"):
        raise ImproperlyConfigured(
            f"Setting {name} is malformed: expected scheme://user:pass@host:port/name"
        )
    return config


DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = env(
    "DJANGO_SECRET_KEY", str, "dev-only-insecure-key-change-me" if DEBUG else environ.Env.NOTSET
)
ALLOWED_HOSTS = env("DJANGO_ALLOWED_HOSTS", list, ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env("DJANGO_CSRF_TRUSTED_ORIGINS", list, [])

# --- HTTPS: on by default in production (manage.py check --deploy is clean) -----------
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
# Cookies sent over HTTPS only; a plain-HTTP demo (docker/compose.yaml) switches this off.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
SECURE_HSTS_SECONDS = env("DJANGO_SECURE_HSTS_SECONDS", int, 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
# Preload is a commitment to HTTPS for the whole domain; switch off while trying things out.
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", not DEBUG)
# Behind a TLS-terminating proxy Django sees plain HTTP; trust the proxy's header (only
# when the proxy sets it and strips it from clients), e.g. "X-Forwarded-Proto".
if _proxy_header := env("DJANGO_SECURE_PROXY_SSL_HEADER", str, ""):
    SECURE_PROXY_SSL_HEADER = (f"HTTP_{_proxy_header.upper().replace('-', '_')}", "https")
# The health checks are probed over plain HTTP by orchestrators inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "predictions",
    "registry",
    "workers",
    "bench",
    "webhooks",
]

MIDDLEWARE = [
    # Outermost: the request's id is set before anything logs, and its access line has the
    # status the client gets, error pages included.
    "common.request_ids.RequestIdMiddleware",
    # Next: every other middleware can raise (SecurityMiddleware and CommonMiddleware
    # raise DisallowedHost for a foreign Host header, CommonMiddleware a RuntimeError under
    # DEBUG for a POST without its trailing slash), and Django turns what they raise into
    # its debug page right there; only a middleware outside them sees that page to replace.
    "common.errors.ErrorPagesMiddleware",
    # Before anything reads the body: refuses an oversized request by its Content-Length.
    "common.uploads.RequestSizeLimitMiddleware",
    # Early, so the latency it measures includes the other middleware.
    "common.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After the user is known: pages are counted per user, or per address when anonymous.
    "predictions.throttles.PageThrottleMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it answers a sign-in refused for too many failures.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "inferencehub.urls"
CSRF_FAILURE_VIEW = "common.errors.csrf_failure"
WSGI_APPLICATION = "inferencehub.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: MariaDB through mysqlclient, utf8mb4 and strict mode -------------
DATABASES = {
    "default": env_database(
        "DATABASE_URL", "mysql://inferencehub:inferencehub@127.0.0.1:13306/inferencehub"
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "charset": "utf8mb4",
            "init_command": "SET sql_mode='STRICT_TRANS_TABLES', innodb_lock_wait_timeout=20",
            "connect_timeout": 5,
        }
    )
    DATABASES["default"]["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
DATABASES["default"]["CONN_MAX_AGE"] = env("DATABASE_CONN_MAX_AGE", int, 60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Sign-in: failures are counted per account and per client address (django-axes) ----
# The Axes backend comes first: a locked-out account or address is refused before its
# password is hashed (0.65 s of CPU a try), on every sign-in form: the pages', the
# admin's and the browsable API's.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Counted in the cache (Redis, shared by every web process); each count expires
# LOGIN_LOCKOUT_MINUTES after its last failure.
AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"
# This many failures for one username, or from one address, locks that one out.
AXES_FAILURE_LIMIT = env_positive_int("LOGIN_FAILURE_LIMIT", 10)
LOGIN_LOCKOUT_MINUTES = env_positive_int("LOGIN_LOCKOUT_MINUTES", 15)
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# The address the proxy saw, not the proxy's own (behind it, every client is 127.0.0.1).
AXES_CLIENT_IP_CALLABLE = "common.clients.client_address"
AXES_LOCKOUT_CALLABLE = "common.errors.sign_in_locked_out"
# Every sign-in is already in the web's log; no table of them, and no admin pages for
# the tables the cache handler leaves empty.
AXES_DISABLE_ACCESS_LOG = True
AXES_ENABLE_ADMIN = False
# Its start-up banner would be a line in every command's output; lockouts are still logged.
AXES_VERBOSE = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# gunicorn serves static files (the admin's, the pages') through WhiteNoise; finders let it
# do so without a collectstatic step.
WHITENOISE_USE_FINDERS = True

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "upload"
LOGOUT_REDIRECT_URL = "login"
MEDIA_URL = "/media/"
# In the stack's own folder, so that a second stack (STACK_DIR) keeps its images apart.
MEDIA_ROOT = env("MEDIA_ROOT", str, str(STACK_STATE / "media"))

# --- Stored originals: local files by default, S3-compatible storage when configured


def s3_storage(
    *, bucket: str, endpoint_url: str, region_name: str, access_key: str, secret_key: str
) -> dict:
    """The storage of originals in an S3 bucket (empty values: boto3's own defaults)."""
    from botocore.config import Config

    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": endpoint_url or None,
            "region_name": region_name or None,
            "access_key": access_key or None,
            "secret_key": secret_key or None,
            "default_acl": None,
            "querystring_auth": True,
            "file_overwrite": False,
            "client_config": Config(
                # An unreachable store fails an upload in seconds (503), not minutes.
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 3, "mode": "standard"},
                # Checksum headers only where S3 requires them: S3-compatible servers such
                # as s3proxy refuse the newer ones botocore sends by default.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        },
    }


AWS_STORAGE_BUCKET_NAME = env("AWS_STORAGE_BUCKET_NAME", str, "")
if AWS_STORAGE_BUCKET_NAME:
    _default_storage = s3_storage(
        bucket=AWS_STORAGE_BUCKET_NAME,
        endpoint_url=env("AWS_S3_ENDPOINT_URL", str, ""),
        region_name=env("AWS_S3_REGION_NAME", str, ""),
        access_key=env("AWS_ACCESS_KEY_ID", str, ""),
        secret_key=env("AWS_SECRET_ACCESS_KEY", str, ""),
    )
else:
    _default_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# --- Uploads --------------------------------------------------------------------
UPLOAD_MAX_BYTES = env_positive_int("UPLOAD_MAX_BYTES", 20 * 1024 * 1024)
UPLOAD_MAX_PIXELS = env_positive_int("UPLOAD_MAX_PIXELS", 50_000_000)
UPLOAD_MAX_FILES_PER_REQUEST = env_positive_int("UPLOAD_MAX_FILES_PER_REQUEST", 100)
# Django refuses bodies above this before reading them in full.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_HANDLERS = [
    "common.uploads.MemoryFileUploadHandler",
    "common.uploads.TemporaryFileUploadHandler",
]
DATA_UPLOAD_MAX_NUMBER_FILES = UPLOAD_MAX_FILES_PER_REQUEST
# A request whose Content-Length is above this gets 413 before its body is read. Default:
# room for the most files of the largest size a request may carry, capped at 200 MB.
REQUEST_MAX_BYTES = env_positive_int(
    "REQUEST_MAX_BYTES",
    min(200 * 1024 * 1024, UPLOAD_MAX_BYTES * UPLOAD_MAX_FILES_PER_REQUEST + 1024 * 1024),
)
ALLOW_ANONYMOUS_UPLOADS = env_bool("ALLOW_ANONYMOUS_UPLOADS", False)
SEED_API_ENABLED = env_bool("SEED_API_ENABLED", True)
# Whether the seed API's /register and /image answer callers without credentials, as the
# seed system did: off, they need a token (or a session) like the REST API. `make run`
# turns it on for the seed's clients; anonymous calls are throttled per address
# (API_THROTTLE_ANON).
SEED_API_ANONYMOUS = env_bool("SEED_API_ANONYMOUS", False)
# Thumbnails and originals served per user (or address) and window.
IMAGE_THROTTLE = env_rate("IMAGE_THROTTLE", "1200/minute")
# Web pages (the site's, the admin's, the sign-in forms) per user (or address) and window.
PAGE_THROTTLE = env_rate("PAGE_THROTTLE", "300/minute")

# --- Jobs -------------------------------------------------------------------------
JOB_TIMEOUT_SECONDS = env_positive_int("JOB_TIMEOUT_SECONDS", 300)
JOB_MAX_ATTEMPTS = env_positive_int("JOB_MAX_ATTEMPTS", 3)
SWEEP_INTERVAL_SECONDS = env_positive_int("SWEEP_INTERVAL_SECONDS", 60)
# Jobs wait their turn in the database; the dispatcher lets a model version's next ones
# into preprocessing while fewer than this many of its jobs are on their way (preprocessing,
# in Kafka, being inferred): enough to keep its workers' batches full, few enough that a
# new uploader's job is never behind a long backlog (docs/scheduling.md).
DISPATCH_IN_FLIGHT_PER_MODEL = env_positive_int("DISPATCH_IN_FLIGHT_PER_MODEL", 64)
# The dispatcher runs after each upload and each stored batch of results; beat runs it
# this often besides, in case one of those runs was missed.
DISPATCH_INTERVAL_SECONDS = env_positive_int("DISPATCH_INTERVAL_SECONDS", 2)
# Priority lanes (common/lanes.py, docs/scheduling.md): high jobs are admitted beyond
# DISPATCH_IN_FLIGHT_PER_MODEL by up to this many, so that one never waits for a place
# behind a full cap of normal and low jobs; they are read first by the workers as well.
DISPATCH_HIGH_EXTRA_IN_FLIGHT = env_non_negative_int("DISPATCH_HIGH_EXTRA_IN_FLIGHT", 16)
# Of every round of places (the dispatcher's free places of a model version, a worker's
# batch), each lower lane with work waiting keeps at least this fraction.
PRIORITY_LOWER_LANE_SHARE = env_fraction("PRIORITY_LOWER_LANE_SHARE", 0.125, most=MAX_SHARE)
# Stored originals of finished jobs older than this are deleted daily; 0 keeps them forever.
IMAGE_RETENTION_DAYS = env("IMAGE_RETENTION_DAYS", int, 30)
if IMAGE_RETENTION_DAYS < 0:
    raise ImproperlyConfigured(
        f"Setting IMAGE_RETENTION_DAYS must be 0 or more, got {IMAGE_RETENTION_DAYS}"
    )
# Finished jobs, their predictions and their webhooks' deliveries older than this many days
# are deleted daily, with their images; 0 keeps them.
RESULT_RETENTION_DAYS = env("RESULT_RETENTION_DAYS", int, 0)
if RESULT_RETENTION_DAYS < 0:
    raise ImproperlyConfigured(
        f"Setting RESULT_RETENTION_DAYS must be 0 or more, got {RESULT_RETENTION_DAYS}"
    )

# --- Completion webhooks (webhooks/, docs/webhooks.md) ----------------------------------
# Callback URLs resolving to these networks or naming these hosts are called although they
# are not public (common/callbacks.py): e.g. "10.20.0.0/16,hooks.internal". Empty: none.
try:
    WEBHOOK_ALLOWED_NETWORKS = parse_allow_list(env("WEBHOOK_ALLOWED_NETWORKS", str, ""))
except ValueError as exc:
    raise ImproperlyConfigured(f"Setting WEBHOOK_ALLOWED_NETWORKS is malformed: {exc}") from None
# A delivery is retried with exponential backoff until this long after the job finished.
WEBHOOK_RETRY_FOR_S = env_positive_int("WEBHOOK_RETRY_FOR_S", 24 * 60 * 60)
# How long one attempt waits for the receiver's answer.
WEBHOOK_TIMEOUT_S = env_positive_int("WEBHOOK_TIMEOUT_S", 10)

# --- Kafka ------------------------------------------------------------------------
KAFKA_BOOTSTRAP_SERVERS = env("KAFKA_BOOTSTRAP_SERVERS", str, "127.0.0.1:19092")
KAFKA_REQUESTS_TOPIC = env("KAFKA_REQUESTS_TOPIC", str, "inference-requests")
KAFKA_RESULTS_TOPIC = env("KAFKA_RESULTS_TOPIC", str, "inference-results")
KAFKA_DEAD_LETTER_TOPIC = env("KAFKA_DEAD_LETTER_TOPIC", str, "inference-dead-letters")
# Compacted: the ids of cancelled jobs, which every worker reads whole to drop their requests.
KAFKA_CANCELLATIONS_TOPIC = env("KAFKA_CANCELLATIONS_TOPIC", str, "inference-cancellations")
KAFKA_TOPIC_PARTITIONS = env_positive_int("KAFKA_TOPIC_PARTITIONS", 4)
KAFKA_REPLICATION_FACTOR = env_positive_int("KAFKA_REPLICATION_FACTOR", 1)
KAFKA_WORKER_GROUP = env("KAFKA_WORKER_GROUP", str, "inferencehub-workers")
KAFKA_BRIDGE_GROUP = env("KAFKA_BRIDGE_GROUP", str, "inferencehub-bridge")
# A request is 150 KB of pixels that compress poorly (zstd 3 saves ~25 %, lz4 ~12 %), and
# compressing costs the preprocessing more than anything but decoding: 0.58 ms more per
# message with zstd, 0.19 with lz4 (docs/performance.md). zstd suits a thin link.
KAFKA_COMPRESSION = env_choice(
    "KAFKA_COMPRESSION", ("none", "lz4", "zstd", "snappy", "gzip"), "none"
)
KAFKA_LINGER_MS = env("KAFKA_LINGER_MS", int, 5)
# How often a consumer (worker, bridge) commits the offsets of the batches it has handled.
# A consumer killed outright redoes at most this much work; a committing round trip per
# batch cost the broker more than anything but moving the pixels (docs/performance.md).
KAFKA_COMMIT_INTERVAL_MS = env_positive_int("KAFKA_COMMIT_INTERVAL_MS", 1000)
# How long a consumer (worker, bridge) may go unheard before the group gives its partitions
# to the others: librdkafka's default; shorter moves them sooner off a cut-off host.
KAFKA_SESSION_TIMEOUT_MS = env_positive_int("KAFKA_SESSION_TIMEOUT_MS", 45_000)
# How long a client waits for a broker's answer before it gives the request up and retries
# it elsewhere: librdkafka's default; shorter keeps a client going when a broker falls silent
# (its host cut off) instead of waiting on it.
KAFKA_SOCKET_TIMEOUT_MS = env_positive_int("KAFKA_SOCKET_TIMEOUT_MS", 60_000)

# --- Kafka security: how every client proves who it is and checks the brokers ----------
KAFKA_SECURITY_PROTOCOL = env_choice(
    "KAFKA_SECURITY_PROTOCOL", ("PLAINTEXT", "SSL", "SASL_SSL"), "PLAINTEXT"
)
KAFKA_SASL_MECHANISM = env_choice(
    "KAFKA_SASL_MECHANISM", ("SCRAM-SHA-512", "PLAIN"), "SCRAM-SHA-512"
)
KAFKA_SASL_USERNAME = env("KAFKA_SASL_USERNAME", str, "")
KAFKA_SASL_PASSWORD = env("KAFKA_SASL_PASSWORD", str, "")
# Empty: the system's certificate authorities are trusted.
KAFKA_SSL_CA_LOCATION = env_file("KAFKA_SSL_CA_LOCATION", "")
# A client certificate and its key, for brokers that ask for one (mutual TLS).
KAFKA_SSL_CERTIFICATE_LOCATION = env_file("KAFKA_SSL_CERTIFICATE_LOCATION", "")
KAFKA_SSL_KEY_LOCATION = env_file("KAFKA_SSL_KEY_LOCATION", "")
KAFKA_SSL_KEY_PASSWORD = env("KAFKA_SSL_KEY_PASSWORD", str, "")
if KAFKA_SECURITY_PROTOCOL == "SASL_SSL":
    for _name in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        if not globals()[_name]:
            raise ImproperlyConfigured(
                f"Setting {_name} is required when KAFKA_SECURITY_PROTOCOL is SASL_SSL"
            )
elif KAFKA_SASL_USERNAME or KAFKA_SASL_PASSWORD:
    # Credentials that would silently go unused mean the protocol was forgotten.
    raise ImproperlyConfigured(
        "Settings KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD are set but KAFKA_SECURITY_PROTOCOL "
        f"is {KAFKA_SECURITY_PROTOCOL}, which sends no credentials; set it to SASL_SSL"
    )
if bool(KAFKA_SSL_CERTIFICATE_LOCATION) != bool(KAFKA_SSL_KEY_LOCATION):
    raise ImproperlyConfigured(
        "Settings KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION go together: "
        "set both or neither"
    )
if KAFKA_SECURITY_PROTOCOL == "PLAINTEXT" and (
    KAFKA_SSL_CA_LOCATION or KAFKA_SSL_CERTIFICATE_LOCATION
):
    raise ImproperlyConfigured(
        "Settings KAFKA_SSL_* are set but KAFKA_SECURITY_PROTOCOL is PLAINTEXT, which uses no "
        "TLS; set it to SSL or SASL_SSL"
    )

# --- Model served by the workers ------------------------------------------------------
MODEL_NAME = env("MODEL_NAME", str, "resnet50")
MODEL_WEIGHTS = env("MODEL_WEIGHTS", str, "imagenet")
MODEL_FILE = env("MODEL_FILE", str, "")
MODEL_LABELS_FILE = env("MODEL_LABELS_FILE", str, "")
MODEL_INPUT_SIZE = env_positive_int("MODEL_INPUT_SIZE", 224)
# A model package folder (manage.py export_model); when set, MODEL_NAME, MODEL_WEIGHTS,
# MODEL_FILE, MODEL_RUNTIME and MODEL_PRECISION are not used by the workers.
MODEL_PACKAGE = env("MODEL_PACKAGE", str, "")
MODEL_RUNTIME = env_choice("MODEL_RUNTIME", ("tensorflow", "openvino"), "tensorflow")
MODEL_PRECISION = env_choice("MODEL_PRECISION", ("fp32", "bf16", "int8"), "fp32")
# bf16 asked for on a CPU without bf16 refuses to start unless this allows fp32 instead.
MODEL_BF16_FALLBACK = env_bool("MODEL_BF16_FALLBACK", False)
# How OpenVINO runs a model package on this CPU (serving/runtimes/openvino.py): "auto" is
# the throughput hint with streams and several infer requests from one process on more than
# one core, the latency hint on one; 0 streams or requests: OpenVINO's choice.
OPENVINO_PERFORMANCE_HINT = env_choice(
    "OPENVINO_PERFORMANCE_HINT", ("auto", "throughput", "latency"), "auto"
)
OPENVINO_STREAMS = env_non_negative_int("OPENVINO_STREAMS", 0)
OPENVINO_INFER_REQUESTS = env_non_negative_int("OPENVINO_INFER_REQUESTS", 0)
if OPENVINO_STREAMS and OPENVINO_PERFORMANCE_HINT == "latency":
    raise ImproperlyConfigured(
        "Setting OPENVINO_STREAMS applies to the throughput hint, but "
        "OPENVINO_PERFORMANCE_HINT is latency (one stream)"
    )
WORKER_MAX_BATCH_SIZE = env_positive_int("WORKER_MAX_BATCH_SIZE", 32)
# Short: a lone request waits this long for company, while under load batches fill from
# what arrives during the previous predict anyway (docs/performance.md).
WORKER_MAX_BATCH_DELAY_MS = env("WORKER_MAX_BATCH_DELAY_MS", int, 5)

# --- Celery (Redis broker) ---------------------------------------------------------
# Default: the local stack's Redis, with the password it made (stack/common.py).
CELERY_BROKER_URL = env("CELERY_BROKER_URL", str, redis_url(0, host="127.0.0.1"))
CELERY_TASK_ACKS_LATE = True  # a task is redone if its worker dies mid-way
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's processes log through LOGGING above, as every other process does: one line
# format, with the request id of the upload that enqueued the task.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fix-up closes every database connection before and after each task
# unless this is set, so each task opened a new MariaDB connection (11 % of a Celery
# process's CPU in the benchmark's profile). With it set this high the fix-up never
# closes them; inferencehub/celery.py closes only broken or expired ones, as Django does
# around each request (CONN_MAX_AGE, CONN_HEALTH_CHECKS).
CELERY_DB_REUSE_MAX = 2**62
# Redis hands a task taken by a worker that died without acking (SIGKILL, power loss) to
# another worker only after this many seconds; a child process dying is noticed at once
# (reject_on_worker_lost). It must exceed the longest retry countdown (30 s) and the
# longest task, or a running task is handed out twice (harmless: tasks are idempotent).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_positive_int("CELERY_VISIBILITY_TIMEOUT_SECONDS", 300)
}
# Two queues, each with Celery processes of its own (stack/processes.py): storing results
# never waits behind preprocessing. The light bookkeeping goes with the results, so that it
# runs on time however long the preprocessing queue is.
CELERY_TASK_DEFAULT_QUEUE = PREPROCESS_QUEUE
CELERY_TASK_ROUTES = {
    "predictions.tasks.preprocess_jobs": {"queue": PREPROCESS_QUEUE},
    "predictions.tasks.purge_old_images": {"queue": PREPROCESS_QUEUE},
    "predictions.tasks.store_results": {"queue": RESULTS_QUEUE},
    "predictions.tasks.fail_job": {"queue": RESULTS_QUEUE},
    "predictions.tasks.sweep_stuck_jobs": {"queue": RESULTS_QUEUE},
    "predictions.tasks.dispatch_jobs": {"queue": RESULTS_QUEUE},
    # Waiting for receivers: on workers of their own, so a slow one holds nothing else up.
    "webhooks.tasks.*": {"queue": WEBHOOKS_QUEUE},
}
CELERY_BEAT_SCHEDULE = {
    "dispatch-jobs": {
        "task": "predictions.tasks.dispatch_jobs",
        "schedule": float(DISPATCH_INTERVAL_SECONDS),
        # While no worker takes them, later ones do the same: no pile-up to run.
        "options": {"expires": float(DISPATCH_INTERVAL_SECONDS)},
    },
    "sweep-stuck-jobs": {
        "task": "predictions.tasks.sweep_stuck_jobs",
        "schedule": float(SWEEP_INTERVAL_SECONDS),
    },
    "purge-old-images": {
        "task": "predictions.tasks.purge_old_images",
        "schedule": 24 * 60 * 60.0,
    },
    "purge-old-results": {
        "task": "predictions.tasks.purge_old_results",
        "schedule": 24 * 60 * 60.0,
    },
    "send-due-webhooks": {
        "task": "webhooks.tasks.send_due_deliveries",
        "schedule": 60.0,
        "options": {"expires": 60.0},
    },
}

# --- Cache: Redis, so API throttling counts are shared by every gunicorn worker ------
# Same Redis as Celery, its own database number so a cache flush leaves the queues alone.
CACHE_REDIS_DB = 2
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": CELERY_BROKER_URL.rsplit("/", 1)[0] + f"/{CACHE_REDIS_DB}",
    }
}

# --- REST API ------------------------------------------------------------------------
# Requests each web process may hold open at once (a job's ?wait=, a batch's event
# stream; common/holding.py): a safety limit for the held process, where one costs
# no thread; gunicorn.conf.py sets 2 for gunicorn's, where one keeps a thread. 0 holds none.
WEB_HELD_REQUESTS = env("WEB_HELD_REQUESTS", int, 10000)
if WEB_HELD_REQUESTS < 0:
    raise ImproperlyConfigured(
        f"Setting WEB_HELD_REQUESTS must be 0 or more, got {WEB_HELD_REQUESTS}"
    )
# Held requests are told of job changes over Redis pub/sub (common/notifications.py),
# on the broker's Redis: channels are not per database, so their names start with the prefix.
NOTIFY_REDIS_URL = CELERY_BROKER_URL
NOTIFY_CHANNEL_PREFIX = env("NOTIFY_CHANNEL_PREFIX", str, "inferencehub")
# While that Redis is away, a held request looks at the database this often instead.
HELD_POLL_SECONDS = env("HELD_POLL_SECONDS", float, 2.0)
if HELD_POLL_SECONDS <= 0:
    raise ImproperlyConfigured(
        f"Setting HELD_POLL_SECONDS must be more than 0, got {HELD_POLL_SECONDS}"
    )
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "predictions.authentication.CachedTokenAuthentication",
        "predictions.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "common.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "predictions.throttles.UserThrottle",
        "predictions.throttles.AnonThrottle",
    ],
}
# How long a web process keeps what an API token's lookup found (0: asks every time). A
# token deleted or a user changed elsewhere is refused by the other processes within it.
API_TOKEN_CACHE_SECONDS = env("API_TOKEN_CACHE_SECONDS", int, 5)
if API_TOKEN_CACHE_SECONDS < 0:
    raise ImproperlyConfigured(
        f"Setting API_TOKEN_CACHE_SECONDS must be 0 or more, got {API_TOKEN_CACHE_SECONDS}"
    )
API_THROTTLE_USER = env_rate("API_THROTTLE_USER", "100000/hour")
API_THROTTLE_ANON = env_rate("API_THROTTLE_ANON", "1000/hour")
# Addresses (or networks, 10.0.0.0/8) of the reverse proxies in front of the web (`make
# run`: nginx on this machine). A request from one of them is counted by the client
# address the proxy puts in X-Forwarded-For (common/clients.py); from anyone else
# that header is ignored, so a client cannot choose the address it is throttled as.
# Empty: no proxy is trusted.
TRUSTED_PROXIES = [
    address.strip()
    for address in env("TRUSTED_PROXIES", str, "127.0.0.1,::1").split(",")
    if address.strip()
]
for _address in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_address)
    except ValueError:
        raise ImproperlyConfigured(
            "Setting TRUSTED_PROXIES must be a comma list of IP addresses or networks, "
            f"got {_address!r}"
        ) from None
SPECTACULAR_SETTINGS = {
    "TITLE": "InferenceHub API",
    "DESCRIPTION": "Upload images; get the top-k ImageNet classes from a Kafka worker group.",
    "VERSION": "1.0.0",
    # Swagger UI's files are served from the sidecar package: no CDN needed.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "predictions.openapi.add_to_schema",
    ],
}

# --- Observability -------------------------------------------------------------------
# The web's /metrics answers only requests with `Authorization: Bearer <this>` (Prometheus'
# scrape configuration holds it); empty: /metrics is off (404).
METRICS_TOKEN = env("METRICS_TOKEN", str, "")
# The jobs' counts on /metrics are counted in the database at most this often and kept in
# the cache in between (predictions/metrics.py): counting reads the whole jobs table.
METRICS_JOBS_REFRESH_SECONDS = env_positive_int("METRICS_JOBS_REFRESH_SECONDS", 30)
# Port of the Prometheus endpoint of run_worker and consume_results; 0 serves none.
METRICS_PORT = env("METRICS_PORT", int, 0)
# That port's /healthz fails once the consumer loop has not polled Kafka for this long.
# Above the longest pause of a healthy loop: a batch's delivery wait (90 s, runner
# flush_or_raise) plus the longest retry backoff (30 s) plus its predict.
CONSUMER_STALL_SECONDS = env_positive_int("CONSUMER_STALL_SECONDS", 180)

LOG_LEVEL = env("LOG_LEVEL", str, "INFO")
LOG_FORMAT = env("LOG_FORMAT", str, "plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"Setting LOG_FORMAT must be plain or json, got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "common.logs.JsonFormatter"},
    },
    "filters": {"request_id": {"()": "common.request_ids.RequestIdFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "kafka": {"level": "WARNING"},
        # Named here so that Django's own console handler on "django" goes: with DEBUG it
        # printed each of its warnings a second time, bare, before the root's line.
        "django": {"level": "INFO"},
        # Its warning for each 4xx answer repeats the access line (common/request_ids.py);
        # a 5xx still logs its traceback.
        "django.request": {"level": "ERROR"},
    },
}
