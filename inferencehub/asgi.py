"""The held process's application (uvicorn, stack/processes.py `held`): a job's `?wait=`
and the batches' event streams, which nginx sends here, wait in its event loop without a
thread each (common/notifications.py). It serves every other route too, but for
the static files.

Django's ASGIHandler gives each request a thread of its own for its sync code (the
middleware, the signals, the DRF view's reads) for as long as the request lasts: a
thousand held requests would be a thousand idle threads. This handler leaves that out, so
all of the process's sync code runs in asgiref's one shared thread, one step at a time,
and the requests held meanwhile cost no thread. That needs every middleware to be
async-capable: a sync-only one runs the rest of the request, its hold included, inside
its thread, which one shared thread cannot give to two requests at once. The project's
own, Django's and django-axes's are; WhiteNoise is not, and is left out here (below). The
process refuses to start with one that is not: Django's thread per request would give each
held request an idle thread and a database connection of its own (500 held requests made
MariaDB refuse connections), where here all of them share the one thread's connection.
"""

import os

import django
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIHandler
from django.utils.module_loading import import_string

from common import tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inferencehub.settings")


class SharedThreadASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        sync_only = [
            path
            for path in settings.MIDDLEWARE
            if not getattr(import_string(path), "async_capable", False)
        ]
        if sync_only:
            raise ImproperlyConfigured(
                f"the held process needs async-capable middleware; these are sync-only: "
                f"{', '.join(sync_only)} (make them async-capable, or leave them out in "
                f"inferencehub/asgi.py if the held routes do not need them)"
            )
        super().__init__()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"only HTTP is served, not {scope['type']}")
        await self.handle(scope, receive, send)


django.setup(set_prefix=False)
# WhiteNoise serves the static files, which nginx never sends here, and is sync-only. It is
# left out of this process's MIDDLEWARE here rather than in a settings module of its own:
# this module is the held process's only entry point, under any settings module (tests,
# compose, Kubernetes), and it builds its handler from MIDDLEWARE just below.
settings.MIDDLEWARE = [
    path for path in settings.MIDDLEWARE if path != "whitenoise.middleware.WhiteNoiseMiddleware"
]
application = tracing.trace_asgi(SharedThreadASGIHandler(), "inferencehub-held")
