"""The RQ job entry point: `workers.job.run(spec)`, enqueued by dotted path by the service.

It runs in RQ's forked work-horse. It fetches the model (and dataset) through the blob cache, loads
the model under resource limits, runs each task through the registry, uploads each task's artifacts,
and returns a small JSON manifest. Errors a user caused are recorded in the manifest with their gRPC
code and reason (google.longrunning semantics: execution errors live inside the job); only a bug or a
crash of the horse itself makes the RQ job fail.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import shutil
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from workers import defaults
from workers.cache import BlobCache
from workers.connection import ServiceConnection
from workers.errors import TaskError, memory_error
from workers.progress import JobProgress

log = logging.getLogger(__name__)

MEDIA_TYPES = {
    ".png": "image/png",
    ".gif": "image/gif",
    ".json": "application/json",
    ".npz": "application/octet-stream",
    ".html": "text/html",
    ".csv": "text/csv",
    ".svg": "image/svg+xml",
}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run every task of the job described by `spec`; return the manifest the service reads."""
    import grpc
    import rq

    rq_job = rq.get_current_job()
    tasks = spec.get("tasks") or []
    progress = JobProgress(rq_job, len(tasks))
    manifest: dict[str, Any] = {"results": [], "error": None, "worker": socket.gethostname()}
    progress.report("loading model", 0.0)
    connection = ServiceConnection.from_settings()
    work_dir = Path(tempfile.mkdtemp(prefix=f"ks-{spec.get('job_id', 'job')}-"))
    try:
        try:
            model, dataset = _load_inputs(spec, connection)
        except TaskError as exc:
            manifest["error"] = exc.to_dict()
            return manifest
        except (MemoryError, RuntimeError) as exc:
            if (oom := memory_error(exc)) is None:
                raise
            manifest["error"] = oom.to_dict()
            return manifest
        except grpc.RpcError as exc:  # the blob vanished (model deleted after the job was queued) or the service is gone
            manifest["error"] = {
                "code": exc.code().name if exc.code() else "UNAVAILABLE",
                "reason": "INPUT_UNAVAILABLE",
                "message": f"could not fetch the job's model or dataset: {exc.details()}",
            }
            return manifest
        device = _device()
        for index, task in enumerate(tasks):
            progress.start_task(index, task["name"])
            out_dir = work_dir / f"task{index}"
            out_dir.mkdir()
            result = _run_task(task, model, dataset, device, out_dir, progress)
            result["artifacts"] = _upload(connection, spec["job_id"], task["name"], out_dir)
            manifest["results"].append(result)
            progress.report("done", 1.0)
        return manifest
    finally:
        connection.close()
        shutil.rmtree(work_dir, ignore_errors=True)


def _load_inputs(spec: dict[str, Any], connection: ServiceConnection) -> tuple[Any, Any]:
    from workers import limits, loader
    from workers.dataset import Dataset

    cache = BlobCache()
    model_spec = spec["model"]
    model_path = cache.fetch(model_spec["sha256"], connection)
    dataset = None
    if spec.get("dataset"):
        dataset = Dataset.from_npz(cache.fetch(spec["dataset"]["sha256"], connection).read_bytes())
    memory = int(os.environ.get("KERNELSCOPE_JOB_MEMORY_BYTES", defaults.JOB_MEMORY_BYTES))
    cpu = int(os.environ.get("KERNELSCOPE_JOB_CPU_SECONDS", defaults.JOB_CPU_SECONDS))
    limits.apply_limits(memory or None, cpu or None)  # 0 means no limit
    hidden = limits.scrub_environment()  # untrusted model code must not read the worker's secrets
    if hidden:
        log.info("hid %d secret environment variables from the model loader", len(hidden))
    model = loader.load_model(
        model_path,
        model_spec["format"],
        model_spec.get("input_spec") or {},
        architecture=model_spec.get("architecture", ""),
        name=model_spec.get("name", ""),
    )
    return model, dataset


def _device() -> Any:
    import torch

    wanted = os.environ.get("KERNELSCOPE_DEVICE", "auto")
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(wanted)


def _run_task(task: dict[str, Any], model: Any, dataset: Any, device: Any, out_dir: Path, progress: JobProgress) -> dict[str, Any]:
    from workers import tasks as registry
    from workers.context import TaskContext

    started = time.monotonic()
    result: dict[str, Any] = {"task": task["name"], "summary": None, "error": None}
    try:
        fn = registry.get(task["name"])
        ctx = TaskContext(
            model=model,
            options=task.get("options") or {},
            out_dir=out_dir,
            dataset=dataset,
            device=device,
            progress=progress.report,
        )
        result["summary"] = fn(ctx)
    except TaskError as exc:
        result["error"] = exc.to_dict()
    except Exception as exc:  # noqa: BLE001 - a bug in one task must not lose the others' results
        if (oom := memory_error(exc)) is not None:  # the model outgrew the job's memory limit: the tenant's doing
            result["error"] = oom.to_dict()
            result["duration_seconds"] = round(time.monotonic() - started, 3)
            return result
        log.error("task %s crashed:\n%s", task["name"], traceback.format_exc())
        result["error"] = {"code": "INTERNAL", "reason": "TASK_CRASHED", "message": f"{type(exc).__name__}: {exc}"}
    result["duration_seconds"] = round(time.monotonic() - started, 3)
    return result


def _upload(connection: ServiceConnection, job_id: str, task: str, out_dir: Path) -> list[dict[str, Any]]:
    artifacts = []
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        name = path.relative_to(out_dir).as_posix()
        media_type = MEDIA_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(name)[0] or "application/octet-stream"
        artifacts.append(connection.write_artifact(job_id, task, name, path, media_type))
    return artifacts
