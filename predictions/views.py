"""Server-rendered pages: the upload page and shareable result pages."""

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.shortcuts import get_object_or_404, render

from predictions.api import visible_to
from predictions.models import Batch, Job


def upload_page(request):
    if not (request.user.is_authenticated or settings.ALLOW_ANONYMOUS_UPLOADS):
        return redirect_to_login(request.get_full_path(), login_url="/api-auth/login/")
    return render(request, "predictions/upload.html", {"model_weights": settings.MODEL_WEIGHTS})


def job_page(request, pk):
    jobs = visible_to(Job.objects, request.user, include_anonymous=True)
    job = get_object_or_404(jobs.prefetch_related("predictions"), pk=pk)
    return render(request, "predictions/job.html", {"job": job})


def batch_page(request, pk):
    batches = visible_to(Batch.objects, request.user, include_anonymous=True)
    batch = get_object_or_404(batches, pk=pk)
    jobs = batch.jobs.prefetch_related("predictions").order_by("seq")
    return render(request, "predictions/batch.html", {"batch": batch, "jobs": jobs})
