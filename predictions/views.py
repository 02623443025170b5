"""Server-rendered pages: the upload page, shareable result pages, job images and the
staff's operations page."""

import math
import time

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST
from PIL import Image
from redis.exceptions import RedisError
from rest_framework.exceptions import AuthenticationFailed

from common.errors import error_answer, error_response
from common.images import ACCEPTED_FORMATS
from common.limits import TOP_K_DEFAULT, TOP_K_MAX, TOP_K_MIN
from common.uploads import upload_pixel_limits
from predictions import selectors, services
from predictions.authentication import api_user
from predictions.metrics import job_figures
from predictions.models import Job, Priority
from predictions.queries import JobListQuerySerializer
from predictions.storage import (
    STORE_UNAVAILABLE,
    STORE_UNAVAILABLE_MESSAGE,
    THUMBNAIL_SIZES,
    NoThumbnail,
    job_thumbnail,
)
from predictions.throttles import ImageThrottle
from registry import selectors as registry

# Jobs per page of a batch's page: a big batch is read a page at a time.
BATCH_PAGE_SIZE = 50
# Jobs per page of the My jobs page (?page_size= up to PAGE_SIZE_MAX changes it).
MY_JOBS_PAGE_SIZE = 25


def upload_page(request: HttpRequest) -> HttpResponse:
    """The page uploads through the REST API (predictions/static/predictions/upload.js)."""
    if not (request.user.is_authenticated or settings.ALLOW_ANONYMOUS_UPLOADS):
        return redirect_to_login(request.get_full_path())
    top_k = {"min": TOP_K_MIN, "max": TOP_K_MAX, "default": TOP_K_DEFAULT}
    limits = upload_pixel_limits()
    return render(
        request,
        "predictions/upload.html",
        {
            "model_weights": settings.MODEL_WEIGHTS,
            "top_k": top_k,
            "accepted_formats": ACCEPTED_FORMATS,
            "max_bytes": settings.UPLOAD_MAX_BYTES,
            "max_megapixels": f"{limits.jpeg / 1e6:g}",
            "decoded_whole_megapixels": f"{limits.decoded_whole / 1e6:g}",
            # The enabled versions, the default model's first (newest first per model).
            "model_choices": registry.upload_choices(),
            "priorities": Priority.choices,
        },
    )


@login_required
def my_jobs_page(request: HttpRequest) -> HttpResponse:
    """The signed-in user's own jobs, staff included, filtered as the API's list is."""
    query = JobListQuerySerializer.from_query(request.GET, context={"request": request})
    valid = query.is_valid()
    criteria = {**(query.validated_data if valid else {}), "mine": True}
    jobs = selectors.search_jobs(
        selectors.visible_jobs(request.user, by_id=False), request.user, criteria
    ).prefetch_related("predictions")
    if not valid:
        # A filter that cannot be read lists nothing rather than every job unfiltered.
        jobs = jobs.none()
    paginator = Paginator(jobs, criteria.get("page_size", MY_JOBS_PAGE_SIZE))
    page = paginator.get_page(criteria.get("page", 1))
    # The filters again, without the page: the pagination links add their own.
    filters = request.GET.copy()
    filters.pop("page", None)
    return render(
        request,
        "predictions/my_jobs.html",
        {
            "page": page,
            "errors": [] if valid else _error_lines(query.errors),
            "statuses": Job.Status.values,
            "chosen": criteria.get("status", []),
            "filters": filters.urlencode(),
            "values": request.GET,
        },
    )


def sign_out(request: HttpRequest) -> HttpResponse:
    """GET asks (a link or a typed address must not sign anyone out); POST signs out and
    says so on the sign-in page."""
    if request.method == "POST":
        if request.user.is_authenticated:
            logout(request)
            messages.success(request, "You are signed out.")
        return redirect(settings.LOGOUT_REDIRECT_URL)
    if not request.user.is_authenticated:
        return redirect(settings.LOGIN_URL)
    return render(request, "registration/sign_out.html")


def _error_lines(errors: dict) -> list[str]:
    return [f"{field}: {' '.join(map(str, messages))}" for field, messages in errors.items()]


def _visible_or_sign_in(queryset, request: HttpRequest, pk):
    """The object, or a redirect to sign in for a signed-out visitor (a link to one's own
    job, opened in another browser), or 404."""
    found = queryset.filter(pk=pk).first()
    if found is None and not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if found is None:
        raise Http404("no such page, or it is not yours")
    return found


def job_page(request: HttpRequest, pk) -> HttpResponse:
    jobs = selectors.visible_jobs(request.user, by_id=True).prefetch_related("predictions")
    job = _visible_or_sign_in(jobs, request, pk)
    if isinstance(job, HttpResponse):
        return job
    can_retry = selectors.may_retry(job, request.user)
    return render(
        request,
        "predictions/job.html",
        {
            "job": job,
            "can_retry": can_retry,
            "can_cancel": selectors.may_cancel(job, request.user),
            "queue": selectors.job_queue(job),
            "stages": job.stages(),
        },
    )


@require_POST
def job_retry(request: HttpRequest, pk) -> HttpResponse:
    """Run a failed job of one's own again, from the job page's button."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    job = get_object_or_404(selectors.retryable_jobs(request.user), pk=pk)
    services.retry_jobs(jobs=[job])  # a job that has not failed (any more) is left as it is
    return redirect("job-page", pk=job.pk)


@require_POST
def job_cancel(request: HttpRequest, pk) -> HttpResponse:
    """Cancel an unfinished job of one's own, from the job page's button."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    job = get_object_or_404(selectors.cancellable_jobs(request.user), pk=pk)
    # A job that finished meanwhile is left as it is; its page shows how it ended.
    services.cancel_jobs(jobs=[job])
    return redirect("job-page", pk=job.pk)


@require_POST
def batch_cancel(request: HttpRequest, pk) -> HttpResponse:
    """Cancel every unfinished job of a batch of one's own, from the batch page's button."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    batch = get_object_or_404(selectors.visible_batches(request.user, by_id=False), pk=pk)
    if not selectors.may_cancel_batch(batch, request.user):
        raise PermissionDenied("only the batch's owner may cancel its jobs")
    cancelled = services.cancel_batch(batch=batch)
    messages.success(request, f"{cancelled} job(s) cancelled.")
    return redirect("batch-page", pk=batch.pk)


def batch_page(request: HttpRequest, pk) -> HttpResponse:
    batch = _visible_or_sign_in(selectors.visible_batches(request.user, by_id=True), request, pk)
    if isinstance(batch, HttpResponse):
        return batch
    jobs = selectors.batch_jobs(batch)
    page = Paginator(jobs, BATCH_PAGE_SIZE).get_page(request.GET.get("page"))
    counts = selectors.batch_counts(batch)
    return render(
        request,
        "predictions/batch.html",
        {
            "batch": batch,
            "page": page,
            "counts": list(counts.items()),
            "unfinished": any(n for status, n in counts.items() if status not in Job.FINISHED),
            "can_cancel": selectors.may_cancel_batch(batch, request.user),
            "queue": selectors.batch_queue(batch),
            # The event stream reports only what changed after this page was made.
            "rendered_ms": int(time.time() * 1000),
        },
    )


def job_image(request: HttpRequest, pk, size: int) -> HttpResponse:
    """A JPEG thumbnail of a job's stored original, to whoever may see the job: a small
    file read from the store (predictions/storage.py job_thumbnail).

    Stored originals are never served as MEDIA files: they are the users' uploads, and
    re-encoding them also means a browser never sees the uploaded bytes.
    """
    if size not in THUMBNAIL_SIZES:
        raise Http404("no such image size")
    if (refusal := _throttled(request)) is not None:
        return refusal
    job = get_object_or_404(selectors.visible_jobs(request.user, by_id=True), pk=pk)
    try:
        data = job_thumbnail(job, size)
    except NoThumbnail as exc:
        return error_answer(request, exc.status, str(exc))
    except (OSError, ValueError):
        raise Http404("the stored image cannot be read") from None
    except (*STORE_UNAVAILABLE, RedisError):
        return error_response(STORE_UNAVAILABLE_MESSAGE, 503)
    response = HttpResponse(data, content_type="image/jpeg")
    response["Cache-Control"] = "private, max-age=86400"
    return response


def _throttled(request: HttpRequest) -> HttpResponse | None:
    throttle = ImageThrottle()
    if throttle.allow_request(request, None):
        return None
    response = error_response("too many image requests; try again later", 429)
    response["Retry-After"] = str(math.ceil(throttle.wait()))
    return response


def job_original(request: HttpRequest, pk) -> HttpResponseBase:
    """The job's stored original as uploaded, to whoever may see the job (its owner and
    staff), signed in or with an API token: linked from the job's page, its API answer and
    the admin; the same view under `make run` and in production, since stored originals
    are never public MEDIA files."""
    if (refusal := _throttled(request)) is not None:
        return refusal
    if "Authorization" in request.headers:
        # The job's API answer links here: an API client sends its token, as to the API.
        try:
            request.user = api_user(request) or request.user
        except AuthenticationFailed as exc:
            return error_response(str(exc.detail), 401)
        job = get_object_or_404(selectors.visible_jobs(request.user, by_id=True), pk=pk)
    else:
        job = _visible_or_sign_in(selectors.visible_jobs(request.user, by_id=True), request, pk)
        if isinstance(job, HttpResponse):
            return job
    if not job.image.name:
        raise Http404("the original was deleted after IMAGE_RETENTION_DAYS")
    try:
        file = job.image.open("rb")
    except OSError:
        raise Http404("the stored image cannot be read") from None
    except STORE_UNAVAILABLE:
        return error_response(STORE_UNAVAILABLE_MESSAGE, 503)
    # The bytes were judged an image of this format on upload (common/images.py);
    # nosniff (SecurityMiddleware) and the sandbox keep a browser from treating them as
    # anything else.
    response = FileResponse(
        file,
        content_type=Image.MIME.get(job.image_format, "application/octet-stream"),
        filename=job.original_name or str(job.pk),
    )
    response["Content-Security-Policy"] = "sandbox"
    response["Cache-Control"] = "private, max-age=86400"
    return response


def _refuse_non_staff(request: HttpRequest) -> HttpResponse | None:
    """A signed-out visitor is sent to sign in; a signed-in one who is not staff finds no
    such page, as with a job that is not theirs."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not selectors.may_see_operations(request.user):
        raise Http404("no such page")
    return None


def operations_page(request: HttpRequest) -> HttpResponse:
    """The staff's live operations page; its script (predictions/static/predictions/ops.js)
    draws the figures of operations_data and asks for them again every few seconds."""
    if (refusal := _refuse_non_staff(request)) is not None:
        return refusal
    return render(
        request,
        "predictions/ops.html",
        {"refresh_seconds": settings.METRICS_JOBS_REFRESH_SECONDS},
    )


def operations_data(request: HttpRequest) -> HttpResponse:
    """The operations figures as /metrics shows them, from the same kept reading
    (predictions/operations.py)."""
    if (refusal := _refuse_non_staff(request)) is not None:
        return refusal
    figures = job_figures()
    response = JsonResponse(
        {
            "counted_at": figures["counted_at"],
            "jobs": figures["by_status"],
            **figures["operations"],
        }
    )
    response["Cache-Control"] = "no-store"
    return response
