"""Every limit refuses with RESOURCE_EXHAUSTED, names the limit in its message and stores nothing; the
per-tenant in-flight job limit is atomic under concurrent creates and frees slots as jobs end."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from kernelscope.v1 import jobs_pb2, kernelscope_pb2_grpc, models_pb2, tasks_pb2, worker_pb2, worker_pb2_grpc

from tests.service.helpers import (
    clips,
    dataset_messages,
    model_messages,
    npz_bytes,
    onnx_bytes,
    reason,
    rpc_error,
    stored_files,
    with_token,
)

CODE = grpc.StatusCode


def tconv(model_id: str) -> jobs_pb2.CreateJobRequest:
    return jobs_pb2.CreateJobRequest(model_id=model_id, tasks=[tasks_pb2.Task(name="tconv_stats")])


def compressed_zeros(samples: int) -> bytes:
    """A small NPZ whose arrays decode to far more bytes than the file holds."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros((samples, 3, 4, 8, 8), np.float32), y=np.arange(samples) % 2)
    return buffer.getvalue()


def artifact(job_id: str, data: bytes, declared: int) -> list[worker_pb2.WriteArtifactRequest]:
    header = worker_pb2.ArtifactHeader(job_id=job_id, name="t/big.bin", size_bytes=declared)
    return [worker_pb2.WriteArtifactRequest(header=header), worker_pb2.WriteArtifactRequest(chunk=data)]


def test_each_size_limit_is_refused_naming_the_limit_and_stores_nothing(start_server) -> None:
    server = start_server(max_upload_bytes=20_000, max_dataset_bytes=30_000, max_dataset_samples=4, max_artifact_bytes=5_000)
    stub = server.stub()
    model = stub.UploadModel(model_messages(onnx_bytes()), timeout=10)
    job = stub.CreateJob(tconv(model.id), timeout=10)
    worker = worker_pb2_grpc.WorkerStub(server.channel())
    samples = npz_bytes(**clips(n_per_class=3, classes=2))
    cases = {
        "model": (lambda: stub.UploadModel(model_messages(onnx_bytes(padding=30_000)), timeout=10), "20000"),
        "dataset": (lambda: stub.UploadDataset(dataset_messages(b"\0" * 40_000), timeout=10), "30000"),
        "decoded dataset": (lambda: stub.UploadDataset(dataset_messages(compressed_zeros(100)), timeout=10), "30000"),
        "dataset samples": (lambda: stub.UploadDataset(dataset_messages(samples), timeout=10), "limit of 4"),
        "artifact (declared)": (
            lambda: worker.WriteArtifact(iter(artifact(job.id, b"x" * 6_000, 6_000)), metadata=server.worker_metadata, timeout=10),
            "5000",
        ),
        "artifact (streamed past)": (
            lambda: worker.WriteArtifact(iter(artifact(job.id, b"x" * 6_000, 0)), metadata=server.worker_metadata, timeout=10),
            "5000",
        ),
    }
    for what, (call, limit) in cases.items():
        with rpc_error(CODE.RESOURCE_EXHAUSTED, contains=limit) as caught:
            call()
        assert reason(caught[0]) in ("TOO_LARGE", "TOO_MANY_SAMPLES"), what
    files = stored_files(server.config.data_dir)
    assert [p.name for p in files["blobs"]] == [model.sha256] and files["tmp"] == []


def test_jobs_in_flight_are_limited_per_tenant_and_freed_as_jobs_end(start_fake_server, run_jobs) -> None:
    server = start_fake_server(max_jobs_in_flight=2, tokens="a=token-a,b=token-b")
    a = kernelscope_pb2_grpc.KernelScopeStub(with_token(server.channel(), "token-a"))
    b = kernelscope_pb2_grpc.KernelScopeStub(with_token(server.channel(), "token-b"))
    model_a = a.UploadModel(model_messages(onnx_bytes()), timeout=10)
    model_b = b.UploadModel(model_messages(onnx_bytes()), timeout=10)

    first, second = a.CreateJob(tconv(model_a.id), timeout=10), a.CreateJob(tconv(model_a.id), timeout=10)
    with rpc_error(CODE.RESOURCE_EXHAUSTED, "TOO_MANY_JOBS", contains="tenant 'a' has 2 jobs queued or running, the limit is 2"):
        a.CreateJob(tconv(model_a.id), timeout=10)
    with rpc_error(CODE.RESOURCE_EXHAUSTED, "TOO_MANY_JOBS"):  # DescribeModel's job counts too
        a.DescribeModel(models_pb2.DescribeModelRequest(model_id=model_a.id), timeout=10)
    b.CreateJob(tconv(model_b.id), timeout=10)  # another tenant has slots of its own

    a.CancelJob(jobs_pb2.CancelJobRequest(job_id=second.id), timeout=10)  # a cancelled job frees its slot
    third = a.CreateJob(tconv(model_a.id), timeout=10)
    with rpc_error(CODE.RESOURCE_EXHAUSTED, "TOO_MANY_JOBS"):
        a.CreateJob(tconv(model_a.id), timeout=10)
    run_jobs()  # both of a's jobs end, and nobody looks at them before the next create
    a.CreateJob(tconv(model_a.id), timeout=10)
    a.CreateJob(tconv(model_a.id), timeout=10)
    assert {first.id, third.id} <= {j.id for j in a.ListJobs(jobs_pb2.ListJobsRequest(state=jobs_pb2.SUCCEEDED)).jobs}


def test_the_in_flight_limit_holds_under_concurrent_creates(start_server) -> None:
    server = start_server(max_jobs_in_flight=5)
    stub = server.stub()
    model = stub.UploadModel(model_messages(onnx_bytes()), timeout=10)

    def create(_: int) -> str:
        try:
            return stub.CreateJob(tconv(model.id), timeout=20).id
        except grpc.RpcError as error:
            assert error.code() == CODE.RESOURCE_EXHAUSTED, error.details()
            return ""

    with ThreadPoolExecutor(max_workers=12) as pool:
        ids = list(pool.map(create, range(24)))
    assert sum(bool(i) for i in ids) == 5
    assert len(stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=10).jobs) == 5


@pytest.mark.parametrize("setting, value", [("max_jobs_in_flight", 0), ("job_retries", -1), ("worker_timeout", 0)])
def test_limits_must_be_sensible(service_config, setting: str, value: float) -> None:
    with pytest.raises(ValueError, match=setting):
        service_config.replace(**{setting: value})

