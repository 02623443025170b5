import os

from django.core.wsgi import get_wsgi_application

from common import tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inferencehub.settings")
tracing.trace_django("inferencehub-web")
application = get_wsgi_application()
