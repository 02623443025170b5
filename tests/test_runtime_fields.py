"""Results, jobs, the API and the job page say which runtime and precision answered."""

import uuid

import pytest

from kafka_wire.contract import InferenceResult, decode_result, encode_result
from predictions.models import Job
from predictions.pipeline import record_results
from tests.factories import JobFactory, UserFactory
from tests.test_contract import envelope, result_header


def test_runtime_and_precision_survive_the_result_round_trip():
    result = InferenceResult(
        job_id=str(uuid.uuid4()), ok=True, runtime="openvino", precision="int8"
    )
    decoded = decode_result(encode_result(result))
    assert (decoded.runtime, decoded.precision) == ("openvino", "int8")


def test_a_result_from_an_older_worker_still_decodes_without_them():
    decoded = decode_result(envelope(result_header(), kind=2))
    assert (decoded.runtime, decoded.precision) == ("", "")


@pytest.mark.django_db
def test_a_stored_result_sets_the_jobs_runtime_and_precision_shown_by_api_and_page(client):
    owner = UserFactory()
    job = JobFactory(owner=owner, status=Job.Status.SUBMITTED)
    result = InferenceResult(
        job_id=str(job.pk), ok=True, model="resnet50", runtime="openvino", precision="bf16"
    )
    assert record_results(results=[result]) == 1
    job.refresh_from_db()
    assert (job.runtime, job.precision) == ("openvino", "bf16")
    client.force_login(owner)
    model = client.get(f"/api/jobs/{job.pk}/").json()["model"]
    assert (model["runtime"], model["precision"]) == ("openvino", "bf16")
    assert "openvino bf16" in client.get(f"/jobs/{job.pk}/").content.decode()


@pytest.mark.django_db
def test_the_admin_filters_jobs_by_runtime_and_precision(admin_client):
    JobFactory(runtime="openvino", precision="int8")
    JobFactory(runtime="tensorflow", precision="fp32")
    page = admin_client.get("/admin/predictions/job/?runtime=openvino&precision=int8")
    assert page.status_code == 200
    assert page.context["cl"].result_count == 1
