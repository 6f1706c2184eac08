"""The server wires service/metrics.py in: KERNELSCOPE_METRICS_PORT serves /metrics, each stored upload (model,
dataset, artifact) is counted with its bytes, and each ended job is observed once however often it is read."""

from __future__ import annotations

from kernelscope.v1 import jobs_pb2, tasks_pb2

from deploy.stack import free_port
from tests.service.helpers import clips, npz_bytes, onnx_bytes, scrape, upload_dataset, upload_model


def test_uploads_and_ended_jobs_reach_the_metrics_endpoint(start_fake_server, run_jobs) -> None:
    port = free_port()
    server = start_fake_server(metrics_port=port)
    stub = server.stub()
    model_bytes, dataset_bytes = onnx_bytes(padding=500), npz_bytes(**clips())
    model = upload_model(stub, model_bytes)
    upload_model(stub, model_bytes)  # the same bytes again: still an upload received
    upload_dataset(stub, dataset_bytes)
    job = stub.CreateJob(jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name="tconv_stats")]))
    run_jobs()
    for _ in range(3):
        final = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert final.state == jobs_pb2.SUCCEEDED

    seen = scrape(port, timeout=5)
    kind = lambda k: frozenset({("kind", k)})  # noqa: E731
    assert seen[("kernelscope_uploads_total", kind("model"))] == 2
    assert seen[("kernelscope_upload_bytes_total", kind("model"))] == 2 * len(model_bytes)
    assert seen[("kernelscope_upload_bytes_total", kind("dataset"))] == len(dataset_bytes)
    artifact_bytes = sum(a.size_bytes for r in final.results for a in r.artifacts)
    assert seen[("kernelscope_uploads_total", kind("artifact"))] == 2 and artifact_bytes > 0
    assert seen[("kernelscope_upload_bytes_total", kind("artifact"))] == artifact_bytes
    succeeded = frozenset({("state", "succeeded")})
    assert seen[("kernelscope_job_duration_seconds_count", succeeded)] == 1
    assert 0 < seen[("kernelscope_job_duration_seconds_sum", succeeded)] < 60

