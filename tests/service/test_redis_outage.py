"""A Redis crash under load, on real processes (tests/service/cluster.py): Redis SIGKILLed for 10 s while
two jobs run and twenty wait, then started again on the same socket from its AOF. Every job succeeds, on
the same two workers: progress written during the outage is dropped, a job that ends during it stores
its result once Redis is back, and neither worker quits."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from kernelscope.v1 import jobs_pb2, tasks_pb2
from rq import Worker

from tests.service.cluster import Cluster
from tests.service.helpers import model_messages, onnx_bytes

TOKEN = "outage-test-token"
MD = (("authorization", f"Bearer {TOKEN}"),)
OUTAGE_S = 10.0
QUEUED = 20
DONE_TIMEOUT_S = 150.0  # for all 22 jobs once Redis is back, on a busy machine (about 10 s on a quiet one)
EVENT_TIMEOUT_S = 60.0
TERMINAL = {jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(
        tmp_path / "cluster",
        server_env={
            "KERNELSCOPE_TOKENS": f"outage={TOKEN}",
            "KERNELSCOPE_WORKER_TIMEOUT": "3",  # far shorter than the outage: a worker must not be taken for dead
            "KERNELSCOPE_REAP_INTERVAL": "0.25",
            "KERNELSCOPE_JOB_RETRIES": "0",  # a job that fails is not hidden by a second run
        },
        worker_env={"KERNELSCOPE_WORKER_HEARTBEAT": "1"},
    ).start()
    try:
        cluster.start_worker()
        cluster.start_worker()
        yield cluster
    finally:
        cluster.stop()


_padding = iter(range(5000, 10**6, 11))


def create(stub: Any, mode: str, task: str = "tconv_stats") -> jobs_pb2.Job:
    model = stub.UploadModel(model_messages(onnx_bytes(padding=next(_padding)), name=f"fake:{mode}"), metadata=MD, timeout=30)
    request = jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name=task)])
    return stub.CreateJob(request, metadata=MD, timeout=30)


def get(stub: Any, job_id: str) -> jobs_pb2.Job | None:
    """The job, or None while the server cannot reach Redis."""
    try:
        return stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=MD, timeout=10)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return None
        raise


def wait_state(stub: Any, job_id: str, states: set[int], timeout: float) -> jobs_pb2.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = get(stub, job_id)
        if job is not None and job.state in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} stayed {job and jobs_pb2.JobState.Name(job.state)}"
        time.sleep(0.1)


def wait_all(stub: Any, jobs: list[jobs_pb2.Job], timeout: float) -> list[jobs_pb2.Job]:
    """Every job once all are finished; fails naming the states of those that are not within `timeout`."""
    deadline = time.monotonic() + timeout
    latest = {job.id: job for job in jobs}
    while True:
        for job_id, job in latest.items():
            if job.state not in TERMINAL:
                fresh = get(stub, job_id)
                latest[job_id] = job if fresh is None else fresh
        pending = [jobs_pb2.JobState.Name(j.state) for j in latest.values() if j.state not in TERMINAL]
        if not pending:
            return list(latest.values())
        assert time.monotonic() < deadline, f"{len(pending)} of {len(jobs)} jobs never finished: {sorted(pending)}"
        time.sleep(0.2)


def wait_log(cluster: Cluster, worker: str, text: str, timeout: float = EVENT_TIMEOUT_S) -> None:
    path = cluster.logs / f"worker-{worker}.log"
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"worker {worker} never logged {text!r}:\n{cluster.log('worker-' + worker)}"
        time.sleep(0.05)


def persist(cluster: Cluster) -> None:
    """Rewrite the AOF and wait for it: what exists now survives the SIGKILL, whatever the disk's pace."""
    conn = cluster.redis_client()
    try:
        conn.bgrewriteaof()
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while True:
            info = conn.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                assert info["aof_last_bgrewrite_status"] == "ok", info
                return
            assert time.monotonic() < deadline, "the AOF rewrite did not finish"
            time.sleep(0.05)
    finally:
        conn.close()


def test_redis_killed_for_10_s_under_2_running_and_20_queued_jobs_loses_no_job_and_no_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    stub = cluster.stub()
    release_a, release_b = tmp_path / "release-a", tmp_path / "release-b"
    # a: no artifacts to write (describe), so it ends while Redis is down; b runs on past the outage.
    a = create(stub, f"progress={release_a}", task="describe")
    b = create(stub, f"progress={release_b}")
    worker_a = wait_state(stub, a.id, {jobs_pb2.RUNNING}, EVENT_TIMEOUT_S).worker
    worker_b = wait_state(stub, b.id, {jobs_pb2.RUNNING}, EVENT_TIMEOUT_S).worker
    assert {worker_a, worker_b} == set(cluster.workers)
    queued = [create(stub, "succeed") for _ in range(QUEUED)]
    pids = {name: process.pid for name, process in cluster.workers.items()}
    persist(cluster)

    cluster.crash_redis()
    down_at = time.monotonic()
    release_a.touch()
    wait_log(cluster, worker_a, f"job {a.id}: end: Redis unreachable")  # a finished; its horse waits to record it
    wait_log(cluster, worker_b, "progress dropped while Redis is unreachable")
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))  # the outage itself
    cluster.start_redis()
    outage_s = time.monotonic() - down_at
    wait_log(cluster, worker_b, "progress written again")
    release_b.touch()

    finals = wait_all(stub, [a, b, *queued], DONE_TIMEOUT_S)
    failed = {job.id: (jobs_pb2.JobState.Name(job.state), job.error.message) for job in finals if job.state != jobs_pb2.SUCCEEDED}
    assert not failed, f"after a {outage_s:.1f} s outage: {failed}"
    assert finals[0].worker == f"fake-worker@{worker_a}" and finals[1].worker == f"fake-worker@{worker_b}"

    assert {name: p.pid for name, p in cluster.workers.items() if p.poll() is None} == pids, "a worker quit"
    conn = cluster.redis_client()
    try:
        assert {w.name for w in Worker.all(connection=conn)} == set(pids)
    finally:
        conn.close()
    assert "stopped responding" not in cluster.log("server"), "a busy worker was taken for dead"
    for name in pids:
        assert "unhandled exception" not in (cluster.logs / f"worker-{name}.log").read_text(errors="replace")


def test_a_horse_that_dies_while_redis_is_down_is_recorded_once_it_is_back_and_its_worker_stays(
    cluster: Cluster, tmp_path: Path
) -> None:
    """RQ's parent reads the job's status when its horse exits abnormally: during the outage that read
    raised and the worker quit ("found an unhandled exception, quitting...")."""
    import psutil

    stub = cluster.stub()
    release = tmp_path / "release"
    job = create(stub, f"progress={release}")
    worker = wait_state(stub, job.id, {jobs_pb2.RUNNING}, EVENT_TIMEOUT_S).worker
    parent = cluster.workers[worker]
    (horse,) = psutil.Process(parent.pid).children()
    persist(cluster)
    cluster.crash_redis()
    horse.kill()
    wait_log(cluster, worker, f"job {job.id}: status: Redis unreachable")
    cluster.start_redis()
    release.touch()  # should the job be run again (a killed horse may be retried), it ends at once
    wait_state(stub, job.id, TERMINAL, DONE_TIMEOUT_S)  # failed, or retried: not left running forever
    assert parent.poll() is None, "the worker quit"
    assert all(p.poll() is None for p in cluster.workers.values()), "the idle worker quit"
    assert "unhandled exception" not in (cluster.logs / f"worker-{worker}.log").read_text(errors="replace")
    follow = create(stub, "succeed")  # and it still takes work
    assert wait_state(stub, follow.id, TERMINAL, DONE_TIMEOUT_S).state == jobs_pb2.SUCCEEDED
