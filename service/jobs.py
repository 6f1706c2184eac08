"""Jobs over RQ: validate and enqueue, read state back from RQ, wait, watch, cancel, delete, describe.

RQ holds the queue and the live state (status, progress in job.meta, the worker's manifest as the
return value). The service keeps its own record per job (request, tenant, times, cancel flag and,
once the job ended, its outcome) so that a job stays readable after RQ's data expires. The job
function is enqueued by dotted path (config.job_function): the service never imports the worker.
The record is service/job_record.py; how RQ's state and the worker's manifest become a Job is
service/job_state.py.

Each tenant may have at most config.max_jobs_in_flight jobs queued or running (service/inflight.py): a slot
is claimed at creation and released when the service first sees the job ended, or when it is deleted.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Iterator

import grpc
import redis
from google.protobuf import json_format, timestamp_pb2
from kernelscope import contract, ids
from kernelscope.states import CANCEL_FIELD, TERMINAL
from kernelscope.v1 import common_pb2, datasets_pb2, jobs_pb2, models_pb2, tasks_pb2, worker_pb2
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from service import datasets, errors, job_state, models, tasks
from service.reaper import HORSE_KILLS_META, NOTES_META, requeue_killed_horse
from service.artifacts import ArtifactLog
from service.blobstore import StagedBlob
from service.config import Config
from service.inflight import InflightSlots
from service.job_record import JobRecord
from service.registry import Index, Keys, Registry, page_size

log = logging.getLogger(__name__)

_WAITING = frozenset({
    JobStatus.CREATED, JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED,
    JobStatus.READY_TO_ENQUEUE, JobStatus.RATE_LIMITED,
})
_CANCELLED = frozenset({JobStatus.CANCELED, JobStatus.STOPPED})
_MAX_TASKS = 32
_MAX_REQUEST_ID = 128
# Records ListJobs reads per call at most while filtering by state; it then returns a partial page.
_MAX_SCAN = 2000
# Bytes of Jobs one ListJobs page holds at most; the page ends early (with a token) rather than grow past it.
_PAGE_BYTES = 4 * 1024 * 1024
# A Job bigger than this (only records written before the bounds above can be) is shown as a stub saying so.
_MAX_JOB_BYTES = 12 * 1024 * 1024
# Seconds a repeated request_id waits for the first request to finish creating its job.
_REQUEST_RACE_SECONDS = 5.0
IsActive = Callable[[], bool]


class JobManager:
    """Every job operation of the API, for one tenant. `on_end(seconds, state)` hears of each ended job once."""

    def __init__(
        self,
        conn: redis.Redis,
        config: Config,
        registry: Registry,
        artifacts: ArtifactLog,
        on_end: Callable[[float, str], None] | None = None,
    ) -> None:
        self.conn = conn
        self.config = config
        self.registry = registry
        self.artifacts = artifacts
        self.on_end = on_end
        self.keys: Keys = registry.keys
        self.index = Index(conn, self.keys.index("job"))
        self.queue = Queue(config.queue_name, connection=conn, serializer=JSONSerializer)
        self.slots = InflightSlots(conn, self.keys, config.max_jobs_in_flight)

    # --- create -----------------------------------------------------------------------------

    def create(self, request: jobs_pb2.CreateJobRequest) -> jobs_pb2.Job:
        """Validate and enqueue; errors that prevent starting come back here, never inside a job."""
        model, dataset, job_tasks = self._validate(request)
        rid = request.request_id
        for _ in range(3):
            job_id = ids.new_job_id()
            if rid and not self.conn.set(self.keys.request(rid), job_id, nx=True, ex=self.config.request_id_ttl):
                existing = self.conn.get(self.keys.request(rid))
                if existing is None:
                    continue  # expired in between: claim it again
                return self.view(self._await_record(existing.decode()))
            try:
                record = self._enqueue(job_id, model, dataset, job_tasks, request_id=rid, internal=False)
            except BaseException:
                if rid:
                    self._forget_request(rid, job_id)
                raise
            return self.view(record)
        raise errors.unavailable("REQUEST_ID_RACE", f"request_id {rid!r} kept changing hands; retry")

    def _validate(
        self, request: jobs_pb2.CreateJobRequest
    ) -> tuple[models_pb2.Model, datasets_pb2.Dataset | None, list[tasks_pb2.Task]]:
        if len(request.request_id) > _MAX_REQUEST_ID or not request.request_id.isprintable():
            raise errors.invalid_argument(
                "BAD_REQUEST_ID", f"request_id must be printable and at most {_MAX_REQUEST_ID} characters"
            )
        model = self.registry.models.get(request.model_id)
        dataset = self.registry.datasets.get(request.dataset_id) if request.dataset_id else None
        valid = ", ".join(tasks.TASK_NAMES)
        if not request.tasks:
            raise errors.invalid_argument("NO_TASKS", f"a job needs at least one task; valid tasks: {valid}")
        if len(request.tasks) > _MAX_TASKS:
            raise errors.invalid_argument("TOO_MANY_TASKS", f"a job may hold at most {_MAX_TASKS} tasks")
        job_tasks = [tasks.normalize(t, i) for i, t in enumerate(request.tasks)]
        for task in job_tasks:
            if task.name in tasks.NEEDS_DATASET and dataset is None:
                raise errors.invalid_argument(
                    "DATASET_REQUIRED", f"task {task.name!r} needs a labelled dataset: upload one and pass its dataset_id"
                )
            if task.name in tasks.NEEDS_RUNNABLE_MODEL and not models.is_runnable(model):
                raise errors.failed_precondition(
                    "NEEDS_RUNNABLE_MODEL",
                    f"task {task.name!r} needs activations, but model {model.id} is a "
                    f"{models_pb2.ModelFormat.Name(model.format)} file without an architecture; upload a "
                    "torch.export (.pt2) or ONNX file of the same model, or name its registered architecture",
                )
        if dataset is not None:
            datasets.check_fits_model(dataset.sample_shape, model.input_spec.shape)
        return model, dataset, job_tasks

    def _enqueue(
        self,
        job_id: str,
        model: models_pb2.Model,
        dataset: datasets_pb2.Dataset | None,
        job_tasks: list[tasks_pb2.Task],
        *,
        request_id: str,
        internal: bool,
    ) -> JobRecord:
        """Write the record and enqueue the RQ job in one transaction, so neither exists without the other."""
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        record = JobRecord(
            id=job_id,
            tenant=self.keys.tenant,
            model_id=model.id,
            dataset_id=dataset.id if dataset else "",
            tasks=[json_format.MessageToDict(t, preserving_proto_field_name=True) for t in job_tasks],
            request_id=request_id,
            create_time=now.ToJsonString(),
            internal=internal,
            model_name=model.name,
            input_spec=json_format.MessageToDict(model.input_spec, preserving_proto_field_name=True),
            architecture=model.architecture,
            warnings=job_warnings(model, job_tasks),
        )
        names = ", ".join(t.name for t in job_tasks)
        # Public jobs live until DeleteJob; DescribeModel's internal ones expire (their result is cached).
        ttl = self.config.internal_job_ttl if internal else None
        self.slots.claim(job_id)
        try:
            self._write(record, model, dataset, job_tasks, names, ttl)
        except BaseException:
            self.slots.release(job_id)
            raise
        return record

    def _write(
        self,
        record: JobRecord,
        model: models_pb2.Model,
        dataset: datasets_pb2.Dataset | None,
        job_tasks: list[tasks_pb2.Task],
        names: str,
        ttl: int | None,
    ) -> None:
        job_id, internal = record.id, record.internal
        with self.conn.pipeline(transaction=True) as pipe:
            self.queue.enqueue(
                self.config.job_function,
                job_spec(job_id, model, dataset, job_tasks),
                job_id=job_id,
                job_timeout=self.config.job_timeout,
                result_ttl=ttl or -1,
                failure_ttl=min(self.config.failure_ttl, ttl or self.config.failure_ttl),
                description=f"kernelscope {names} on {model.id}",
                pipeline=pipe,
            )
            pipe.set(self.keys.record("job", job_id), record.dumps(), ex=ttl)
            pipe.set(Keys.job_owner(job_id), self.keys.tenant, ex=ttl)
            if not internal:
                self.index.add(record.index_member, pipe)
                if self.config.job_ttl > 0:  # service/retention.py looks at it then, and again once it ended
                    pipe.zadd(Keys.RETENTION, {job_id: time.time() + self.config.job_ttl})
            pipe.execute()

    def _await_record(self, job_id: str) -> JobRecord:
        """The record a concurrent first request with the same request_id is writing."""
        deadline = time.monotonic() + _REQUEST_RACE_SECONDS
        while True:
            record = self._find(job_id)
            if record is not None:
                return record
            if time.monotonic() >= deadline:
                raise errors.unavailable(
                    "REQUEST_IN_PROGRESS", "a request with this request_id is still being processed; retry"
                )
            time.sleep(0.01)

    def _forget_request(self, request_id: str, job_id: str) -> None:
        try:
            key = self.keys.request(request_id)
            if self.conn.get(key) == job_id.encode():
                self.conn.delete(key)
        except redis.RedisError:
            pass

    # --- read -------------------------------------------------------------------------------

    def _find(self, job_id: str) -> JobRecord | None:
        raw = self.conn.get(self.keys.record("job", job_id)) if job_id else None
        return JobRecord.loads(raw) if raw else None

    def _readable(self, job_id: str, raw: bytes) -> jobs_pb2.Job:
        """The Job of a stored record, or a FAILED stub saying why it cannot be shown, so that one bad record
        (unparseable, or too large to send) never breaks GetJob or a ListJobs page; DeleteJob removes it."""
        if len(raw) > _MAX_JOB_BYTES:  # not even parsed: that alone took seconds
            return _stub(
                job_id, "RECORD_TOO_LARGE",
                f"the record of job {job_id} is {len(raw)} bytes, too large to send (the limit is {_MAX_JOB_BYTES}); "
                "delete the job",
            )
        try:
            job = self.view(JobRecord.loads(raw))
        except (ValueError, TypeError, KeyError, json_format.ParseError) as exc:
            log.error("job %s: its record cannot be read: %s", job_id, exc)
            return _stub(job_id, "BAD_RECORD", f"the record of job {job_id} cannot be read ({exc}); delete the job")
        size = job.ByteSize()
        if size > _MAX_JOB_BYTES:
            return _stub(
                job_id, "RECORD_TOO_LARGE",
                f"job {job_id} is {size} bytes, too large to send (the limit is {_MAX_JOB_BYTES}); delete the job",
            )
        return job

    def record(self, job_id: str) -> JobRecord:
        if not job_id:
            raise errors.invalid_argument("JOB_ID_REQUIRED", "job_id is required")
        try:
            record = self._find(job_id)
        except ValueError as exc:
            raise errors.failed_precondition(
                "BAD_RECORD", f"the record of job {job_id} cannot be read ({exc}); delete the job"
            ) from None
        if record is None:
            raise errors.not_found("job", job_id)
        return record

    def get(self, job_id: str) -> jobs_pb2.Job:
        if not job_id:
            raise errors.invalid_argument("JOB_ID_REQUIRED", "job_id is required")
        raw = self.conn.get(self.keys.record("job", job_id))
        if raw is None:
            raise errors.not_found("job", job_id)
        return self._readable(job_id, raw)

    def view(self, record: JobRecord) -> jobs_pb2.Job:
        """The Job as the API shows it: the stored outcome, or RQ's live state; artifacts as recorded."""
        if record.outcome is not None:
            job = json_format.ParseDict(record.outcome, jobs_pb2.Job(), ignore_unknown_fields=True)
        else:
            job = self._live(record)
            if job.state in TERMINAL:
                record.outcome = json_format.MessageToDict(job, preserving_proto_field_name=True)
                self.conn.set(self.keys.record("job", record.id), record.dumps(), xx=True, keepttl=True)
                if not record.internal and self.config.job_ttl > 0:
                    expires = job.end_time.ToNanoseconds() / 1e9 + self.config.job_ttl
                    self.conn.zadd(Keys.RETENTION, {record.id: expires})
                if self.slots.release(record.id):
                    self._report_end(job)
        self._attach_artifacts(job)
        return job

    def _report_end(self, job: jobs_pb2.Job) -> None:
        if self.on_end is None:
            return
        seconds = 0.0
        if job.HasField("start_time") and job.HasField("end_time"):
            seconds = (job.end_time.ToNanoseconds() - job.start_time.ToNanoseconds()) / 1e9
        self.on_end(seconds, jobs_pb2.JobState.Name(job.state))

    def _base(self, record: JobRecord) -> jobs_pb2.Job:
        job = jobs_pb2.Job(
            id=record.id,
            model_id=record.model_id,
            dataset_id=record.dataset_id,
            request_id=record.request_id,
            state=jobs_pb2.QUEUED,
            tasks=[json_format.ParseDict(t, tasks_pb2.Task()) for t in record.tasks],
            model_name=record.model_name,
            architecture=record.architecture,
            warnings=record.warnings or [],
        )
        json_format.ParseDict(record.input_spec or {}, job.input_spec)
        job.create_time.CopyFrom(_timestamp(record.create_time))
        return job

    def _live(self, record: JobRecord) -> jobs_pb2.Job:
        job = self._base(record)
        try:
            rq_job = RQJob.fetch(record.id, connection=self.conn, serializer=JSONSerializer)
        except NoSuchJobError:
            job.state = jobs_pb2.FAILED
            job_state.set_error(job.error, "FAILED_PRECONDITION", "JOB_LOST", "the queue no longer holds this job (its data expired or was deleted)")
            _now(job.end_time)
            return job
        status = rq_job.get_status(refresh=False)
        if status == JobStatus.FAILED and not record.cancel_requested and (
            requeue_killed_horse(self.conn, record.id) or rq_job.get_status(refresh=True) != JobStatus.FAILED
        ):  # queued again, here or by another reader (the reaper) in the same moment
            rq_job = RQJob.fetch(record.id, connection=self.conn, serializer=JSONSerializer)
            status = rq_job.get_status(refresh=False)
        meta = rq_job.meta or {}
        notes = meta.get(NOTES_META)
        job.warnings.extend(str(n) for n in (notes if isinstance(notes, list) else []))
        progress = meta.get("progress")
        if isinstance(progress, dict):
            job_state.set_progress(job.progress, progress)
        if rq_job.started_at:
            job.start_time.FromDatetime(rq_job.started_at)
        job.worker = rq_job.worker_name or ""
        if status in _WAITING:
            job.state = jobs_pb2.QUEUED
        elif status == JobStatus.STARTED:
            job.state = jobs_pb2.RUNNING
            if record.cancel_requested:
                self._stop_cancelled(record.id)
        elif status == JobStatus.FINISHED:
            job_state.apply_manifest(job, rq_job.return_value(refresh=True))
        elif status in _CANCELLED or (status == JobStatus.FAILED and record.cancel_requested):
            job.state = jobs_pb2.CANCELLED
            job_state.set_error(job.error, "CANCELLED", "JOB_CANCELLED", "the job was cancelled on request")
        elif status == JobStatus.FAILED:
            job.state = jobs_pb2.FAILED
            result = rq_job.latest_result()
            job_state.apply_failure(job, (result.exc_string if result else "") or "", _int(meta.get(HORSE_KILLS_META)))
            if result and result.worker_name:
                job.worker = result.worker_name
        else:
            job.state = jobs_pb2.FAILED
            job_state.set_error(job.error, "UNKNOWN", "UNKNOWN_JOB_STATUS", f"the queue reports status {status!r}")
        if job.state in TERMINAL:
            if rq_job.ended_at:
                job.end_time.FromDatetime(rq_job.ended_at)
            elif record.cancel_time:
                job.end_time.CopyFrom(_timestamp(record.cancel_time))
            else:
                _now(job.end_time)
        return job

    def _attach_artifacts(self, job: jobs_pb2.Job) -> None:
        """List recorded artifacts under their task's result (a task with no result yet gets one)."""
        by_task = {r.task: r for r in job.results}
        for artifact in self.artifacts.all(job.id):
            result = by_task.get(artifact.task)
            if result is None:
                result = by_task[artifact.task] = job.results.add(task=artifact.task)
            result.artifacts.append(artifact)

    def list(self, requested_size: int, token: str, state: int) -> tuple[list[jobs_pb2.Job], str]:
        """Newest first; with a state filter a page may come back short (with a token) after _MAX_SCAN records."""
        size = page_size(requested_size)
        if state and state not in jobs_pb2.JobState.values():
            raise errors.invalid_argument("BAD_STATE", f"unknown job state {state}")
        jobs: list[jobs_pb2.Job] = []
        cursor, scanned, page_bytes = token, 0, 0
        while True:
            members = self.index.after(cursor, size)
            if not members:
                return jobs, ""
            raws = self.conn.mget([self.keys.record("job", Index.ident(m)) for m in members])
            for member, raw in zip(members, raws):
                if raw is None:
                    cursor = Index.encode_token(member)
                    continue
                job = self._readable(Index.ident(member), raw)
                if state and job.state != state:
                    cursor = Index.encode_token(member)
                    continue
                page_bytes += job.ByteSize()
                if jobs and page_bytes > _PAGE_BYTES:  # the next page starts with this job
                    return jobs, cursor
                cursor = Index.encode_token(member)
                jobs.append(job)
                if len(jobs) == size:
                    return jobs, (cursor if self.index.after(cursor, 1) else "")
            scanned += len(members)
            if scanned >= _MAX_SCAN:
                return jobs, cursor

    def wait(self, job_id: str, timeout: float, is_active: IsActive) -> jobs_pb2.Job:
        """The job once it ended, or as it is after `timeout` s (0 or more than the cap means the cap)."""
        limit = self.config.max_wait_seconds
        timeout = limit if timeout <= 0 else min(timeout, limit)
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            remaining = deadline - time.monotonic()
            if job.state in TERMINAL or remaining <= 0 or not is_active():
                return job
            time.sleep(min(self.config.poll_interval, remaining))

    def watch(self, job_id: str, is_active: IsActive) -> Iterator[jobs_pb2.Job]:
        """The job now and each time it changes; ends after the terminal one or when the client leaves."""
        last = b""
        while is_active():
            job = self.get(job_id)
            encoded = job.SerializeToString(deterministic=True)
            if encoded != last:
                last = encoded
                yield job
            if job.state in TERMINAL:
                return
            time.sleep(self.config.poll_interval)

    # --- change -----------------------------------------------------------------------------

    def cancel(self, job_id: str) -> jobs_pb2.Job:
        """Queued: removed from the queue. Running: the worker is told to stop it. Ended: FAILED_PRECONDITION."""
        record = self.record(job_id)
        job = self.view(record)
        if job.state in TERMINAL:
            raise errors.failed_precondition(
                "JOB_TERMINAL", f"job {job_id} already ended ({jobs_pb2.JobState.Name(job.state)}); nothing to cancel"
            )
        record.cancel_requested = True
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        record.cancel_time = now.ToJsonString()
        self.conn.set(self.keys.record("job", job_id), record.dumps(), xx=True, keepttl=True)
        try:
            rq_job = RQJob.fetch(job_id, connection=self.conn, serializer=JSONSerializer)
        except NoSuchJobError:
            return self.get(job_id)
        self.conn.hset(rq_job.key, CANCEL_FIELD, 1)  # read by the horse: see kernelscope.states
        if rq_job.get_status() == JobStatus.STARTED:
            try:
                send_stop_job_command(self.conn, job_id, serializer=JSONSerializer)
            except InvalidJobOperation:
                _cancel_quietly(rq_job)
        else:
            _cancel_quietly(rq_job)
        return self.get(job_id)

    def _stop_cancelled(self, job_id: str) -> None:
        """A cancel that met the job while a worker was taking it off the queue cancelled the queued copy, and
        the worker runs it anyway: each look at it running tells the worker to stop it (at most every 2 s)."""
        if self.conn.set(self.keys.record("stop", job_id), 1, nx=True, ex=2):
            try:
                send_stop_job_command(self.conn, job_id, serializer=JSONSerializer)
            except InvalidJobOperation:
                pass

    def delete(self, job_id: str) -> None:
        """Remove an ended job: its record, RQ's data, its artifacts and the blobs nothing else uses.

        A record that cannot be read is removed whatever its job's state (GetJob shows it as a stub)."""
        if not job_id:
            raise errors.invalid_argument("JOB_ID_REQUIRED", "job_id is required")
        raw = self.conn.get(self.keys.record("job", job_id))
        if raw is None:
            raise errors.not_found("job", job_id)
        try:
            record: JobRecord | None = JobRecord.loads(raw)
        except ValueError:
            record = None
        if record is not None and record.outcome is None:  # an outcome is stored only once the job ended
            job = self.view(record)
            if job.state not in TERMINAL:
                raise errors.failed_precondition(
                    "JOB_NOT_TERMINAL", f"job {job_id} is {jobs_pb2.JobState.Name(job.state)}; cancel it first"
                )
        try:
            RQJob.fetch(job_id, connection=self.conn, serializer=JSONSerializer).delete()
        except NoSuchJobError:
            pass
        members = [record.index_member] if record is not None else self.index.members_of(job_id)
        with self.conn.pipeline() as pipe:
            pipe.delete(self.keys.record("job", job_id), Keys.job_owner(job_id))
            self.slots.release(job_id, pipe)
            pipe.zrem(Keys.RETENTION, job_id)
            for member in members:
                self.index.remove(member, pipe)
            pipe.execute()
        if record is not None and record.request_id:
            self._forget_request(record.request_id, job_id)
        self.artifacts.delete_all(job_id)

    # --- artifacts --------------------------------------------------------------------------

    def add_artifact(self, job_id: str, artifact: jobs_pb2.Artifact, staged: StagedBlob) -> None:
        self.record(job_id)
        self.artifacts.record(job_id, artifact, staged)

    def artifact(self, job_id: str, name: str) -> jobs_pb2.Artifact:
        self.record(job_id)
        return self.artifacts.get(job_id, name)

    # --- describe ---------------------------------------------------------------------------

    def describe(self, model_id: str, is_active: IsActive) -> models_pb2.ModelDescription:
        """Run (or join) the model's internal describe job, wait for it, cache and return its description."""
        model = self.registry.models.get(model_id)
        cached = self.registry.description(model_id)
        if cached is not None:
            return cached
        job_id = self._describe_job(model)
        deadline = time.monotonic() + self.config.describe_timeout
        while True:
            record = self._find(job_id)
            if record is None:  # expired or deleted under us: start over
                self._forget_describe(model_id, job_id)
                job_id = self._describe_job(model)
                continue
            job = self.view(record)
            if job.state in TERMINAL:
                break
            if time.monotonic() >= deadline:
                raise errors.ServiceError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "DESCRIBE_TIMEOUT",
                    f"describing model {model_id} took longer than {self.config.describe_timeout:g} s "
                    f"(is a worker listening on queue {self.config.queue_name!r}?); the job goes on, retry later",
                )
            if not is_active():
                raise errors.ServiceError(grpc.StatusCode.CANCELLED, "CLIENT_GONE", "the client went away")
            time.sleep(self.config.poll_interval)
        self._forget_describe(model_id, job_id)
        if job.state != jobs_pb2.SUCCEEDED:
            raise errors.ServiceError(
                errors.status_code(job.error.code), job.error.reason or "DESCRIBE_FAILED", job.error.message
            )
        description = _description(model, job)
        self.registry.put_description(description)
        return description

    def _describe_job(self, model: models_pb2.Model) -> str:
        key = self.keys.describing(model.id)
        for _ in range(3):
            job_id = ids.new_job_id()
            ttl = int(self.config.describe_timeout + self.config.job_timeout)
            if self.conn.set(key, job_id, nx=True, ex=ttl):
                try:
                    describe = tasks_pb2.Task(name="describe", describe=tasks_pb2.DescribeOptions())
                    self._enqueue(job_id, model, None, [describe], request_id="", internal=True)
                except BaseException:
                    self._forget_describe(model.id, job_id)
                    raise
                return job_id
            existing = self.conn.get(key)
            if existing is not None:
                return existing.decode()
        raise errors.unavailable("DESCRIBE_RACE", "could not start describing the model; retry")

    def _forget_describe(self, model_id: str, job_id: str) -> None:
        key = self.keys.describing(model_id)
        if self.conn.get(key) == job_id.encode():
            self.conn.delete(key)


def job_spec(
    job_id: str, model: models_pb2.Model, dataset: datasets_pb2.Dataset | None, job_tasks: list[tasks_pb2.Task]
) -> dict[str, Any]:
    """What the worker's job function receives: a JobSpec as JSON (kernelscope.contract)."""
    spec = worker_pb2.JobSpec(job_id=job_id, model=model, tasks=job_tasks)
    if dataset is not None:
        spec.dataset.CopyFrom(dataset)
    return contract.to_json(spec)


def job_warnings(model: models_pb2.Model, job_tasks: list[tasks_pb2.Task]) -> list[str]:
    """Silent assumptions a job would run on, said once on the job (the report and the CLI show them)."""
    fed = sorted({t.name for t in job_tasks} & tasks.NEEDS_RUNNABLE_MODEL)
    if not fed or model.input_spec.mean or model.input_spec.std:
        return []
    low, high = (model.input_spec.value_min, model.input_spec.value_max) if model.input_spec.value_max else (0.0, 1.0)
    return [
        f"no input_spec mean/std was given: {', '.join(fed)} fed the model raw values in [{low:g}, {high:g}] "
        "without normalisation; if it was trained on normalised inputs, upload it with an input spec "
        '(--input-spec \'{"mean": [...], "std": [...]}\' or input_spec=...)'
    ]


def _timestamp(text: str) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromJsonString(text)
    return ts


def _now(ts: timestamp_pb2.Timestamp) -> None:
    ts.GetCurrentTime()


def _cancel_quietly(rq_job: RQJob) -> None:
    try:
        rq_job.cancel()
    except InvalidJobOperation:
        pass


def _stub(job_id: str, reason: str, message: str) -> jobs_pb2.Job:
    """What GetJob and ListJobs show for a record they cannot show as it is."""
    job = jobs_pb2.Job(id=job_id, state=jobs_pb2.FAILED)
    job_state.set_error(job.error, "INTERNAL", reason, message)
    return job


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _ints(values: Any) -> list[int]:
    return [int(v) for v in values] if isinstance(values, (list, tuple)) else []


def _description(model: models_pb2.Model, job: jobs_pb2.Job) -> models_pb2.ModelDescription:
    """ModelDescription from the describe task's summary."""
    try:
        summary = json.loads(job.results[0].summary_json) if job.results and job.results[0].summary_json else {}
        description = models_pb2.ModelDescription(model_id=model.id)
        spec = summary.get("input_spec")
        if isinstance(spec, dict):
            clean = {k: v for k, v in spec.items() if v is not None and k in common_pb2.InputSpec.DESCRIPTOR.fields_by_name}
            json_format.ParseDict(clean, description.input_spec)
        else:
            description.input_spec.CopyFrom(model.input_spec)
        for raw in summary.get("layers") or []:
            description.layers.add(
                name=str(raw.get("name") or ""),
                kind=str(raw.get("kind") or ""),
                kernel_shape=_ints(raw.get("kernel_shape")),
                stride=_ints(raw.get("stride")),
                receptive_field=_ints(raw.get("receptive_field")),
                output_shape=_ints(raw.get("output_shape")),
                parameters=int(raw.get("parameters") or 0),
            )
        description.supported_tasks.extend(str(t) for t in summary.get("supported_tasks") or [])
    except (AttributeError, TypeError, ValueError, json_format.ParseError) as exc:
        raise errors.ServiceError(
            grpc.StatusCode.INTERNAL, "BAD_DESCRIPTION", f"the describe task returned a malformed summary: {exc}"
        ) from None
    return description
