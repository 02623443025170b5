"""Server-rendered pages: the upload page, shareable result pages and job images."""

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from predictions import services
from predictions.api import visible_to
from predictions.images import thumbnail_jpeg
from predictions.models import Batch, Job

# Only these sizes are made, so a request cannot ask for an arbitrarily large image.
IMAGE_SIZES = (96, 480)


def upload_page(request: HttpRequest) -> HttpResponse:
    if not (request.user.is_authenticated or settings.ALLOW_ANONYMOUS_UPLOADS):
        return redirect_to_login(request.get_full_path())
    return render(request, "predictions/upload.html", {"model_weights": settings.MODEL_WEIGHTS})


def job_page(request: HttpRequest, pk) -> HttpResponse:
    jobs = visible_to(Job.objects, request.user, include_anonymous=True)
    job = get_object_or_404(jobs.prefetch_related("predictions"), pk=pk)
    can_retry = (
        job.status == Job.Status.FAILED
        and request.user.is_authenticated
        and (request.user.is_staff or job.owner_id == request.user.pk)
    )
    return render(request, "predictions/job.html", {"job": job, "can_retry": can_retry})


@require_POST
def job_retry(request: HttpRequest, pk) -> HttpResponse:
    """Run a failed job of one's own again, from the job page's button."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    jobs = visible_to(Job.objects, request.user, include_anonymous=False)
    job = get_object_or_404(jobs, pk=pk)
    services.retry_jobs(jobs=[job])  # a job that has not failed (any more) is left as it is
    return redirect("job-page", pk=job.pk)


def batch_page(request: HttpRequest, pk) -> HttpResponse:
    batches = visible_to(Batch.objects, request.user, include_anonymous=True)
    batch = get_object_or_404(batches, pk=pk)
    jobs = batch.jobs.prefetch_related("predictions").order_by("seq")
    counts = dict(batch.jobs.values_list("status").annotate(n=Count("pk")))
    return render(
        request,
        "predictions/batch.html",
        {
            "batch": batch,
            "jobs": jobs,
            "counts": [(status, counts.get(status, 0)) for status in Job.Status.values],
            "unfinished": any(status not in Job.FINISHED for status in counts),
        },
    )


def job_image(request: HttpRequest, pk, size: int) -> HttpResponse:
    """A JPEG of a job's stored original, to whoever may see the job.

    Stored originals are never served as MEDIA files: they are the users' uploads, and
    re-encoding them also means a browser never sees the uploaded bytes.
    """
    if size not in IMAGE_SIZES:
        raise Http404("no such image size")
    jobs = visible_to(Job.objects, request.user, include_anonymous=True)
    job = get_object_or_404(jobs, pk=pk)
    try:
        with job.image.open("rb") as file:
            data = thumbnail_jpeg(file, size=size)
    except (OSError, ValueError):
        raise Http404("the stored image cannot be read") from None
    response = HttpResponse(data, content_type="image/jpeg")
    response["Cache-Control"] = "private, max-age=86400"
    return response
