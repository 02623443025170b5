import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inferencehub.settings")

app = Celery("inferencehub")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
