"""Bounds on what a request may carry and a record may hold: refused fields are named, and no job record,
however it was written, breaks GetJob or ListJobs."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from kernelscope.v1 import jobs_pb2, models_pb2, tasks_pb2

from service.registry import Keys
from tests.service import fake_worker
from tests.service.helpers import clips, model_messages, npz_bytes, onnx_bytes, rpc_error, upload_dataset

CODE = grpc.StatusCode


def kernel_viz(model_id: str, **options: object) -> jobs_pb2.CreateJobRequest:
    task = tasks_pb2.Task(kernel_viz=tasks_pb2.KernelVizOptions(**options))  # type: ignore[arg-type]
    return jobs_pb2.CreateJobRequest(model_id=model_id, tasks=[task])


@pytest.mark.parametrize(
    "options, reason, field",
    [
        ({"channels": range(10**6)}, "TOO_MANY_ENTRIES", "tasks[0].kernel_viz.channels has 1000000 entries, the limit is 4096"),
        ({"canvas": [4, 8, 8, 8]}, "TOO_MANY_ENTRIES", "tasks[0].kernel_viz.canvas has 4 entries, the limit is 3"),
        ({"layers": ["conv1", "c" * 1000]}, "FIELD_TOO_LONG", "tasks[0].kernel_viz.layers[1] is 1000 characters"),
        ({"layers": ["l" * 200] * 1000}, "REQUEST_TOO_LARGE", "the request is 2"),
    ],
)
def test_task_options_over_their_bounds_are_refused_naming_the_field_and_store_nothing(
    kernelscope_server, options, reason, field
) -> None:
    stub = kernelscope_server.stub()
    model = stub.UploadModel(model_messages(onnx_bytes()), timeout=30)
    with rpc_error(CODE.INVALID_ARGUMENT, reason, contains=field):
        stub.CreateJob(kernel_viz(model.id, **options), timeout=60)
    assert list(stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=10), timeout=30).jobs) == []
    stub.CreateJob(kernel_viz(model.id, channels=range(4096), layers=["conv1"]), timeout=30)  # at the bounds: fine


def test_ids_and_upload_headers_are_bounded_too(kernelscope_server) -> None:
    stub = kernelscope_server.stub()
    with rpc_error(CODE.INVALID_ARGUMENT, "FIELD_TOO_LONG", contains="job_id is 100000 characters long"):
        stub.GetJob(jobs_pb2.GetJobRequest(job_id="j" * 100_000), timeout=30)
    with rpc_error(CODE.INVALID_ARGUMENT, "TOO_MANY_ENTRIES", contains="header.input_spec.shape has 9 entries"):
        stub.UploadModel(model_messages(onnx_bytes(), input_shape=(1,) * 9), timeout=30)
    with rpc_error(CODE.INVALID_ARGUMENT, "TOO_MANY_ENTRIES", contains="header.input_spec.mean has 100000 entries"):
        messages = list(model_messages(onnx_bytes()))
        messages[0].header.input_spec.mean.extend([0.5] * 100_000)
        stub.UploadModel(iter(messages), timeout=30)


@pytest.mark.parametrize("label", [2**31, 2**40, 100_000])
def test_dataset_labels_past_the_class_bound_are_invalid_argument_naming_y(kernelscope_stub, label: int) -> None:
    arrays = clips(n_per_class=3, classes=2)
    arrays["y"] = arrays["y"].astype(np.int64)
    arrays["y"][0] = label
    del arrays["class_names"]
    with rpc_error(CODE.INVALID_ARGUMENT, "BAD_LABELS", contains="y: labels must be below 100000"):
        upload_dataset(kernelscope_stub, npz_bytes(**arrays))
    arrays["y"][0] = 99_999  # the largest label allowed
    assert upload_dataset(kernelscope_stub, npz_bytes(**arrays)).num_classes == 100_000


def test_an_unreadable_job_record_shows_as_a_stub_in_get_and_list_and_can_be_deleted(fake_server, redis_conn) -> None:
    stub = fake_server.stub()
    model = stub.UploadModel(model_messages(onnx_bytes()), timeout=30)
    created = [stub.CreateJob(jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name="tconv_stats")]), timeout=30) for _ in range(3)]
    bad = created[1].id
    redis_conn.set(Keys().record("job", bad), b'{"id": "truncated')

    listed = stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=10), timeout=30).jobs
    assert [j.id for j in listed] == [c.id for c in reversed(created)]
    shown = next(j for j in listed if j.id == bad)
    assert shown.state == jobs_pb2.FAILED and shown.error.reason == "BAD_RECORD" and "delete the job" in shown.error.message
    assert stub.GetJob(jobs_pb2.GetJobRequest(job_id=bad), timeout=30) == shown

    stub.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=bad), timeout=30)
    assert [j.id for j in stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=30).jobs] == [created[2].id, created[0].id]
    assert redis_conn.zcard(Keys().index("job")) == 2


def test_a_list_page_stops_before_the_message_limit(fake_server, redis_conn) -> None:
    """Six ended jobs of 3 MB each (records written before summaries were bounded) made an 18 MB page."""
    stub = fake_server.stub()
    model = stub.UploadModel(model_messages(onnx_bytes()), timeout=30)
    request = jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name="tconv_stats")])
    ids = []
    for _ in range(6):
        job = stub.CreateJob(request, timeout=30)
        key = Keys().record("job", job.id)
        record = json.loads(redis_conn.get(key))
        record["outcome"] = {"id": job.id, "model_id": model.id, "state": "SUCCEEDED",
                             "results": [{"task": "tconv_stats", "summary_json": json.dumps({"pad": "p" * 3_000_000})}]}
        redis_conn.set(key, json.dumps(record))
        ids.append(job.id)

    seen, token, pages = [], "", 0
    while True:
        page = stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=10, page_token=token), timeout=60)
        assert 1 <= len(page.jobs) and page.ByteSize() <= 8 * 1024 * 1024
        seen += [j.id for j in page.jobs]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids)) and pages >= 3


def test_summaries_past_the_job_budget_are_kept_out_of_the_record(start_fake_server, run_jobs, monkeypatch) -> None:
    """Twelve 1.5 MB summaries (18 MB) made a Job no GetJob could send; now the ones past 4 MiB are refused."""
    monkeypatch.setenv(fake_worker.MODE_ENV, "summary_bytes=1500000")
    server = start_fake_server()
    stub = server.stub()
    model = stub.UploadModel(model_messages(onnx_bytes(), fmt=models_pb2.ONNX), timeout=30)
    job = stub.CreateJob(
        jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name="tconv_stats")] * 12), timeout=30
    )
    run_jobs()
    done = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id), timeout=60)
    kept = [r for r in done.results if r.summary_json]
    refused = [r for r in done.results if r.error.reason == "SUMMARY_TOO_LARGE"]
    assert len(kept) == 2 and len(refused) == 10, [(r.task, r.error.reason) for r in done.results]
    assert done.state == jobs_pb2.FAILED and done.error.reason == "SUMMARY_TOO_LARGE"
    assert [j.id for j in stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=60).jobs] == [job.id]


def test_an_unreadable_model_record_is_left_out_of_list_models(kernelscope_stub, redis_conn) -> None:
    models = [kernelscope_stub.UploadModel(model_messages(onnx_bytes(padding=i)), timeout=30) for i in range(3)]
    redis_conn.set(Keys().record("model", models[1].id), b"{not json")
    listed = kernelscope_stub.ListModels(models_pb2.ListModelsRequest(), timeout=30).models
    assert sorted(m.id for m in listed) == sorted([models[0].id, models[2].id])


def test_a_record_too_large_to_send_shows_as_a_stub(fake_server, redis_conn) -> None:
    """A 17 MB outcome (written before summaries were bounded) made GetJob and every ListJobs page fail."""
    stub = fake_server.stub()
    model = stub.UploadModel(model_messages(onnx_bytes()), timeout=30)
    request = jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name="tconv_stats")])
    small, big = stub.CreateJob(request, timeout=30), stub.CreateJob(request, timeout=30)
    key = Keys().record("job", big.id)
    record = json.loads(redis_conn.get(key))
    record["outcome"] = {"id": big.id, "state": "SUCCEEDED", "results": [{"task": "tconv_stats", "summary_json": "p" * 17_000_000}]}
    redis_conn.set(key, json.dumps(record))

    shown = stub.GetJob(jobs_pb2.GetJobRequest(job_id=big.id), timeout=60)
    assert shown.state == jobs_pb2.FAILED and shown.error.reason == "RECORD_TOO_LARGE"
    assert [j.id for j in stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=60).jobs] == [big.id, small.id]
    stub.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=big.id), timeout=60)
    assert [j.id for j in stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=60).jobs] == [small.id]
