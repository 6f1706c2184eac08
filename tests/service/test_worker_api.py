"""The Worker service through real gRPC: the token, FetchBlob, and WriteArtifact's checks."""

from __future__ import annotations

import hashlib

import grpc
import pytest
from kernelscope.v1 import jobs_pb2, models_pb2, tasks_pb2, worker_pb2

from tests.service.helpers import onnx_bytes, rpc_error, stored_files, upload_model

CODE = grpc.StatusCode


def artifact_messages(job_id: str, name: str, data: bytes, size: int | None = None, digest: str | None = None):
    header = worker_pb2.ArtifactHeader(
        job_id=job_id,
        name=name,
        size_bytes=len(data) if size is None else size,
        sha256=hashlib.sha256(data).hexdigest() if digest is None else digest,
    )
    yield worker_pb2.WriteArtifactRequest(header=header)
    for start in range(0, len(data), 1 << 20):
        yield worker_pb2.WriteArtifactRequest(chunk=data[start : start + (1 << 20)])


@pytest.fixture
def job(kernelscope_stub) -> jobs_pb2.Job:
    model = upload_model(kernelscope_stub, onnx_bytes())
    return kernelscope_stub.CreateJob(
        jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name="tconv_stats")]), timeout=10
    )


def test_fetch_blob_streams_the_stored_bytes(start_server) -> None:
    server = start_server(chunk_bytes=4096)
    data = onnx_bytes(padding=10_000)
    model = upload_model(server.stub(), data)
    chunks = list(server.worker_stub().FetchBlob(worker_pb2.FetchBlobRequest(sha256=model.sha256), metadata=server.worker_metadata))
    assert b"".join(c.data for c in chunks) == data
    assert len(chunks) == -(-len(data) // 4096) and all(len(c.data) <= 4096 for c in chunks)
    with rpc_error(CODE.NOT_FOUND, "BLOB_NOT_FOUND"):
        list(server.worker_stub().FetchBlob(worker_pb2.FetchBlobRequest(sha256="0" * 64), metadata=server.worker_metadata))
    with rpc_error(CODE.INVALID_ARGUMENT, "BAD_SHA256"):
        list(server.worker_stub().FetchBlob(worker_pb2.FetchBlobRequest(sha256="../../etc/passwd"), metadata=server.worker_metadata))


@pytest.mark.parametrize(
    "metadata, reason",
    [
        ((), "BAD_WORKER_TOKEN"),
        ((("authorization", "Bearer wrong-token"),), "BAD_WORKER_TOKEN"),
        ((("authorization", "test-worker-token"),), "BAD_WORKER_TOKEN"),  # no scheme
    ],
)
def test_worker_calls_without_the_token_are_refused(kernelscope_server, worker_stub, job, metadata, reason) -> None:
    model_sha = kernelscope_server.stub().GetModel(models_pb2.GetModelRequest(model_id=job.model_id)).sha256
    with rpc_error(CODE.UNAUTHENTICATED, reason):
        list(worker_stub.FetchBlob(worker_pb2.FetchBlobRequest(sha256=model_sha), metadata=metadata))
    with rpc_error(CODE.UNAUTHENTICATED, reason):
        worker_stub.WriteArtifact(artifact_messages(job.id, "tconv_stats/a.json", b"{}"), metadata=metadata)
    assert len(stored_files(kernelscope_server.config.data_dir)["blobs"]) == 1  # the model only


def test_an_unconfigured_token_refuses_every_worker_call(start_server) -> None:
    server = start_server(worker_token="")
    with rpc_error(CODE.UNAUTHENTICATED, "WORKER_TOKEN_NOT_CONFIGURED"):
        list(server.worker_stub().FetchBlob(worker_pb2.FetchBlobRequest(sha256="0" * 64), metadata=(("authorization", "Bearer "),)))


def test_write_artifact_records_it_for_the_job(kernelscope_server, kernelscope_stub, worker_stub, job) -> None:
    data = b'{"answer": 42}'
    artifact = worker_stub.WriteArtifact(
        artifact_messages(job.id, "tconv_stats/conv1/summary.json", data), metadata=kernelscope_server.worker_metadata
    )
    assert (artifact.name, artifact.task, artifact.media_type, artifact.size_bytes) == (
        "tconv_stats/conv1/summary.json", "tconv_stats", "application/json", len(data)
    )
    listed = kernelscope_stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert [(r.task, [a.name for a in r.artifacts]) for r in listed.results] == [("tconv_stats", [artifact.name])]
    read = kernelscope_stub.ReadArtifact(jobs_pb2.ReadArtifactRequest(job_id=job.id, name=artifact.name))
    assert b"".join(c.data for c in read) == data
    empty = worker_stub.WriteArtifact(artifact_messages(job.id, "tconv_stats/empty.txt", b""), metadata=kernelscope_server.worker_metadata)
    assert empty.size_bytes == 0 and empty.media_type == "text/plain"


@pytest.mark.parametrize(
    "name",
    ["../escape.png", "tconv_stats/../../escape.png", "/etc/passwd", "\\windows\\path", "tconv_stats\\a.png",
     "tconv_stats//a.png", "tconv_stats/./a.png", "tconv_stats/", "", "a" * 256, "tconv_stats/\x00.png"],
)
def test_write_artifact_refuses_names_outside_the_job(kernelscope_server, worker_stub, job, name) -> None:
    with rpc_error(CODE.INVALID_ARGUMENT, "BAD_ARTIFACT_NAME"):
        worker_stub.WriteArtifact(artifact_messages(job.id, name, b"data"), metadata=kernelscope_server.worker_metadata)
    files = stored_files(kernelscope_server.config.data_dir)
    assert len(files["blobs"]) == 1 and files["tmp"] == []  # the model only
    assert not any(p.name == "escape.png" for p in kernelscope_server.config.data_dir.parent.rglob("*"))


def test_write_artifact_checks_job_size_and_hash(start_server) -> None:
    server = start_server(max_artifact_bytes=1000)
    stub, worker = server.stub(), server.worker_stub()
    model = upload_model(stub, onnx_bytes())
    job = stub.CreateJob(jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name="tconv_stats")]))
    md = server.worker_metadata
    with rpc_error(CODE.NOT_FOUND, "JOB_NOT_FOUND"):
        worker.WriteArtifact(artifact_messages("job_nope", "tconv_stats/a.bin", b"x"), metadata=md)
    with rpc_error(CODE.RESOURCE_EXHAUSTED, "TOO_LARGE", contains="1000"):
        worker.WriteArtifact(artifact_messages(job.id, "tconv_stats/a.bin", bytes(2000)), metadata=md)
    with rpc_error(CODE.INVALID_ARGUMENT, "HASH_MISMATCH"):
        worker.WriteArtifact(artifact_messages(job.id, "tconv_stats/a.bin", b"x", digest="0" * 64), metadata=md)
    with rpc_error(CODE.INVALID_ARGUMENT, "SIZE_MISMATCH"):
        worker.WriteArtifact(artifact_messages(job.id, "tconv_stats/a.bin", bytes(100), size=50), metadata=md)
    files = stored_files(server.config.data_dir)
    assert [p.name for p in files["blobs"]] == [model.sha256] and files["tmp"] == []
    assert not stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)).results
