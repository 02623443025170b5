from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter, SimpleRouter

from common import errors, metrics
from predictions import health, seed_api
from predictions.api import BatchViewSet, JobViewSet, ModelViewSet
from predictions.events import held_job_detail
from webhooks.api import RotateWebhookSecretView, WebhookSecretView


class WithoutTrailingSlashRouter(SimpleRouter):
    """The same routes without their trailing slash, so that `POST /api/jobs` works:
    Django's APPEND_SLASH can only redirect, which loses a POST's or DELETE's body.
    Named apart ("job-list-unslashed"), so URLs are always reversed to the slashed form and
    the metrics label them readably, and left out of the schema."""

    def __init__(self) -> None:
        super().__init__(trailing_slash="")

    def get_routes(self, viewset) -> list:
        routes = super().get_routes(viewset)
        return [route._replace(initkwargs={**route.initkwargs, "schema": None}) for route in routes]

    def get_urls(self) -> list:
        urls = super().get_urls()
        for url in urls:
            url.name = f"{url.name}-unslashed" if url.name else None
        return urls


router = DefaultRouter()
without_slash = WithoutTrailingSlashRouter()
for prefix, viewset, basename in (
    ("jobs", JobViewSet, "job"),
    ("batches", BatchViewSet, "batch"),
    ("models", ModelViewSet, "model"),
):
    router.register(prefix, viewset, basename=basename)
    without_slash.register(prefix, viewset, basename=basename)

# A job's GET with ?wait= is held by an async view; it hands every other request of the
# path to the router's view.
job_detail = held_job_detail(next(url.callback for url in router.urls if url.name == "job-detail"))

urlpatterns = [
    path("", include("predictions.urls")),
    # Named as the router's pattern it stands in front of, so reverse() and the metrics'
    # route label stay "job-detail"; the unslashed form is labelled apart.
    path("api/jobs/<uuid:pk>/", job_detail, name="job-detail"),
    path("api/jobs/<uuid:pk>", job_detail, name="job-detail-unslashed"),
    path("api/webhook-secret/", WebhookSecretView.as_view(), name="webhook-secret"),
    path("api/webhook-secret/rotate/", RotateWebhookSecretView.as_view(), name="webhook-rotate"),
    # Unslashed as the router's are (WithoutTrailingSlashRouter), and as those not in the schema.
    path("api/webhook-secret", WebhookSecretView.as_view(schema=None)),
    path("api/webhook-secret/rotate", RotateWebhookSecretView.as_view(schema=None)),
    path("api/", include(router.urls)),
    path("api/", include(without_slash.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api-auth/", include("rest_framework.urls")),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    # The seed system's API, unchanged paths.
    path("register", seed_api.register, name="seed-register"),
    path("image", seed_api.image, name="seed-image"),
    path("result", seed_api.result, name="seed-result"),
]

# With DEBUG off Django calls these itself; with it on, ErrorPagesMiddleware does the same.
handler400 = errors.bad_request
handler403 = errors.permission_denied
handler404 = errors.not_found
handler500 = errors.server_error
