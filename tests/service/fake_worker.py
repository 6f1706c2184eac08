"""A torch-free stand-in for workers.job.run, enqueued by tests through config.job_function.

It behaves like the real worker at the service boundary: progress in job.meta, artifacts through
Worker.WriteArtifact, a JobManifest as the return value ("worker": "fake-worker@<RQ worker name>"), built and
read with the same code (kernelscope.contract, workers.job.task_result).
FAKE_WORKER_MODE picks the outcome for every job; a model named "fake:<mode>" picks it for its jobs
alone (the fault tests mix modes on one worker). "sleep=<s>" pauses that long, then succeeds; "until=<path>"
waits (at most UNTIL_LIMIT_S) for the file <path> to exist, then succeeds (a test kills the horse meanwhile).
"progress=<path>" reports progress through workers.progress.JobProgress (as real tasks do) every 20 ms
until the file <path> exists (at most PROGRESS_LIMIT_S), then succeeds. "summary_bytes=<n>" pads each task's summary with n bytes of JSON text.
FAKE_WORKER_SERVICE and FAKE_WORKER_TOKEN say where to write artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

from kernelscope import contract
from kernelscope.v1 import worker_pb2

from workers.job import task_result
from workers.progress import JobProgress

MODE_ENV = "FAKE_WORKER_MODE"
# What a server under test enqueues to run this fake (its KERNELSCOPE_JOB_FUNCTION).
JOB_FUNCTION = f"{__name__}.run"
SERVICE_ENV = "FAKE_WORKER_SERVICE"
TOKEN_ENV = "FAKE_WORKER_TOKEN"
PROGRESS_LIMIT_S = 120.0
UNTIL_LIMIT_S = 120.0

DESCRIPTION = {
    "input_spec": {"shape": [3, 4, 8, 8], "dtype": "float32", "value_min": 0.0, "value_max": 1.0, "mean": [], "std": []},
    "layers": [
        {"name": "conv1", "kind": "Conv3d", "kernel_shape": [8, 3, 3, 3, 3], "stride": [1, 1, 1],
         "receptive_field": [3, 3, 3], "output_shape": [8, 4, 8, 8], "parameters": 656},
        {"name": "fc", "kind": "Linear", "kernel_shape": [2, 8], "stride": None,
         "receptive_field": None, "output_shape": [2], "parameters": 18},
    ],
    "supported_tasks": ["describe", "tconv_stats", "kernel_viz"],
}


def _progress(job: Any, **progress: Any) -> None:
    JobProgress(job, int(progress["task_count"])).publish(progress)


def _write_artifact(job_id: str, task: str, name: str, data: bytes) -> None:
    import grpc
    from kernelscope.v1 import worker_pb2, worker_pb2_grpc

    header = worker_pb2.ArtifactHeader(
        job_id=job_id, name=name, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), task=task
    )
    with grpc.insecure_channel(os.environ[SERVICE_ENV]) as channel:
        deadline = time.monotonic() + 30
        while True:  # like the real worker, wait through a restarting service
            try:
                worker_pb2_grpc.WorkerStub(channel).WriteArtifact(
                    iter([worker_pb2.WriteArtifactRequest(header=header), worker_pb2.WriteArtifactRequest(chunk=data)]),
                    metadata=(("authorization", f"Bearer {os.environ[TOKEN_ENV]}"),),
                    timeout=10,
                )
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def run(raw_spec: dict[str, Any]) -> dict[str, Any]:
    """A JobSpec (as JSON) in, a JobManifest (as JSON) out, through kernelscope.contract as the real worker does
    (a job stopped at its timeout included)."""
    from rq.timeouts import JobTimeoutException

    try:
        return _run(raw_spec)
    except JobTimeoutException as exc:
        return contract.to_json(contract.timed_out(exc))


def _run(raw_spec: dict[str, Any]) -> dict[str, Any]:
    import rq

    job = rq.get_current_job()
    spec = contract.spec_from_json(raw_spec)
    mode = os.environ.get(MODE_ENV, "succeed")
    if spec.model.name.startswith("fake:"):
        mode = spec.model.name[len("fake:"):]
    tasks = list(spec.tasks)
    if mode == "raise":
        raise RuntimeError("the fake worker crashed on purpose")
    if mode == "sleep":
        time.sleep(5)
    if mode.startswith("progress="):
        reporter = JobProgress(job, len(tasks))
        reporter.start_task(0, tasks[0].name)
        deadline = time.monotonic() + PROGRESS_LIMIT_S
        while not os.path.exists(mode.split("=", 1)[1]) and time.monotonic() < deadline:
            reporter.report("progressing", 0.5 * (1 - (deadline - time.monotonic()) / PROGRESS_LIMIT_S))
            time.sleep(0.02)
    if mode.startswith("sleep="):
        _progress(job, stage="sleeping", fraction=0.1, task=tasks[0].name, task_index=0, task_count=len(tasks))
        time.sleep(float(mode.split("=", 1)[1]))
    if mode.startswith("until="):
        _progress(job, stage="waiting", fraction=0.1, task=tasks[0].name, task_index=0, task_count=len(tasks))
        deadline = time.monotonic() + UNTIL_LIMIT_S
        while not os.path.exists(mode.split("=", 1)[1]) and time.monotonic() < deadline:
            time.sleep(0.05)
    results = []
    for index, task in enumerate(tasks):
        name = task.name
        _progress(job, stage="working", fraction=(index + 0.5) / len(tasks), task=name, task_index=index,
                  task_count=len(tasks), message=f"half of {name}")
        time.sleep(0.3)  # long enough for a watcher polling every 20 ms to see it
        if name == "describe":
            if mode == "describe_fails":
                error = {"code": "FAILED_PRECONDITION", "reason": "MODEL_REJECTED", "message": "the fake model is hostile"}
                results.append({"task": name, "summary": None, "artifacts": [], "error": error, "duration_seconds": 0.3})
            else:
                results.append({"task": name, "summary": DESCRIPTION, "artifacts": [], "error": None, "duration_seconds": 0.3})
            continue
        if mode == "task_error" and index == 0:
            error = {"code": "FAILED_PRECONDITION", "reason": "UNKNOWN_LAYER", "message": "no layer named 'nope'"}
            results.append({"task": name, "summary": None, "artifacts": [], "error": error, "duration_seconds": 0.3})
            continue
        dataset = contract.to_json(spec.dataset) if spec.HasField("dataset") else None
        summary = {"task": name, "options": contract.task_options(task), "model": contract.to_json(spec.model), "dataset": dataset}
        if mode.startswith("summary_bytes="):
            summary["padding"] = "p" * int(mode.split("=", 1)[1])
        _write_artifact(spec.job_id, name, f"{name}/summary.json", json.dumps(summary).encode())
        _write_artifact(spec.job_id, name, f"{name}/big.bin", bytes(range(256)) * 12_000)
        if mode == "write_then_raise":
            raise RuntimeError("the fake worker crashed after writing artifacts")
        results.append({"task": name, "summary": summary, "artifacts": [], "error": None, "duration_seconds": 0.3})
    manifest = worker_pb2.JobManifest(results=[task_result(r, []) for r in results], worker=f"fake-worker@{job.worker_name or ''}")
    return contract.to_json(manifest)
