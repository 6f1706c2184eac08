"""The kernelscope client: upload models and datasets, run analyses, fetch results.

    client = sdk.Client()                         # KERNELSCOPE_TARGET, else 127.0.0.1:50051
    result = client.analyze("model.pt2", tasks=["tconv_stats", {"kernel_viz": {"steps": 64}}])
    result.download("out/")

Every call has a deadline; only UNAVAILABLE and the service's "too busy for this tenant" refusals
(RESOURCE_EXHAUSTED TOO_MANY_CALLS / TOO_MANY_STREAMS) are retried, with jittered backoff for up to
`retry_seconds`; CreateJob carries a request_id so that a retried submission never creates a second job.
"""

from __future__ import annotations

import io
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from google.protobuf import duration_pb2

from kernelscope import chunks, ids
from kernelscope.backoff import Backoff
from kernelscope.states import TERMINAL
from kernelscope.v1 import datasets_pb2, jobs_pb2, models_pb2
from sdk import model_source, tasks as task_specs
from sdk.errors import ApiError, DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable
from sdk.job import Job
from sdk.progress import UploadBar
from sdk.result import Result
from sdk.transport import GrpcTransport, Transport

DEFAULT_TARGET = "127.0.0.1:50051"
CALL_TIMEOUT_S = 30.0  # deadline of a unary call
UPLOAD_MIN_TIMEOUT_S = 60.0  # an upload's deadline: this plus size at UPLOAD_SLOWEST_BPS
UPLOAD_SLOWEST_BPS = 5e6
WAIT_SLICE_S = 30.0  # one WatchJob stream lasts at most this long before the client reconnects
RETRY_SECONDS = 60.0  # how long UNAVAILABLE (or a busy refusal) is retried before it is raised
# RESOURCE_EXHAUSTED reasons that mean "too many of this tenant's calls at once" (service/admission.py): they clear
# when another call ends, so they are waited out. Quotas (TENANT_QUOTA, STORE_QUOTA) and size limits never clear.
BUSY_REASONS = frozenset({"TOO_MANY_CALLS", "TOO_MANY_STREAMS"})
# A client that has never reached its service gives up this soon: nothing listening is a setup mistake to say at
# once, not an outage to ride out (a service that answered once is retried for retry_seconds).
FIRST_CONTACT_SECONDS = 5.0
# How long describe waits on DescribeModel (a cached or quick description) before it waits on a describe job instead.
DESCRIBE_QUICK_S = 10.0

T = TypeVar("T")


class Client:
    """Talks to one kernelscope service. `transport` replaces the network channel (tests, embedding)."""

    def __init__(
        self,
        target: str | None = None,
        token: str | None = None,
        *,
        transport: Transport | None = None,
        root_certificates: bytes | None = None,
        timeout: float = CALL_TIMEOUT_S,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.target = target or os.environ.get("KERNELSCOPE_TARGET") or DEFAULT_TARGET
        token = token if token is not None else os.environ.get("KERNELSCOPE_TOKEN")
        self._transport = transport or GrpcTransport(self.target, token, root_certificates)
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self._reached = False  # whether the service ever answered (anything but UNAVAILABLE)
        self._on_close: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def local(cls, workers: int = 1, **stack_options: Any) -> "Client":
        """Start the embedded stack (Redis, server, `workers` workers) for this process tree; close() stops it."""
        from deploy.stack import LocalStack

        stack = LocalStack(workers=workers, **stack_options)
        stack.start()
        client = cls(stack.target, token=stack.token or None)
        client._on_close.append(stack.stop)
        client.stack = stack  # type: ignore[attr-defined]
        return client

    def close(self) -> None:
        self._transport.close()
        while self._on_close:
            self._on_close.pop()()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ models
    def upload_model(self, model: Any, *, progress: bool | None = None, **options: Any) -> models_pb2.Model:
        """Upload a model (see sdk.model_source.prepare for what `model` may be); known bytes are not re-sent twice.

        `progress`: a bar of the bytes sent (None: only when stderr is a terminal).
        """
        source = model_source.prepare(model, **options)
        known = self._known_model(source.header())
        if known is not None:
            return known
        header = models_pb2.UploadModelRequest(header=source.header())
        return self._upload("UploadModel", header, source.chunks, source.size, source.name, progress)

    def _upload(
        self,
        method: str,
        header: Any,
        pieces: Callable[[], Iterable[bytes | memoryview]],
        size: int,
        name: str,
        progress: bool | None,
    ) -> Any:
        """Stream `header`, then `pieces()` as chunk requests of the header's type, through the transport's `method`.

        Retried on UNAVAILABLE (each attempt reads the pieces afresh and restarts the bar); the deadline grows
        with `size`.
        """
        bar = UploadBar(size, name, progress)
        timeout = UPLOAD_MIN_TIMEOUT_S + size / UPLOAD_SLOWEST_BPS
        try:
            return self._retry(lambda: self._transport.upload(method, header, bar.track(pieces()), timeout))
        finally:
            bar.close()

    def _known_model(self, header: models_pb2.ModelHeader) -> models_pb2.Model | None:
        """The record the service already holds for these bytes with exactly this metadata, else None.

        Ids hash the whole header (service/models.py), so another input spec, name or architecture is another
        record and its bytes are sent again; the fields are compared too, never trusted to the id alone.
        """
        from sdk.errors import NotFound

        try:
            model = self.get_model(model_id(header))
        except NotFound:
            return None
        same = (model.sha256, model.format, model.name, model.architecture, model.input_spec) == (
            header.sha256, header.format, header.name, header.architecture, header.input_spec
        )
        return model if same else None

    def get_model(self, model_id: str) -> models_pb2.Model:
        return self._unary("GetModel", models_pb2.GetModelRequest(model_id=model_id))

    def list_models(self, page_size: int = 50) -> list[models_pb2.Model]:
        return self._paged(lambda token: self._unary("ListModels", models_pb2.ListModelsRequest(page_size=page_size, page_token=token)), "models")

    def delete_model(self, model_id: str) -> None:
        self._unary("DeleteModel", models_pb2.DeleteModelRequest(model_id=model_id))

    def describe(
        self, model: Any, *, progress: bool | None = None, timeout: float | None = None, **options: Any
    ) -> models_pb2.ModelDescription:
        """The layer inventory of a model (an id, or anything upload_model takes).

        The service's cached description when it has one; a model that takes longer than DESCRIBE_QUICK_S to
        describe (a full-size network, a busy queue) is described by a job waited on as analyze waits
        (`progress`: a bar, None: only on a terminal; `timeout`: None waits as long as it runs), never cut off by a
        fixed deadline while a worker is busy with it.
        """
        model_id = self._model_id(model, progress=progress, **options)
        try:
            return self._unary("DescribeModel", models_pb2.DescribeModelRequest(model_id=model_id), timeout=DESCRIBE_QUICK_S)
        except DeadlineExceeded:
            pass
        job = self.create_job(model_id, ["describe"])
        summary = job.wait(timeout=timeout, progress=progress)["describe"]
        return _description(model_id, summary)

    # ------------------------------------------------------------------ datasets
    def upload_dataset(
        self,
        data: Any,
        y: Any = None,
        class_names: Iterable[str] | None = None,
        name: str = "dataset",
        *,
        progress: bool | None = None,
    ) -> datasets_pb2.Dataset:
        """Upload a labelled sample set: an .npz path or bytes (arrays x, y, optional class_names), or x and y arrays.

        `progress`: a bar of the bytes sent (None: only when stderr is a terminal).
        """
        if isinstance(data, (str, os.PathLike)):
            name, payload = Path(data).name, Path(data).read_bytes()
        elif isinstance(data, (bytes, bytearray)):
            payload = bytes(data)
        else:
            np = sys.modules.get("numpy")
            if np is None or y is None:
                raise TypeError("upload_dataset takes an .npz path, NPZ bytes, or numpy arrays x and y")
            buffer = io.BytesIO()
            arrays = {"x": np.asarray(data), "y": np.asarray(y)}
            if class_names is not None:
                arrays["class_names"] = np.asarray(list(class_names), dtype=str)
            np.savez(buffer, **arrays)
            payload = buffer.getvalue()
        import hashlib

        header = datasets_pb2.DatasetHeader(name=name, size_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())
        request = datasets_pb2.UploadDatasetRequest(header=header)
        return self._upload("UploadDataset", request, lambda: chunks.pieces(payload), len(payload), name, progress)

    def get_dataset(self, dataset_id: str) -> datasets_pb2.Dataset:
        return self._unary("GetDataset", datasets_pb2.GetDatasetRequest(dataset_id=dataset_id))

    def delete_dataset(self, dataset_id: str) -> None:
        self._unary("DeleteDataset", datasets_pb2.DeleteDatasetRequest(dataset_id=dataset_id))

    # ------------------------------------------------------------------ jobs
    def analyze(
        self,
        model: Any,
        tasks: Any = ("tconv_stats",),
        dataset: Any = None,
        *,
        wait: bool = True,
        progress: bool | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        raise_on_error: bool = True,
        **model_options: Any,
    ) -> Result | Job:
        """Upload `model` (and `dataset`), run `tasks`, and return the Result (or the Job when wait=False).

        `progress` shows bars for the uploads and the job (None: only when stderr is a terminal).

        model_options go to upload_model: example_input (torch modules), input_spec, format, name, architecture.
        """
        tasks = task_specs.to_tasks(tasks)  # a misspelled option is refused before anything is uploaded
        model_id = self._model_id(model, progress=progress, **model_options)
        dataset_id = ""
        if dataset is not None:
            if isinstance(dataset, str) and ids.is_dataset_id(dataset):
                dataset_id = dataset
            elif isinstance(dataset, tuple):
                dataset_id = self.upload_dataset(*dataset, progress=progress).id
            else:
                dataset_id = self.upload_dataset(dataset, progress=progress).id
        job = self.create_job(model_id, tasks, dataset_id=dataset_id, request_id=request_id)
        if not wait:
            return job
        return job.wait(timeout=timeout, progress=progress, raise_on_error=raise_on_error)

    def create_job(self, model_id: str, tasks: Any, dataset_id: str = "", request_id: str | None = None) -> Job:
        request = jobs_pb2.CreateJobRequest(
            model_id=model_id,
            dataset_id=dataset_id or "",
            tasks=task_specs.to_tasks(tasks),
            request_id=request_id or uuid.uuid4().hex,
        )
        return Job(self._unary("CreateJob", request), self)

    def get_job(self, job_id: str) -> Job:
        return Job(self._unary("GetJob", jobs_pb2.GetJobRequest(job_id=job_id)), self)

    def list_jobs(self, state: str | None = None, page_size: int = 50) -> list[Job]:
        state_value = jobs_pb2.JobState.Value(state.upper()) if state else 0
        protos = self._paged(
            lambda token: self._unary("ListJobs", jobs_pb2.ListJobsRequest(page_size=page_size, page_token=token, state=state_value)),
            "jobs",
        )
        return [Job(p, self) for p in protos]

    def cancel_job(self, job_id: str) -> Job:
        return Job(self._unary("CancelJob", jobs_pb2.CancelJobRequest(job_id=job_id)), self)

    def delete_job(self, job_id: str) -> None:
        self._unary("DeleteJob", jobs_pb2.DeleteJobRequest(job_id=job_id))

    def wait_job(self, job_id: str, timeout: float = WAIT_SLICE_S) -> jobs_pb2.Job:
        """One WaitJob call: the job when it ends or after `timeout` seconds, whichever is first."""
        request = jobs_pb2.WaitJobRequest(job_id=job_id, timeout=duration_pb2.Duration(seconds=int(timeout)))
        return self._unary("WaitJob", request, timeout=timeout + self.timeout)

    def watch_job(self, job_id: str, deadline: float | None = None) -> Iterator[jobs_pb2.Job]:
        """Yield the job at each change until it ends; reconnects across stream time-outs, and across UNAVAILABLE
        and busy refusals (see BUSY_REASONS) with jittered backoff for up to retry_seconds. While the stream is
        refused as busy the job is polled (GetJob, at most every 2 s), so a wait outlasts a busy tenant's long jobs."""
        backoff = Backoff(self.retry_seconds)
        last: jobs_pb2.Job | None = None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded(f"job {job_id} did not finish in time")
            slice_s = WAIT_SLICE_S if remaining is None else min(WAIT_SLICE_S, remaining)
            stream = self._transport.stream("WatchJob", jobs_pb2.WatchJobRequest(job_id=job_id), slice_s)
            try:
                for job in stream:
                    backoff.reset()
                    last = job
                    yield job
                    if job.state in TERMINAL:
                        return
            except DeadlineExceeded:
                continue
            except ApiError as exc:
                if not _transient(exc) or not backoff.sleep():
                    raise
                if isinstance(exc, ResourceExhausted):
                    # Busy, not down: the tenant's streams may stay taken for as long as its jobs run (the local
                    # stack runs everyone as one tenant), so poll the job meanwhile; an answer renews the budget.
                    polled = self._unary("GetJob", jobs_pb2.GetJobRequest(job_id=job_id))
                    backoff.answered()
                    if polled != last:
                        last = polled
                        yield polled
                    if polled.state in TERMINAL:
                        return
            finally:
                stream.close()  # left early (Ctrl-C in the caller, a closed generator): the transport ends the call now

    # ------------------------------------------------------------------ artifacts
    def read_artifact(self, job_id: str, name: str) -> bytes:
        request = jobs_pb2.ReadArtifactRequest(job_id=job_id, name=name)
        return self._retry(lambda: b"".join(c.data for c in self._transport.stream("ReadArtifact", request, UPLOAD_MIN_TIMEOUT_S * 5)))

    def download_artifact(self, job_id: str, name: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(self.read_artifact(job_id, name))
        os.replace(tmp, dest)
        return dest

    def result(self, job_id: str) -> Result:
        return Result(self.get_job(job_id).proto, self)

    # ------------------------------------------------------------------ plumbing
    def _model_id(self, model: Any, **options: Any) -> str:
        if isinstance(model, models_pb2.Model) or (isinstance(model, str) and ids.is_model_id(model) and not os.path.exists(model)):
            ident = model.id if isinstance(model, models_pb2.Model) else model
            given = sorted(k for k in ("input_spec", "name", "architecture", "format", "example_input") if options.get(k))
            if given:  # a record's metadata is fixed: these would be silently ignored
                raise InvalidArgument(
                    f"{', '.join(given)} cannot change model {ident}: a model record never changes; upload the file "
                    "again with them (a new record over the same bytes)", reason="MODEL_ID_WITH_OPTIONS",
                )
            return ident
        return self.upload_model(model, **options).id

    def _unary(self, method: str, request: Any, timeout: float | None = None) -> Any:
        return self._retry(lambda: self._transport.unary(method, request, timeout or self.timeout))

    def _retry(self, call: Callable[[], T]) -> T:
        """Run `call`, retrying UNAVAILABLE and busy refusals (BUSY_REASONS) with kernelscope.backoff's pauses for
        up to retry_seconds (FIRST_CONTACT_SECONDS while the service has never answered: then the error says how to
        start one)."""
        backoff = Backoff(self.retry_seconds)
        while True:
            try:
                value = call()
                self._reached = True
                return value
            except ApiError as exc:
                unavailable = isinstance(exc, Unavailable)
                if not unavailable:
                    self._reached = True  # it answered, if only to say it is busy
                if not _transient(exc):
                    raise
                if unavailable and not self._reached and backoff.waited() > min(FIRST_CONTACT_SECONDS, self.retry_seconds):
                    raise self._no_service(exc) from None
                if not backoff.sleep():
                    raise

    def _no_service(self, exc: Unavailable) -> Unavailable:
        """The first contact failed: say where we looked and the three ways to have a service."""
        detail = exc.message or "no answer"
        return Unavailable(
            f"no kernelscope service answers at {self.target} ({detail.splitlines()[0][:160]}); start one with "
            "`kernelscope up` (or set KERNELSCOPE_TARGET / --target), or run without one: `--local` on the command "
            "line, `sdk.Client.local()` in Python",
            reason="NO_SERVICE",
        )

    @staticmethod
    def _paged(fetch: Callable[[str], Any], field: str) -> list[Any]:
        items, token = [], ""
        while True:
            page = fetch(token)
            items.extend(getattr(page, field))
            token = page.next_page_token
            if not token:
                return items


__all__ = ["Client", "Unavailable", "model_id"]


def _transient(exc: ApiError) -> bool:
    """Whether waiting may clear this error: the service unreachable, or this tenant over its call caps."""
    return isinstance(exc, Unavailable) or (isinstance(exc, ResourceExhausted) and exc.reason in BUSY_REASONS)


model_id = ids.model_id  # the id the service gives an upload with this header


def _description(model_id: str, summary: dict[str, Any]) -> models_pb2.ModelDescription:
    """A describe task's summary as the ModelDescription DescribeModel returns."""
    from google.protobuf import json_format

    from kernelscope.v1 import common_pb2

    description = models_pb2.ModelDescription(model_id=model_id)
    spec = summary.get("input_spec") or {}
    fields = common_pb2.InputSpec.DESCRIPTOR.fields_by_name
    json_format.ParseDict({k: v for k, v in spec.items() if v is not None and k in fields}, description.input_spec)
    layer_fields = models_pb2.Layer.DESCRIPTOR.fields_by_name
    for raw in summary.get("layers") or []:
        description.layers.add(**{k: v for k, v in raw.items() if v is not None and k in layer_fields})
    description.supported_tasks.extend(str(t) for t in summary.get("supported_tasks") or [])
    return description
