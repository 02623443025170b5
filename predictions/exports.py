"""A batch's jobs to download: CSV, one row per job with its top-1 result, or JSON with
every prediction."""

import csv
import io
import json

from django.db.models import QuerySet
from rest_framework.utils.encoders import JSONEncoder

from predictions.models import Batch, Job

EXPORT_FIELDS = [
    "seq",
    "id",
    "file_name",
    "status",
    "label",
    "score",
    "random_weights",
    "error",
    "uploaded_at",
    "finished_at",
]


def export_row(job: Job, *, all_predictions: bool = False) -> dict:
    predictions = list(job.predictions.all()) if job.status == Job.Status.SUCCEEDED else []
    row = {
        "seq": job.seq,
        "id": str(job.pk),
        "file_name": job.original_name,
        "status": job.status,
        "label": predictions[0].label if predictions else "",
        "score": predictions[0].score if predictions else None,
        "random_weights": job.random_weights,
        "error": job.error,
        "uploaded_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
    if all_predictions:
        del row["label"], row["score"]
        row["predictions"] = [
            {"class_id": p.class_id, "label": p.label, "score": p.score} for p in predictions
        ]
    return row


# A spreadsheet runs a cell starting with one of these as a formula (OWASP, CSV
# injection); file names and errors are the uploader's text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A text cell that a spreadsheet shows as text: a formula's first character gets a
    single quote before it. Numbers are left alone."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def export_csv(jobs: QuerySet[Job]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
    writer.writeheader()
    for job in jobs.iterator(500):
        writer.writerow({field: csv_cell(value) for field, value in export_row(job).items()})
    return out.getvalue()


def export_json(batch: Batch, jobs: QuerySet[Job]) -> str:
    rows = [export_row(job, all_predictions=True) for job in jobs.iterator(500)]
    return json.dumps({"batch": batch.pk, "jobs": rows}, indent=1, cls=JSONEncoder)
