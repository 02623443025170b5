"""InferenceHub settings, read from the environment once, here.

Every default points at the local stack that `make run` starts (see stack/stack.py),
so a developer needs no configuration. A malformed value stops start-up with a
message that names the variable.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

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
    "predictions",
    "kafka_bridge",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "inferencehub.urls"
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
MEDIA_URL = "/media/"
MEDIA_ROOT = env("MEDIA_ROOT", str, str(BASE_DIR / ".stack" / "media"))

# --- Stored originals: local files by default, S3-compatible storage when configured
AWS_STORAGE_BUCKET_NAME = env("AWS_STORAGE_BUCKET_NAME", str, "")
if AWS_STORAGE_BUCKET_NAME:
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "endpoint_url": env("AWS_S3_ENDPOINT_URL", str, "") or None,
            "region_name": env("AWS_S3_REGION_NAME", str, "") or None,
            "access_key": env("AWS_ACCESS_KEY_ID", str, "") or None,
            "secret_key": env("AWS_SECRET_ACCESS_KEY", str, "") or None,
            "default_acl": None,
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }
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
DATA_UPLOAD_MAX_NUMBER_FILES = UPLOAD_MAX_FILES_PER_REQUEST
ALLOW_ANONYMOUS_UPLOADS = env_bool("ALLOW_ANONYMOUS_UPLOADS", False)
SEED_API_ENABLED = env_bool("SEED_API_ENABLED", True)

# --- Jobs -------------------------------------------------------------------------
JOB_TIMEOUT_SECONDS = env_positive_int("JOB_TIMEOUT_SECONDS", 300)
JOB_MAX_ATTEMPTS = env_positive_int("JOB_MAX_ATTEMPTS", 3)
SWEEP_INTERVAL_SECONDS = env_positive_int("SWEEP_INTERVAL_SECONDS", 60)

# --- Kafka ------------------------------------------------------------------------
KAFKA_BOOTSTRAP_SERVERS = env("KAFKA_BOOTSTRAP_SERVERS", str, "127.0.0.1:19092")
KAFKA_REQUESTS_TOPIC = env("KAFKA_REQUESTS_TOPIC", str, "inference-requests")
KAFKA_RESULTS_TOPIC = env("KAFKA_RESULTS_TOPIC", str, "inference-results")
KAFKA_DEAD_LETTER_TOPIC = env("KAFKA_DEAD_LETTER_TOPIC", str, "inference-dead-letters")
KAFKA_TOPIC_PARTITIONS = env_positive_int("KAFKA_TOPIC_PARTITIONS", 4)
KAFKA_REPLICATION_FACTOR = env_positive_int("KAFKA_REPLICATION_FACTOR", 1)
KAFKA_WORKER_GROUP = env("KAFKA_WORKER_GROUP", str, "inferencehub-workers")
KAFKA_BRIDGE_GROUP = env("KAFKA_BRIDGE_GROUP", str, "inferencehub-bridge")
KAFKA_COMPRESSION = env("KAFKA_COMPRESSION", str, "zstd")
KAFKA_LINGER_MS = env("KAFKA_LINGER_MS", int, 5)

# --- Model served by the workers ------------------------------------------------------
MODEL_NAME = env("MODEL_NAME", str, "resnet50")
MODEL_WEIGHTS = env("MODEL_WEIGHTS", str, "imagenet")
MODEL_FILE = env("MODEL_FILE", str, "")
MODEL_LABELS_FILE = env("MODEL_LABELS_FILE", str, "")
MODEL_INPUT_SIZE = env_positive_int("MODEL_INPUT_SIZE", 224)
WORKER_MAX_BATCH_SIZE = env_positive_int("WORKER_MAX_BATCH_SIZE", 32)
WORKER_MAX_BATCH_DELAY_MS = env("WORKER_MAX_BATCH_DELAY_MS", int, 20)

# --- Celery (Redis broker) ---------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", str, "redis://127.0.0.1:16379/0")
CELERY_TASK_ACKS_LATE = True  # a task is redone if its worker dies mid-way
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BEAT_SCHEDULE = {
    "sweep-stuck-jobs": {
        "task": "predictions.tasks.sweep_stuck_jobs",
        "schedule": float(SWEEP_INTERVAL_SECONDS),
    },
}

# --- REST API ------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "predictions.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "InferenceHub API",
    "DESCRIPTION": "Upload images; get the top-k ImageNet classes from a Kafka worker group.",
    "VERSION": "1.0.0",
}

LOG_LEVEL = env("LOG_LEVEL", str, "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"kafka": {"level": "WARNING"}},
}
