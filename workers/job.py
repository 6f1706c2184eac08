"""The RQ job entry point: `workers.job.run(spec)`, enqueued by dotted path by the service.

It runs in RQ's forked work-horse. The horse fetches the model (and dataset) through the blob cache
(verified against their hashes), then forks a sandboxed model process (workers/sandbox.py: no secrets, no
network, only its scratch directory writable, resource limits) which loads the model, runs each task
through `perform` (its Analysis, found by workers.tasks) and sends the results back over a pipe; the horse,
which alone holds the worker token, uploads each task's artifacts and returns a JobManifest (worker.proto,
as JSON through kernelscope.contract, with a `sandbox` field naming the layers that were active) for the
JobSpec it was given. Errors a user caused, and a job stopped at its timeout, are recorded in the manifest
with their gRPC code and reason (google.longrunning semantics: execution errors live inside the job); only
a bug or a crash of the horse itself makes the RQ job fail.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import mimetypes
import os
import shutil
import socket
import stat
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from kernelscope import contract
from kernelscope.v1 import jobs_pb2, tasks_pb2, worker_pb2

from workers import defaults
from workers.cache import BlobCache
from workers.connection import ServiceConnection
from workers.errors import DatasetUnusable, TaskError, memory_error
from workers.progress import JobProgress, PipeProgress

if TYPE_CHECKING:
    from workers.context import TaskContext

log = logging.getLogger(__name__)

# Status codes (by name) of an artifact upload the service refused for the job's own doing.
_REFUSALS = ("RESOURCE_EXHAUSTED", "INVALID_ARGUMENT", "FAILED_PRECONDITION")

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
    """Run every task of the job described by `spec` (a JobSpec as JSON); return its JobManifest as JSON.

    A job RQ stops at its timeout returns a manifest that says so (kernelscope.contract.timed_out): the
    sandbox has killed the model process by then, and nothing is uploaded.
    """
    from rq.timeouts import JobTimeoutException

    try:
        return _run(spec)
    except JobTimeoutException as exc:
        return contract.to_json(contract.timed_out(exc))


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    """The job, to its manifest. The horse (this process) keeps the service connection and the worker token;
    the model is loaded and the tasks run in a sandboxed model process (workers/sandbox.py), which hands back
    summaries and progress over a pipe and leaves its artifacts in its scratch directory for the horse to upload
    once it has exited.
    """
    import grpc
    import rq

    from workers import sandbox

    rq_job = rq.get_current_job()
    job = contract.spec_from_json(spec)
    tasks = list(job.tasks)
    progress = JobProgress(rq_job, len(tasks))
    manifest = worker_pb2.JobManifest(worker=socket.gethostname())
    progress.report("loading model", 0.0)
    work_dir = Path(tempfile.mkdtemp(prefix=f"ks-{job.job_id or 'job'}-"))
    try:
        connection = ServiceConnection.from_settings()
        try:
            inputs = _fetch_inputs(job, connection)
        except grpc.RpcError as exc:  # the blob vanished (model deleted after the job was queued) or the service is gone
            code = exc.code().name if exc.code() else "UNAVAILABLE"
            manifest.error.CopyFrom(contract.error(code, "INPUT_UNAVAILABLE", f"could not fetch the job's model or dataset: {exc.details()}"))
            return contract.to_json(manifest)
        finally:
            connection.close()  # no gRPC channel across the fork; uploads open a fresh one
        scratch = work_dir / "scratch"
        scratch.mkdir(mode=0o700)
        memory = int(os.environ.get("KERNELSCOPE_JOB_MEMORY_BYTES", defaults.JOB_MEMORY_BYTES))
        cpu = int(os.environ.get("KERNELSCOPE_JOB_CPU_SECONDS", defaults.JOB_CPU_SECONDS))
        policy = sandbox.Policy(scratch=scratch, inputs=[p for p in inputs if p is not None], memory_bytes=memory or None,
                                cpu_seconds=cpu or None, private=[BlobCache().root])
        state: dict[str, Any] = {"loaded": False, "index": 0, "results": {}}

        def on_message(message: dict[str, Any]) -> None:
            kind = message.get("kind")
            if kind == "progress" and isinstance(message.get("progress"), dict):
                progress.publish(message["progress"])
                state["index"] = int(message["progress"].get("task_index") or 0)
            elif kind == "layers":
                manifest.sandbox.CopyFrom(worker_pb2.SandboxLayers(**message["layers"]))
            elif kind == "loaded":
                state["loaded"] = True
            elif kind == "task" and isinstance(message.get("result"), dict):
                index = int(message.get("index", -1))
                if 0 <= index < len(tasks):
                    state["results"][index] = _clean_result(message["result"], tasks[index].name)

        try:
            sandbox.run_in_sandbox(lambda channel: _model_process(job, inputs, scratch, channel), policy, on_message)
        except TaskError as exc:
            if not state["loaded"]:
                manifest.error.CopyFrom(contract.error(**exc.to_dict()))
            else:  # the process died in a task: that task carries the error, the ones after it did not run
                for index in range(len(state["results"]), len(tasks)):
                    error = exc.to_dict() if index == state["index"] else {
                        "code": "ABORTED", "reason": "NOT_RUN", "message": f"not run: the model process died in task {tasks[state['index']].name}"}
                    state["results"][index] = {"task": tasks[index].name, "summary": None, "error": error}
        except sandbox.ModelProcessCrash as exc:  # a bug outside the tasks (in the loader): the RQ job fails, as before
            log.error("the model process crashed:\n%s", exc.trace)
            raise RuntimeError(f"the model process crashed: {exc}") from None
        if state["results"]:
            connection = ServiceConnection.from_settings()
            try:
                manifest.results.extend(upload_results(connection, job.job_id, tasks, state["results"], scratch))
            finally:
                connection.close()
        progress.report("done", 1.0)
        return contract.to_json(manifest)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _fetch_inputs(job: worker_pb2.JobSpec, connection: ServiceConnection) -> tuple[Path, Path | None]:
    """The model and dataset files, fetched or reused from the cache and verified against their hashes."""
    cache = BlobCache()
    model_path = cache.fetch(job.model.sha256, connection)
    dataset_path = cache.fetch(job.dataset.sha256, connection) if job.HasField("dataset") else None
    return model_path, dataset_path


def _clean_result(raw: dict[str, Any], name: str) -> dict[str, Any]:
    """A task result from the model process, reduced to the fields the manifest has (it is the tenant's data)."""
    result: dict[str, Any] = {"task": name, "summary": raw.get("summary"), "error": raw.get("error")}
    if isinstance(raw.get("duration_seconds"), (int, float)):
        result["duration_seconds"] = raw["duration_seconds"]
    return result


def _model_process(job: worker_pb2.JobSpec, inputs: tuple[Path, Path | None], scratch: Path, channel: Any) -> None:
    """Inside the sandbox: load the model (and dataset), run every task, send each result to the horse."""
    from kernelscope.v1 import models_pb2
    from workers import loader
    from workers.dataset import Dataset

    tasks = list(job.tasks)
    model_path, dataset_path = inputs
    progress = PipeProgress(channel, len(tasks))
    progress.report("loading model", 0.0)
    device = _device()
    model = loader.load_model(
        model_path,
        models_pb2.ModelFormat.Name(job.model.format),
        contract.input_spec_dict(job.model.input_spec),
        architecture=job.model.architecture,
        name=job.model.name,
        device=device,
    )
    dataset = Dataset.from_npz(dataset_path.read_bytes()) if dataset_path is not None else None
    channel.send("loaded")
    for index, task in enumerate(tasks):
        progress.start_task(index, task.name)
        out_dir = scratch / f"task{index}"
        out_dir.mkdir()
        result = _run_task(task, model, dataset, device, out_dir, progress)
        channel.send("task", index=index, result=result)


def _device() -> Any:
    import torch

    wanted = os.environ.get("KERNELSCOPE_DEVICE", "auto")
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(wanted)


def _run_task(task: tasks_pb2.Task, model: Any, dataset: Any, device: Any, out_dir: Path, progress: JobProgress) -> dict[str, Any]:
    from workers.context import TaskContext

    started = time.monotonic()
    result: dict[str, Any] = {"task": task.name, "summary": None, "error": None}
    try:
        ctx = TaskContext(model=model, out_dir=out_dir, dataset=dataset, device=device, progress=progress.report)
        result["summary"] = perform(task.name, ctx, contract.task_options(task))
    except TaskError as exc:
        result["error"] = exc.to_dict()
    except Exception as exc:  # noqa: BLE001 - a bug in one task must not lose the others' results
        if (oom := memory_error(exc)) is not None:  # the model outgrew the job's memory limit: the tenant's doing
            result["error"] = oom.to_dict()
            result["duration_seconds"] = round(time.monotonic() - started, 3)
            return result
        log.error("task %s crashed:\n%s", task.name, traceback.format_exc())
        result["error"] = {"code": "INTERNAL", "reason": "TASK_CRASHED", "message": f"{type(exc).__name__}: {exc}"}
    result["duration_seconds"] = round(time.monotonic() - started, 3)
    return result


def perform(name: str, ctx: TaskContext, options: Mapping[str, Any]) -> dict[str, Any]:
    """Run task `name` on ctx and return its summary: the one place that reads a task's options (its TaskOptions),
    checks what the catalogue says it needs (a runnable module, a dataset), hands it its own directory
    ctx.out_dir/<name> for its files, and writes an analysis's summary there as <name>.json."""
    from workers import tasks

    analysis = tasks.get(name)
    typed = analysis.options.from_dict(options)
    entry = analysis.entry
    if entry.needs_module:
        ctx.model.require_module(name)
    if entry.needs_dataset and ctx.dataset is None:
        raise DatasetUnusable(f"{name} needs a labelled dataset (arrays x and y); attach one to the job", reason="DATASET_REQUIRED")
    files = ctx.out_dir / name
    if entry.analysis:  # describe writes no files: its summary is the model's description
        files.mkdir(parents=True, exist_ok=True)
    outcome = analysis.run(dataclasses.replace(ctx, out_dir=files), typed)
    if entry.analysis:
        (files / f"{name}.json").write_text(json.dumps(outcome.summary, **analysis.summary_json))
    return outcome.summary


def upload_results(
    connection: ServiceConnection, job_id: str, tasks: list[tasks_pb2.Task], results: dict[int, dict[str, Any]], scratch: Path
) -> list[jobs_pb2.TaskResult]:
    """The results in task order as the manifest's TaskResults, each with the artifacts uploaded from
    scratch/task{index}.

    An upload the service refuses for what the job asked of it (the tenant's storage quota, the artifact
    count or size limits) becomes that task's error with the service's code and reason, not a crash of
    the job; the artifacts stored before it stay listed with the job.
    """
    import grpc

    done = []
    for index in sorted(results):
        result = results[index]
        try:
            artifacts = _upload(connection, job_id, tasks[index].name, scratch / f"task{index}")
        except grpc.RpcError as exc:
            code = getattr(exc.code(), "name", "")
            if code not in _REFUSALS:
                raise
            reason = dict(exc.trailing_metadata() or ()).get(contract.REASON_METADATA_KEY) or "ARTIFACT_REFUSED"
            artifacts = []
            result["error"] = result.get("error") or {
                "code": code, "reason": reason, "message": f"the service refused an artifact: {exc.details()}"
            }
        done.append(task_result(result, artifacts))
    return done


def task_result(result: dict[str, Any], artifacts: list[dict[str, Any]]) -> jobs_pb2.TaskResult:
    """A result from the model process (plain JSON data) as the manifest's TaskResult."""
    out = jobs_pb2.TaskResult(task=str(result["task"]), artifacts=[jobs_pb2.Artifact(**a) for a in artifacts])
    if result.get("summary") is not None:
        out.summary_json = json.dumps(result["summary"])
    if isinstance(result.get("duration_seconds"), (int, float)):
        out.duration_seconds = float(result["duration_seconds"])
    error = result.get("error")
    if error:
        raw = error if isinstance(error, dict) else {"message": str(error)}
        out.error.CopyFrom(contract.error(str(raw.get("code") or ""), str(raw.get("reason") or ""), str(raw.get("message") or "")))
    return out


def _upload(connection: ServiceConnection, job_id: str, task: str, out_dir: Path) -> list[dict[str, Any]]:
    """Upload the regular files under out_dir. The model process wrote them: no symbolic link is followed, and each
    file is read through a descriptor opened without following one, into a copy only the horse can write."""
    artifacts: list[dict[str, Any]] = []
    if out_dir.is_symlink() or not out_dir.is_dir():
        return artifacts
    private = Path(tempfile.mkdtemp(prefix="upload-", dir=out_dir.parent.parent))  # beside scratch, not in it
    files = []
    for root, _dirs, names in os.walk(out_dir, followlinks=False):
        files += [Path(root) / n for n in names]
    for number, path in enumerate(sorted(files)):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # a link, or gone
        with os.fdopen(fd, "rb") as src:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                continue
            copy = private / str(number)
            with open(copy, "wb") as dst:
                shutil.copyfileobj(src, dst)
        name = path.relative_to(out_dir).as_posix()
        media_type = MEDIA_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(name)[0] or "application/octet-stream"
        artifacts.append(connection.write_artifact(job_id, task, name, copy, media_type))
    return artifacts
