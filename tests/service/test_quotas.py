"""Storage quotas: per tenant and for the whole store, RESOURCE_EXHAUSTED with a reason, counted once per
distinct blob (a tenant's re-upload costs nothing; bytes two tenants hold are charged to each, stored once)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
from kernelscope.v1 import jobs_pb2, kernelscope_pb2_grpc, models_pb2, tasks_pb2, worker_pb2

from tests.service.helpers import (
    clips,
    model_messages,
    npz_bytes,
    onnx_bytes,
    rpc_error,
    sha256,
    stored_files,
    upload_dataset,
    with_token,
)

CODE = grpc.StatusCode


def stubs(server) -> tuple:
    return tuple(kernelscope_pb2_grpc.KernelScopeStub(with_token(server.channel(), f"token-{t}")) for t in "ab")


def test_a_tenant_quota_counts_each_distinct_blob_once_per_tenant(start_server) -> None:
    server = start_server(tokens="a=token-a,b=token-b", tenant_quota_bytes=10_000, store_quota_bytes=0)
    a, b = stubs(server)
    big, small = onnx_bytes(padding=6_000), onnx_bytes(padding=5_000)

    first = a.UploadModel(model_messages(big, name="first"), timeout=30)
    a.UploadModel(model_messages(big, name="same bytes, another name"), timeout=30)  # costs nothing more
    with rpc_error(CODE.RESOURCE_EXHAUSTED, "TENANT_QUOTA", contains=f"tenant 'a' holds {len(big)} bytes; {len(small)} more"):
        a.UploadModel(model_messages(small), timeout=30)
    with rpc_error(CODE.RESOURCE_EXHAUSTED, "TENANT_QUOTA", contains="quota of 10000 bytes"):
        upload_dataset(a, npz_bytes(**clips()))  # datasets count too
    assert [p.name for p in stored_files(server.config.data_dir)["blobs"]] == [sha256(big)]

    b.UploadModel(model_messages(big), timeout=30)  # b is charged for the bytes a holds too
    with rpc_error(CODE.RESOURCE_EXHAUSTED, "TENANT_QUOTA", contains=f"tenant 'b' holds {len(big)} bytes"):
        b.UploadModel(model_messages(small), timeout=30)

    for model in a.ListModels(models_pb2.ListModelsRequest(), timeout=30).models:
        a.DeleteModel(models_pb2.DeleteModelRequest(model_id=model.id), timeout=30)
    assert first.sha256 in {p.name for p in stored_files(server.config.data_dir)["blobs"]}  # b still uses it
    a.UploadModel(model_messages(small), timeout=30)  # a's room is back


def test_the_store_quota_counts_shared_bytes_once(start_server) -> None:
    server = start_server(tokens="a=token-a,b=token-b", tenant_quota_bytes=0, store_quota_bytes=10_000)
    a, b = stubs(server)
    big, small = onnx_bytes(padding=6_000), onnx_bytes(padding=5_000)
    a.UploadModel(model_messages(big), timeout=30)
    b.UploadModel(model_messages(big), timeout=30)  # already stored: the store holds it once
    with rpc_error(CODE.RESOURCE_EXHAUSTED, "STORE_QUOTA", contains=f"the service's store holds {len(big)} bytes"):
        b.UploadModel(model_messages(small), timeout=30)
    assert len(stored_files(server.config.data_dir)["blobs"]) == 1


def test_the_quota_holds_under_concurrent_uploads(start_server) -> None:
    server = start_server(tenant_quota_bytes=10_000)
    stub = server.stub()
    models = [onnx_bytes(padding=3_000 + i) for i in range(8)]  # 8 distinct blobs of ~3 KB: 3 fit

    def upload(data: bytes) -> bool:
        try:
            stub.UploadModel(model_messages(data), timeout=60)
            return True
        except grpc.RpcError as error:
            assert error.code() == CODE.RESOURCE_EXHAUSTED, error.details()
            return False

    with ThreadPoolExecutor(max_workers=8) as pool:
        stored = sum(pool.map(upload, models))
    assert stored == 3
    assert len(stored_files(server.config.data_dir)["blobs"]) == 3


def test_artifacts_count_toward_the_tenant_quota_and_are_refused_past_it(start_fake_server, run_jobs) -> None:
    """The fake worker writes a small summary.json and a 3,072,000-byte big.bin per task."""
    server = start_fake_server(tenant_quota_bytes=4_000_000)
    stub = server.stub()
    model = stub.UploadModel(model_messages(onnx_bytes()), timeout=30)
    request = jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name="tconv_stats")])
    first = stub.CreateJob(request, timeout=30)
    run_jobs()
    done = stub.WaitJob(jobs_pb2.WaitJobRequest(job_id=first.id), timeout=60)
    assert done.state == jobs_pb2.SUCCEEDED, done.error
    held = len(onnx_bytes()) + sum(a.size_bytes for r in done.results for a in r.artifacts)
    assert held > 3_072_000
    with rpc_error(CODE.RESOURCE_EXHAUSTED, "TENANT_QUOTA", contains=f"tenant 'default' holds {held} bytes"):
        stub.UploadModel(model_messages(onnx_bytes(padding=1_000_000)), timeout=30)

    # A job asking for more: its big.bin is the same bytes (free), its summary.json is new and fits.
    second = stub.CreateJob(jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name="kernel_viz")]), timeout=30)
    run_jobs()
    assert stub.WaitJob(jobs_pb2.WaitJobRequest(job_id=second.id), timeout=60).state == jobs_pb2.SUCCEEDED



def test_an_artifact_past_the_quota_is_refused_to_the_worker(start_server) -> None:
    server = start_server(tenant_quota_bytes=5_000)
    stub, worker = server.stub(), server.worker_stub()
    model = stub.UploadModel(model_messages(onnx_bytes()), timeout=30)
    job = stub.CreateJob(jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name="tconv_stats")]), timeout=30)

    def write(name: str, data: bytes) -> jobs_pb2.Artifact:
        header = worker_pb2.ArtifactHeader(job_id=job.id, name=name, size_bytes=len(data))
        messages = [worker_pb2.WriteArtifactRequest(header=header), worker_pb2.WriteArtifactRequest(chunk=data)]
        return worker.WriteArtifact(iter(messages), metadata=server.worker_metadata, timeout=30)

    write("t/a.bin", b"a" * 3_000)
    write("t/again.bin", b"a" * 3_000)  # the same bytes under another name: free
    with rpc_error(CODE.RESOURCE_EXHAUSTED, "TENANT_QUOTA", contains=f"holds {len(onnx_bytes()) + 3_000} bytes"):
        write("t/b.bin", b"b" * 3_000)
    assert len(stored_files(server.config.data_dir)["blobs"]) == 2


def test_the_worker_reports_an_artifact_past_the_quota_as_its_task_error(start_server, tmp_path) -> None:
    """workers.job's upload step against a real server: the refusal becomes the task's error, not a crashed job."""
    from workers.connection import ServiceConnection
    from workers.job import upload_results

    server = start_server(tenant_quota_bytes=5_000)
    stub = server.stub()
    model = stub.UploadModel(model_messages(onnx_bytes()), timeout=30)
    tasks = [tasks_pb2.Task(name="tconv_stats"), tasks_pb2.Task(name="kernel_viz")]
    job = stub.CreateJob(jobs_pb2.CreateJobRequest(model_id=model.id, tasks=tasks), timeout=30)
    scratch = tmp_path / "work" / "scratch"
    for index, fill in enumerate((b"a", b"b")):
        (scratch / f"task{index}").mkdir(parents=True)
        (scratch / f"task{index}" / "data.bin").write_bytes(fill * 3_000)
    results = {i: {"task": t.name, "summary": {}, "error": None} for i, t in enumerate(tasks)}

    connection = ServiceConnection(target=server.address, token=server.config.worker_token)
    try:
        done = upload_results(connection, job.id, tasks, results, scratch)
    finally:
        connection.close()
    assert not done[0].HasField("error") and [a.name for a in done[0].artifacts] == ["data.bin"]
    assert list(done[1].artifacts) == [] and done[1].error.code == "RESOURCE_EXHAUSTED"
    assert done[1].error.reason == "TENANT_QUOTA" and "quota of 5000 bytes" in done[1].error.message
