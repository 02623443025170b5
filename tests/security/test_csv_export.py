"""The CSV export writes the uploader's text as text, never as a live spreadsheet formula
(issue 22, item 7; OWASP's CSV injection advice)."""

import csv
import io

import pytest
from rest_framework.test import APIClient

from predictions.models import Job
from tests.factories import BatchFactory, JobFactory

pytestmark = pytest.mark.django_db

HOSTILE_NAMES = [
    '=HYPERLINK("https:evil.example","x").png',
    "@SUM(1+1).png",
    "-2+3+cmd|calc.png",
    "+1.png",
    "\tTAB.png",
    "\rCR.png",
]


def test_cells_that_start_like_a_formula_are_exported_as_quoted_text():
    batch = BatchFactory()
    for seq, name in enumerate(HOSTILE_NAMES):
        JobFactory(owner=batch.owner, batch=batch, seq=seq, original_name=name)
    JobFactory(
        owner=batch.owner,
        batch=batch,
        seq=len(HOSTILE_NAMES),
        original_name="plain.png",
        status=Job.Status.FAILED,
        error="=1+1 cannot be decoded",
    )
    client = APIClient()
    client.force_authenticate(batch.owner)
    response = client.get(f"/api/batches/{batch.pk}/export/", {"format": "csv"})
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["file_name"] for row in rows] == ["'" + name for name in HOSTILE_NAMES] + [
        "plain.png"
    ]
    assert rows[-1]["error"] == "'=1+1 cannot be decoded"
    # Numbers stay numbers.
    assert [row["seq"] for row in rows] == [str(n) for n in range(len(rows))]
