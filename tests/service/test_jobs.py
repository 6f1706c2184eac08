"""The job API through real gRPC and a real Redis/RQ: validation, idempotency, cancel, paging, and job flow
with a torch-free fake worker (tests/service/fake_worker.py) run by an RQ SimpleWorker in the test thread."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import duration_pb2
from kernelscope import contract
from kernelscope.states import CANCEL_FIELD
from kernelscope.v1 import jobs_pb2, models_pb2, tasks_pb2
from rq import Queue
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from tests.service import fake_worker
from tests.service.helpers import (
    clips,
    npz_bytes,
    onnx_bytes,
    rpc_error,
    stored_files,
    upload_dataset,
    upload_model,
    zip_bytes,
)

CODE = grpc.StatusCode
VALID = "kernel_viz, tconv_stats, class_filters, describe"


def task(name: str = "tconv_stats", **options) -> tasks_pb2.Task:
    if not options:
        return tasks_pb2.Task(name=name)
    return tasks_pb2.Task(**{name: getattr(tasks_pb2, _OPTIONS[name])(**options)})


_OPTIONS = {"kernel_viz": "KernelVizOptions", "tconv_stats": "TConvStatsOptions", "class_filters": "ClassFiltersOptions"}


def create(stub, model_id: str, *tasks_: tasks_pb2.Task, dataset_id: str = "", request_id: str = "") -> jobs_pb2.Job:
    request = jobs_pb2.CreateJobRequest(model_id=model_id, dataset_id=dataset_id, tasks=tasks_, request_id=request_id)
    return stub.CreateJob(request, timeout=10)


def queue_of(server, redis_conn) -> Queue:
    return Queue(server.config.queue_name, connection=redis_conn, serializer=JSONSerializer)


@pytest.fixture
def model(kernelscope_stub) -> models_pb2.Model:
    return upload_model(kernelscope_stub, onnx_bytes(), input_shape=(3, 4, 8, 8))


# --- CreateJob validation -------------------------------------------------------------------


def test_a_job_carries_the_model_it_ran_with_and_warns_when_no_normalisation_was_given(kernelscope_stub) -> None:
    """The input spec, name and architecture a job used are on the Job itself; activation tasks on a model with no
    mean/std warn (raw values are fed unnormalised), a normalised model or a weights-only task does not."""
    from tests.service.helpers import model_messages

    data = onnx_bytes()
    raw = upload_model(kernelscope_stub, data, name="plain")
    messages = list(model_messages(data, name="normalised"))
    messages[0].header.input_spec.mean.extend([0.5] * 3)
    messages[0].header.input_spec.std.extend([0.25] * 3)
    normalised = kernelscope_stub.UploadModel(iter(messages), timeout=30)
    assert normalised.id != raw.id
    warned = create(kernelscope_stub, raw.id, task("kernel_viz"))
    fetched = kernelscope_stub.GetJob(jobs_pb2.GetJobRequest(job_id=warned.id), timeout=10)
    for job in (warned, fetched):
        assert job.model_name == "plain" and list(job.input_spec.shape) == [3, 4, 8, 8] and not job.input_spec.mean
        assert len(job.warnings) == 1 and "no input_spec mean/std" in job.warnings[0] and "kernel_viz" in job.warnings[0]
    quiet = create(kernelscope_stub, normalised.id, task("kernel_viz"))
    assert quiet.model_name == "normalised" and list(quiet.input_spec.std) == [0.25] * 3 and not quiet.warnings
    assert not create(kernelscope_stub, raw.id, task("tconv_stats")).warnings  # weights only: nothing is fed



def test_bad_tasks_are_invalid_argument_listing_the_valid_names(kernelscope_server, kernelscope_stub, model, redis_conn) -> None:
    with rpc_error(CODE.INVALID_ARGUMENT, "UNKNOWN_TASK", contains=f"'kernel_vis'; valid tasks: {VALID}"):
        create(kernelscope_stub, model.id, task("kernel_vis"))
    with rpc_error(CODE.INVALID_ARGUMENT, "TASK_NAME_MISMATCH", contains=VALID):
        create(kernelscope_stub, model.id, tasks_pb2.Task(name="kernel_viz", tconv_stats=tasks_pb2.TConvStatsOptions()))
    with rpc_error(CODE.INVALID_ARGUMENT, "EMPTY_TASK", contains=VALID):
        create(kernelscope_stub, model.id, task("tconv_stats"), tasks_pb2.Task())
    with rpc_error(CODE.INVALID_ARGUMENT, "NO_TASKS", contains=VALID):
        create(kernelscope_stub, model.id)
    with rpc_error(CODE.INVALID_ARGUMENT, "DATASET_REQUIRED", contains="class_filters"):
        create(kernelscope_stub, model.id, task("class_filters"))
    assert queue_of(kernelscope_server, redis_conn).count == 0
    assert not kernelscope_stub.ListJobs(jobs_pb2.ListJobsRequest()).jobs


def test_missing_model_or_dataset_is_not_found(kernelscope_stub, model) -> None:
    with rpc_error(CODE.NOT_FOUND, "MODEL_NOT_FOUND", contains="mdl_missing"):
        create(kernelscope_stub, "mdl_missing", task())
    with rpc_error(CODE.NOT_FOUND, "DATASET_NOT_FOUND", contains="ds_missing"):
        create(kernelscope_stub, model.id, task(), dataset_id="ds_missing")


def test_weights_only_models_cannot_run_activation_tasks(kernelscope_stub) -> None:
    weights = upload_model(kernelscope_stub, zip_bytes(b"sd"), models_pb2.STATE_DICT)
    with rpc_error(CODE.FAILED_PRECONDITION, "NEEDS_RUNNABLE_MODEL", contains="kernel_viz"):
        create(kernelscope_stub, weights.id, task("tconv_stats"), task("kernel_viz"))
    assert create(kernelscope_stub, weights.id, task("tconv_stats")).state == jobs_pb2.QUEUED
    registered = upload_model(kernelscope_stub, zip_bytes(b"sd2"), models_pb2.STATE_DICT, architecture="c3d_small")
    assert create(kernelscope_stub, registered.id, task("kernel_viz")).state == jobs_pb2.QUEUED


def test_dataset_shape_must_match_the_model_input(kernelscope_stub, model) -> None:
    wrong = upload_dataset(kernelscope_stub, npz_bytes(**clips(shape=(3, 4, 16, 16))))
    with rpc_error(CODE.FAILED_PRECONDITION, "DATASET_SHAPE_MISMATCH", contains="(3, 4, 16, 16)"):
        create(kernelscope_stub, model.id, task("class_filters"), dataset_id=wrong.id)
    right = upload_dataset(kernelscope_stub, npz_bytes(**clips(shape=(3, 4, 8, 8))))
    assert create(kernelscope_stub, model.id, task("class_filters"), dataset_id=right.id).dataset_id == right.id


def test_the_enqueued_spec_is_the_worker_contract(kernelscope_server, kernelscope_stub, redis_conn) -> None:
    model = upload_model(kernelscope_stub, onnx_bytes(padding=3), input_shape=(3, 8, 32, 32), name="c3d")
    dataset = upload_dataset(kernelscope_stub, npz_bytes(**clips(shape=(3, 8, 32, 32))))
    job = create(
        kernelscope_stub,
        model.id,
        task("tconv_stats", layers=["conv1"], restarts=2, fit_conv3d=False),
        tasks_pb2.Task(name="kernel_viz"),
        task("class_filters", k=3),
        dataset_id=dataset.id,
    )
    assert job.id.startswith("job_") and len(job.id) == 4 + 32
    assert [t.name for t in job.tasks] == ["tconv_stats", "kernel_viz", "class_filters"]
    assert job.tasks[1].WhichOneof("options") == "kernel_viz"
    rq_job = RQJob.fetch(job.id, connection=redis_conn, serializer=JSONSerializer)
    assert rq_job.func_name == "workers.job.run"
    assert rq_job.origin == kernelscope_server.config.queue_name
    assert rq_job.timeout == kernelscope_server.config.job_timeout and rq_job.result_ttl == -1
    assert rq_job.failure_ttl == kernelscope_server.config.failure_ttl
    (raw,) = rq_job.args
    spec = contract.spec_from_json(raw)  # a JobSpec as JSON (worker.proto), read as the worker reads it
    assert spec.job_id == job.id
    assert (spec.model.id, spec.model.name, spec.model.format, spec.model.sha256, spec.model.size_bytes, spec.model.architecture) == (
        model.id, "c3d", models_pb2.ONNX, model.sha256, model.size_bytes, "")
    assert contract.input_spec_dict(spec.model.input_spec) == {
        "shape": [3, 8, 32, 32], "dtype": "", "value_min": 0.0, "value_max": 0.0, "mean": [], "std": []}
    assert (spec.dataset.id, spec.dataset.name, spec.dataset.sha256, spec.dataset.size_bytes) == (
        dataset.id, "test-set", dataset.sha256, dataset.size_bytes)
    assert [(t.name, contract.task_options(t)) for t in spec.tasks] == [
        ("tconv_stats", {"layers": ["conv1"], "restarts": 2, "fit_conv3d": False}),
        ("kernel_viz", {}),
        ("class_filters", {"k": 3}),
    ]


# --- request_id -------------------------------------------------------------------------------


def test_a_repeated_request_id_returns_the_first_job(kernelscope_server, kernelscope_stub, model, redis_conn) -> None:
    first = create(kernelscope_stub, model.id, task(), request_id="req-1")
    again = create(kernelscope_stub, model.id, task(), request_id="req-1")
    other = create(kernelscope_stub, model.id, task(), request_id="req-2")
    assert again.id == first.id and other.id != first.id
    assert queue_of(kernelscope_server, redis_conn).count == 2


def test_a_request_id_sent_concurrently_creates_one_job(kernelscope_server, model, redis_conn) -> None:
    stubs = [kernelscope_server.stub() for _ in range(8)]
    barrier = threading.Barrier(len(stubs))

    def send(stub) -> str:
        barrier.wait()
        return create(stub, model.id, task(), request_id="same-request").id

    with ThreadPoolExecutor(len(stubs)) as pool:
        ids = list(pool.map(send, stubs))
    assert len(set(ids)) == 1
    assert queue_of(kernelscope_server, redis_conn).count == 1
    assert len(kernelscope_server.stub().ListJobs(jobs_pb2.ListJobsRequest()).jobs) == 1


# --- cancel, delete, list, wait ---------------------------------------------------------------


def test_cancelling_a_queued_job(kernelscope_server, kernelscope_stub, model, redis_conn) -> None:
    job = create(kernelscope_stub, model.id, task())
    with rpc_error(CODE.FAILED_PRECONDITION, "JOB_NOT_TERMINAL"):
        kernelscope_stub.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=job.id))
    cancelled = kernelscope_stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
    assert cancelled.state == jobs_pb2.CANCELLED and cancelled.error.reason == "JOB_CANCELLED"
    assert cancelled.end_time.ToNanoseconds() >= job.create_time.ToNanoseconds()
    assert kernelscope_stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)).state == jobs_pb2.CANCELLED
    assert queue_of(kernelscope_server, redis_conn).count == 0
    # A worker that took it off the queue that very moment reads this at its first progress write, and stops.
    assert redis_conn.hget(f"rq:job:{job.id}", CANCEL_FIELD) == b"1"
    with rpc_error(CODE.FAILED_PRECONDITION, "JOB_TERMINAL", contains="CANCELLED"):
        kernelscope_stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
    kernelscope_stub.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=job.id))
    with rpc_error(CODE.NOT_FOUND, "JOB_NOT_FOUND", contains=job.id):
        kernelscope_stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert not redis_conn.exists(f"rq:job:{job.id}")


def test_list_jobs_pages_newest_first_and_filters_by_state(kernelscope_stub, model) -> None:
    ids = [create(kernelscope_stub, model.id, task()).id for _ in range(5)]
    for job_id in ids[1:3]:
        kernelscope_stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id))
    pages, token = [], ""
    while True:
        page = kernelscope_stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=2, page_token=token))
        pages.append([j.id for j in page.jobs])
        token = page.next_page_token
        if not token:
            break
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[:1]]
    cancelled = kernelscope_stub.ListJobs(jobs_pb2.ListJobsRequest(state=jobs_pb2.CANCELLED))
    assert [j.id for j in cancelled.jobs] == [ids[2], ids[1]] and not cancelled.next_page_token
    queued = kernelscope_stub.ListJobs(jobs_pb2.ListJobsRequest(state=jobs_pb2.QUEUED, page_size=2))
    assert [j.id for j in queued.jobs] == [ids[4], ids[3]] and queued.next_page_token
    rest = kernelscope_stub.ListJobs(jobs_pb2.ListJobsRequest(state=jobs_pb2.QUEUED, page_size=2, page_token=queued.next_page_token))
    assert [j.id for j in rest.jobs] == [ids[0]] and not rest.next_page_token
    with rpc_error(CODE.INVALID_ARGUMENT, "BAD_PAGE_TOKEN"):
        kernelscope_stub.ListJobs(jobs_pb2.ListJobsRequest(page_token="garbage"))


def test_wait_job_returns_at_its_timeout_while_queued(kernelscope_stub, model) -> None:
    job = create(kernelscope_stub, model.id, task())
    started = time.monotonic()
    waited = kernelscope_stub.WaitJob(jobs_pb2.WaitJobRequest(job_id=job.id, timeout=duration_pb2.Duration(nanos=300_000_000)))
    elapsed = time.monotonic() - started
    assert waited.state == jobs_pb2.QUEUED and 0.3 <= elapsed < 3.0
    with rpc_error(CODE.NOT_FOUND, "JOB_NOT_FOUND"):
        kernelscope_stub.WaitJob(jobs_pb2.WaitJobRequest(job_id="job_nope"))


# --- job flow with the fake worker -------------------------------------------------------------


def test_a_job_runs_reports_progress_and_serves_its_artifacts(fake_server, run_jobs) -> None:
    stub = fake_server.stub()
    model = upload_model(stub, onnx_bytes())
    job = create(stub, model.id, task("tconv_stats", restarts=1), task("kernel_viz"))
    updates: list[jobs_pb2.Job] = []
    watcher = threading.Thread(target=lambda: updates.extend(stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.id), timeout=30)))
    watcher.start()
    time.sleep(0.2)
    run_jobs()
    watcher.join(30)
    states = [u.state for u in updates]
    assert states[0] == jobs_pb2.QUEUED and states[-1] == jobs_pb2.SUCCEEDED
    running = [u for u in updates if u.state == jobs_pb2.RUNNING]
    assert {(u.progress.task, u.progress.task_index, u.progress.fraction) for u in running} >= {
        ("tconv_stats", 0, 0.25), ("kernel_viz", 1, 0.75)
    }
    reported = [u.progress for u in running if u.progress.task]
    assert reported[0].task_count == 2 and reported[0].message == "half of tconv_stats"

    final = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert final == updates[-1]
    assert final.worker.startswith("fake-worker@") and final.progress.fraction == 1.0 and not final.HasField("error")
    assert final.create_time.ToNanoseconds() <= final.start_time.ToNanoseconds() <= final.end_time.ToNanoseconds()
    assert [r.task for r in final.results] == ["tconv_stats", "kernel_viz"]
    summary = json.loads(final.results[0].summary_json)
    assert summary["options"] == {"restarts": 1} and summary["model"]["id"] == model.id
    names = [a.name for a in final.results[1].artifacts]
    assert names == ["kernel_viz/big.bin", "kernel_viz/summary.json"]
    summary_artifact = final.results[1].artifacts[1]
    assert summary_artifact.media_type == "application/json" and summary_artifact.task == "kernel_viz"

    chunks = list(stub.ReadArtifact(jobs_pb2.ReadArtifactRequest(job_id=job.id, name="kernel_viz/big.bin")))
    assert len(chunks) == 3 and max(len(c.data) for c in chunks) == 1 << 20
    assert b"".join(c.data for c in chunks) == bytes(range(256)) * 12_000
    read = b"".join(c.data for c in stub.ReadArtifact(jobs_pb2.ReadArtifactRequest(job_id=job.id, name="kernel_viz/summary.json")))
    assert json.loads(read)["task"] == "kernel_viz"
    with rpc_error(CODE.NOT_FOUND, "ARTIFACT_NOT_FOUND", contains="nope.png"):
        list(stub.ReadArtifact(jobs_pb2.ReadArtifactRequest(job_id=job.id, name="nope.png")))
    with rpc_error(CODE.NOT_FOUND, "JOB_NOT_FOUND"):
        list(stub.ReadArtifact(jobs_pb2.ReadArtifactRequest(job_id="job_nope", name="kernel_viz/big.bin")))
    assert stub.WaitJob(jobs_pb2.WaitJobRequest(job_id=job.id), timeout=5).state == jobs_pb2.SUCCEEDED
    with rpc_error(CODE.FAILED_PRECONDITION, "JOB_TERMINAL"):
        stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))


@pytest.mark.parametrize(
    "mode, code, reason, words",
    [
        ("task_error", "FAILED_PRECONDITION", "UNKNOWN_LAYER", "no layer named 'nope'"),
        ("raise", "INTERNAL", "WORKER_FAILED", "RuntimeError: the fake worker crashed on purpose"),
        ("write_then_raise", "INTERNAL", "WORKER_FAILED", "crashed after writing artifacts"),
    ],
)
def test_failures_are_recorded_inside_the_job(fake_server, run_jobs, monkeypatch, mode, code, reason, words) -> None:
    monkeypatch.setenv(fake_worker.MODE_ENV, mode)
    stub = fake_server.stub()
    job = create(stub, upload_model(stub, onnx_bytes()).id, task("tconv_stats"), task("kernel_viz"))
    run_jobs()
    final = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert final.state == jobs_pb2.FAILED
    assert (final.error.code, final.error.reason) == (code, reason) and words in final.error.message
    if mode == "task_error":  # the other task's results are kept
        assert final.results[0].error.reason == "UNKNOWN_LAYER" and final.results[1].summary_json
    if mode == "write_then_raise":  # artifacts written before the crash stay listed and readable
        assert [a.name for a in final.results[0].artifacts] == ["tconv_stats/big.bin", "tconv_stats/summary.json"]
        data = b"".join(c.data for c in stub.ReadArtifact(jobs_pb2.ReadArtifactRequest(job_id=job.id, name="tconv_stats/big.bin")))
        assert len(data) == 256 * 12_000


def test_a_job_past_its_timeout_fails_with_deadline_exceeded(start_server, run_jobs, monkeypatch) -> None:
    server = start_server(job_function=fake_worker.JOB_FUNCTION, job_timeout=1)
    monkeypatch.setenv(fake_worker.MODE_ENV, "sleep")
    stub = server.stub()
    job = create(stub, upload_model(stub, onnx_bytes()).id, task())
    run_jobs()
    final = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert final.state == jobs_pb2.FAILED
    assert (final.error.code, final.error.reason) == ("DEADLINE_EXCEEDED", "JOB_TIMEOUT")


def test_a_job_stays_readable_after_rq_forgets_it(fake_server, run_jobs, redis_conn) -> None:
    stub = fake_server.stub()
    model = upload_model(stub, onnx_bytes())
    done = create(stub, model.id, task())
    run_jobs()
    before = stub.GetJob(jobs_pb2.GetJobRequest(job_id=done.id))
    lost = create(stub, model.id, task())
    for job_id in (done.id, lost.id):
        RQJob.fetch(job_id, connection=redis_conn, serializer=JSONSerializer).delete()
    assert stub.GetJob(jobs_pb2.GetJobRequest(job_id=done.id)) == before
    gone = stub.GetJob(jobs_pb2.GetJobRequest(job_id=lost.id))
    assert gone.state == jobs_pb2.FAILED and gone.error.reason == "JOB_LOST"


def test_delete_job_removes_artifacts_and_only_unshared_blobs(fake_server, run_jobs) -> None:
    stub = fake_server.stub()
    model = upload_model(stub, onnx_bytes())
    first, second = create(stub, model.id, task()), create(stub, model.id, task("kernel_viz"))
    run_jobs()
    blobs = lambda: {p.name for p in stored_files(fake_server.config.data_dir)["blobs"]}  # noqa: E731
    artifacts = {j: stub.GetJob(jobs_pb2.GetJobRequest(job_id=j)).results[0].artifacts for j in (first.id, second.id)}
    shared = artifacts[first.id][0].sha256  # big.bin: same bytes in both jobs
    assert shared == artifacts[second.id][0].sha256
    assert blobs() == {model.sha256, shared, artifacts[first.id][1].sha256, artifacts[second.id][1].sha256}

    stub.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=first.id))
    assert blobs() == {model.sha256, shared, artifacts[second.id][1].sha256}
    with rpc_error(CODE.NOT_FOUND, "JOB_NOT_FOUND"):
        list(stub.ReadArtifact(jobs_pb2.ReadArtifactRequest(job_id=first.id, name="tconv_stats/big.bin")))
    assert list(stub.ReadArtifact(jobs_pb2.ReadArtifactRequest(job_id=second.id, name="kernel_viz/big.bin")))
    stub.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=second.id))
    assert blobs() == {model.sha256}
    assert not stub.ListJobs(jobs_pb2.ListJobsRequest()).jobs


# --- DescribeModel -----------------------------------------------------------------------------


def _describe_with_worker(server, stub, run_jobs, redis_conn, model_id: str):
    future = stub.DescribeModel.future(models_pb2.DescribeModelRequest(model_id=model_id), timeout=30)
    deadline = time.monotonic() + 10
    while queue_of(server, redis_conn).count == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    run_jobs()
    return future


def test_describe_model_runs_a_hidden_job_and_caches_the_description(fake_server, run_jobs, redis_conn) -> None:
    stub = fake_server.stub()
    model = upload_model(stub, onnx_bytes())
    description = _describe_with_worker(fake_server, stub, run_jobs, redis_conn, model.id).result()
    assert description.model_id == model.id
    assert list(description.input_spec.shape) == [3, 4, 8, 8] and description.input_spec.value_max == 1.0
    conv, fc = description.layers
    assert (conv.name, conv.kind, list(conv.kernel_shape), list(conv.receptive_field), conv.parameters) == (
        "conv1", "Conv3d", [8, 3, 3, 3, 3], [3, 3, 3], 656
    )
    assert (fc.name, list(fc.stride), list(fc.output_shape)) == ("fc", [], [2])
    assert list(description.supported_tasks) == ["describe", "tconv_stats", "kernel_viz"]
    assert not stub.ListJobs(jobs_pb2.ListJobsRequest()).jobs  # internal job hidden
    again = stub.DescribeModel(models_pb2.DescribeModelRequest(model_id=model.id), timeout=5)  # no worker runs now
    assert again == description and queue_of(fake_server, redis_conn).count == 0


def test_a_failed_describe_returns_its_error(fake_server, run_jobs, redis_conn, monkeypatch) -> None:
    monkeypatch.setenv(fake_worker.MODE_ENV, "describe_fails")
    stub = fake_server.stub()
    model = upload_model(stub, onnx_bytes())
    future = _describe_with_worker(fake_server, stub, run_jobs, redis_conn, model.id)
    with rpc_error(CODE.FAILED_PRECONDITION, "MODEL_REJECTED", contains="hostile"):
        future.result()
    with rpc_error(CODE.NOT_FOUND, "MODEL_NOT_FOUND"):
        stub.DescribeModel(models_pb2.DescribeModelRequest(model_id="mdl_nope"), timeout=5)


def test_describe_without_a_worker_hits_its_deadline(start_server) -> None:
    server = start_server(describe_timeout=0.5)
    stub = server.stub()
    model = upload_model(stub, onnx_bytes())
    with rpc_error(CODE.DEADLINE_EXCEEDED, "DESCRIBE_TIMEOUT", contains="queue"):
        stub.DescribeModel(models_pb2.DescribeModelRequest(model_id=model.id), timeout=10)
