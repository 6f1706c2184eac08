"""The reaper against real RQ state in a real Redis: worker deaths are staged in-process (an RQ Worker that
takes a job and then vanishes or stops beating), so each rule is checked without waiting on processes.
test_faults.py shows the same with a SIGKILLed worker process."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kernelscope.v1 import jobs_pb2, tasks_pb2
from rq import Queue, Worker
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from service.reaper import LOSSES_META, Reaper
from service.registry import Keys
from tests.service.helpers import onnx_bytes, upload_model

RETRIES = 1
TIMEOUT_S = 2.0


@pytest.fixture
def server(start_server) -> Any:
    # The server's own reaper thread sleeps through the test; the test calls reap() itself.
    return start_server(job_retries=RETRIES, worker_timeout=TIMEOUT_S, reap_interval=1000.0)


@pytest.fixture
def job(server) -> jobs_pb2.Job:
    stub = server.stub()
    request = jobs_pb2.CreateJobRequest(model_id=upload_model(stub, onnx_bytes()).id, tasks=[tasks_pb2.Task(name="tconv_stats")])
    return stub.CreateJob(request, timeout=10)


def take(server: Any, conn: Any, name: str, heartbeat: int = 1) -> tuple[Worker, Execution]:
    """An RQ worker `name` (beating every `heartbeat` s) registers, dequeues the next job and starts it."""
    queue = Queue(server.config.queue_name, connection=conn, serializer=JSONSerializer)
    worker = Worker([queue], connection=conn, serializer=JSONSerializer, name=name, job_monitoring_interval=heartbeat)
    worker.register_birth()
    dequeued = Queue.dequeue_any([queue], None, connection=conn, serializer=JSONSerializer)
    assert dequeued is not None
    rq_job, _ = dequeued
    execution = worker.prepare_execution(rq_job)
    worker.prepare_job_execution(rq_job)
    return worker, execution


def strand(server: Any, conn: Any) -> str:
    """A worker takes the next job off the queue and dies before starting it (before prepare_execution)."""
    queue = Queue(server.config.queue_name, connection=conn, serializer=JSONSerializer)
    dequeued = Queue.dequeue_any([queue], None, connection=conn, serializer=JSONSerializer)
    assert dequeued is not None
    job_id = dequeued[0].id
    assert intermediate(server, conn) == [job_id]  # where RQ keeps a taken job until it starts
    return job_id


def intermediate(server: Any, conn: Any) -> list[str]:
    return IntermediateQueue(Queue(server.config.queue_name, connection=conn).key, connection=conn).get_job_ids()


def beat_ago(conn: Any, execution: Execution, seconds: float, interval: int) -> None:
    """Make the execution look as if its last heartbeat was `seconds` ago, from a worker beating every `interval` s."""
    conn.hset(execution.key, "last_heartbeat", time.time() - seconds)
    remaining = (interval + 60 - seconds) * 1000  # RQ sets the key's TTL to interval + 60 s at each beat
    if remaining > 0:
        conn.pexpire(execution.key, int(remaining))
    else:
        conn.delete(execution.key)


def state(server: Any, job_id: str) -> jobs_pb2.Job:
    return server.stub().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=10)


def test_a_worker_that_beats_keeps_its_job(server, redis_conn, job) -> None:
    take(server, redis_conn, "alive")
    assert Reaper(redis_conn, server.config).reap() == []
    assert state(server, job.id).state == jobs_pb2.RUNNING


def test_a_vanished_worker_s_job_is_queued_again_then_given_up_after_the_retries(server, redis_conn, job) -> None:
    reaper = Reaper(redis_conn, server.config)
    first, _ = take(server, redis_conn, "ghost-1")
    first.register_death()  # its key is gone: dead, no need to wait for the timeout

    [reaped] = reaper.reap()
    assert (reaped.job_id, reaped.worker, reaped.losses, reaped.requeued) == (job.id, "ghost-1", 1, True)
    queued = state(server, job.id)
    assert queued.state == jobs_pb2.QUEUED and queued.worker == ""
    assert "queued again (retry 1 of 1)" in queued.progress.message
    assert redis_conn.zcard(f"rq:wip:{server.config.queue_name}") == 0
    assert Queue(server.config.queue_name, connection=redis_conn).get_job_ids() == [job.id]
    assert reaper.reap() == []  # nothing more to do

    second, _ = take(server, redis_conn, "ghost-2")
    assert state(server, job.id).state == jobs_pb2.RUNNING
    second.register_death()
    [reaped] = reaper.reap()
    assert (reaped.losses, reaped.requeued) == (2, False)
    failed = state(server, job.id)
    assert failed.state == jobs_pb2.FAILED
    assert (failed.error.code, failed.error.reason) == ("UNAVAILABLE", "WORKER_LOST")
    assert "ghost-2" in failed.error.message and "gave up after 2 lost worker(s)" in failed.error.message
    rq_job = RQJob.fetch(job.id, connection=redis_conn, serializer=JSONSerializer)
    assert rq_job.meta[LOSSES_META] == 1 and rq_job.get_status().value == "failed"


@pytest.mark.parametrize(
    "interval, ago, abandoned",
    [
        (1, TIMEOUT_S / 2, False),  # recent enough
        (1, TIMEOUT_S + 2, True),  # late past the timeout and three beats
        (30, TIMEOUT_S + 1, False),  # a worker at RQ's 30 s default is not late yet (3 x 30 s)
        (30, 95, True),  # ... until its execution record expired
    ],
)
def test_a_late_heartbeat_counts_past_the_timeout_and_three_of_the_worker_s_beats(
    server, redis_conn, job, interval: int, ago: float, abandoned: bool
) -> None:
    _, execution = take(server, redis_conn, f"slow-{interval}", heartbeat=interval)
    beat_ago(redis_conn, execution, ago, interval)
    reaped = Reaper(redis_conn, server.config).reap()
    assert [r.job_id for r in reaped] == ([job.id] if abandoned else [])
    assert state(server, job.id).state == (jobs_pb2.QUEUED if abandoned else jobs_pb2.RUNNING)


@pytest.mark.parametrize("owner_recorded", [True, False], ids=["owner-recorded", "job-from-before-owners"])
def test_a_cancelled_job_whose_worker_died_ends_cancelled_not_queued_again(
    server, redis_conn, job, owner_recorded: bool
) -> None:
    worker, _ = take(server, redis_conn, "doomed")
    stub = server.stub()
    assert stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id), timeout=10).state == jobs_pb2.RUNNING
    if not owner_recorded:  # a job created before owners were recorded belongs to the default tenant
        redis_conn.delete(Keys.job_owner(job.id))
    worker.register_death()  # it never got to stop the job
    [reaped] = Reaper(redis_conn, server.config).reap()
    assert not reaped.requeued
    final = state(server, job.id)
    assert final.state == jobs_pb2.CANCELLED and final.error.reason == "JOB_CANCELLED"


def test_a_job_stranded_between_taking_and_starting_is_queued_again_after_the_timeout_then_given_up(
    server, redis_conn, job
) -> None:
    reaper = Reaper(redis_conn, server.config.replace(worker_timeout=0.3))
    assert strand(server, redis_conn) == job.id
    assert reaper.reap() == []  # a worker usually starts a taken job within milliseconds: not yet
    assert intermediate(server, redis_conn) == [job.id] and state(server, job.id).state == jobs_pb2.QUEUED
    time.sleep(0.4)
    [reaped] = reaper.reap()
    assert (reaped.job_id, reaped.worker, reaped.losses, reaped.requeued) == (job.id, "", 1, True)
    assert intermediate(server, redis_conn) == []
    assert Queue(server.config.queue_name, connection=redis_conn).get_job_ids() == [job.id]
    queued = state(server, job.id)
    assert queued.state == jobs_pb2.QUEUED and "queued again (retry 1 of 1)" in queued.progress.message

    strand(server, redis_conn)  # and once more: past the retries
    assert reaper.reap() == []
    time.sleep(0.4)
    [reaped] = reaper.reap()
    assert (reaped.losses, reaped.requeued) == (2, False)
    failed = state(server, job.id)
    assert failed.state == jobs_pb2.FAILED and failed.error.reason == "WORKER_LOST"
    assert intermediate(server, redis_conn) == []


def test_a_taken_job_that_started_is_left_to_its_worker(server, redis_conn, job) -> None:
    """RQ leaves a started job's id in the intermediate list until its worker removes it; the started registry
    says the job is running, so it is not stranded however long it stays."""
    reaper = Reaper(redis_conn, server.config.replace(worker_timeout=0.01))
    take(server, redis_conn, "alive")  # prepare_job_execution without remove_from_intermediate_queue
    assert intermediate(server, redis_conn) == [job.id]
    assert reaper.reap() == []
    time.sleep(0.05)
    assert reaper.reap() == []
    assert state(server, job.id).state == jobs_pb2.RUNNING


def test_a_stranded_job_cancelled_meanwhile_ends_cancelled_and_leaves_the_list(server, redis_conn, job) -> None:
    reaper = Reaper(redis_conn, server.config.replace(worker_timeout=0.01))
    strand(server, redis_conn)
    server.stub().CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id), timeout=10)
    assert reaper.reap() == []
    time.sleep(0.05)
    assert reaper.reap() == []
    assert intermediate(server, redis_conn) == []  # RQ's maintenance will not fail it later
    assert state(server, job.id).state == jobs_pb2.CANCELLED


def test_the_reaper_thread_runs_with_the_server(start_server, redis_conn) -> None:
    server = start_server(worker_timeout=TIMEOUT_S, reap_interval=0.05)
    stub = server.stub()
    request = jobs_pb2.CreateJobRequest(model_id=upload_model(stub, onnx_bytes()).id, tasks=[tasks_pb2.Task(name="tconv_stats")])
    job = stub.CreateJob(request, timeout=10)
    worker, _ = take(server, redis_conn, "short-lived")
    worker.register_death()
    deadline = time.monotonic() + 10
    while state(server, job.id).state != jobs_pb2.QUEUED:
        assert time.monotonic() < deadline, "the server's reaper never re-queued the job"
        time.sleep(0.05)
    server.stop()  # and the thread ends with the server
    deadline = time.monotonic() + 5
    while any(t.name == "kernelscope-reaper" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the reaper outlived its server"
        time.sleep(0.05)


class _RedisAway:
    """A connection whose ping fails until `back` is set (the reaper pings it to learn that Redis is back)."""

    def __init__(self, back: threading.Event) -> None:
        self.back = back

    def ping(self) -> bool:
        import redis

        if not self.back.is_set():
            raise redis.ConnectionError("Redis is away")
        return True


def test_after_an_outage_the_reaper_waits_a_worker_timeout_from_when_redis_is_back(redis_conn) -> None:
    """Workers can only beat again once Redis answers (their keys may have expired meanwhile): judging them
    sooner than worker_timeout after that moment fails jobs that are still running, e.g. after a 60 s outage."""
    import dataclasses

    import redis

    from service.config import Config

    timeout_s, outage_s = 2.0, 3.0
    config = dataclasses.replace(Config(), reap_interval=0.05, worker_timeout=timeout_s)
    reaper = Reaper(redis_conn, config)
    back, judged, stop = threading.Event(), threading.Event(), threading.Event()
    times: dict[str, float] = {}

    def reap() -> list[Any]:
        if not back.is_set():
            times.setdefault("away", time.monotonic())
            raise redis.ConnectionError("Redis is away")
        times["judged"] = time.monotonic()
        judged.set()
        return []

    reaper.conn = _RedisAway(back)  # type: ignore[assignment]
    reaper.reap = reap  # type: ignore[method-assign]
    reaper.retention.sweep = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=reaper.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while "away" not in times and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "away" in times, "the reaper never ran"
        time.sleep(outage_s)  # the outage itself: longer than worker_timeout, as a 60 s outage is than 15 s
        back.set()
        back_at = time.monotonic()
        assert judged.wait(60), "the reaper never judged the workers after Redis came back"
        assert times["judged"] - back_at >= timeout_s - 0.05, (
            f"judged {times['judged'] - back_at:.2f} s after Redis came back; workers get {timeout_s} s to beat"
        )
    finally:
        stop.set()
        thread.join(10)
