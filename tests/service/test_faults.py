"""Faults survived with nothing lost, on real processes (tests/service/cluster.py): a worker SIGKILLed
mid-job, Redis restarted (between jobs and under a running one), the server SIGKILLed and restarted under
a waiting SDK client, and a job past its timeout. One cluster serves the module; each test leaves it with
its two workers running."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest
from kernelscope.v1 import datasets_pb2, jobs_pb2, models_pb2, tasks_pb2
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from service.defaults import QUEUE_NAME
from service.reaper import LOSSES_META
from tests.service.cluster import START_TIMEOUT_S, Cluster
from tests.service.helpers import clips, dataset_messages, model_messages, npz_bytes, onnx_bytes

TOKEN = "fault-test-token"
# The cluster's KERNELSCOPE_JOB_TIMEOUT: far above what its jobs need (a few seconds of sleep, plus the horse's
# imports and uploads, which take seconds more on a loaded machine), so that only the timeout test meets it.
JOB_TIMEOUT_S = 300
SHORT_JOB_TIMEOUT_S = 6  # the timeout test's, for the one job it lets run out
WORKER_TIMEOUT_S = 3.0  # the cluster's KERNELSCOPE_WORKER_TIMEOUT; workers beat every second


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    cluster = Cluster(
        root,
        server_env={
            "KERNELSCOPE_TOKENS": f"faults={TOKEN}",
            "KERNELSCOPE_JOB_TIMEOUT": str(JOB_TIMEOUT_S),
            "KERNELSCOPE_WORKER_TIMEOUT": str(WORKER_TIMEOUT_S),
            "KERNELSCOPE_REAP_INTERVAL": "0.25",
            "KERNELSCOPE_JOB_RETRIES": "2",
        },
        worker_env={"KERNELSCOPE_WORKER_HEARTBEAT": "1"},
    ).start()
    try:
        cluster.start_worker()
        cluster.start_worker()
        yield cluster
    finally:
        cluster.stop()


MD = (("authorization", f"Bearer {TOKEN}"),)
_padding = iter(range(1000, 10**6, 7))


def fake_model(stub: Any, mode: str = "succeed") -> models_pb2.Model:
    """A new model (fresh bytes) whose jobs the fake worker runs in `mode` ("sleep=2.5", "succeed", ...)."""
    messages = model_messages(onnx_bytes(padding=next(_padding)), name=f"fake:{mode}")
    return stub.UploadModel(messages, metadata=MD, timeout=30)


def create(stub: Any, model_id: str, task: str = "tconv_stats") -> jobs_pb2.Job:
    request = jobs_pb2.CreateJobRequest(model_id=model_id, tasks=[tasks_pb2.Task(name=task)])
    return stub.CreateJob(request, metadata=MD, timeout=10)


# Waits for a job's state are bounded generously: a loaded machine runs the fake jobs many times slower.
def wait_state(stub: Any, job_id: str, states: set[int], timeout: float = 120) -> jobs_pb2.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=MD, timeout=10)
        if job.state in states:
            return job
        assert time.monotonic() < deadline, f"job stayed {jobs_pb2.JobState.Name(job.state)}"
        time.sleep(0.05)


def wait_done(stub: Any, job_id: str, timeout: float = 120) -> jobs_pb2.Job:
    terminal = {jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED}
    return wait_state(stub, job_id, terminal, timeout)


def read(stub: Any, job_id: str, name: str) -> bytes:
    chunks = stub.ReadArtifact(jobs_pb2.ReadArtifactRequest(job_id=job_id, name=name), metadata=MD, timeout=10)
    return b"".join(c.data for c in chunks)


def ensure_two_workers(cluster: Cluster) -> None:
    for name, process in list(cluster.workers.items()):
        if process.poll() is not None:
            cluster.workers.pop(name)
    while len(cluster.workers) < 2:
        cluster.start_worker()


def test_a_worker_killed_mid_job_is_replaced_and_the_job_finishes_elsewhere(cluster: Cluster) -> None:
    stub = cluster.stub()
    job = create(stub, fake_model(stub, "sleep=2.5").id)
    running = wait_state(stub, job.id, {jobs_pb2.RUNNING})
    victim = running.worker
    assert victim in cluster.workers
    horse = [p.pid for p in psutil.Process(cluster.workers[victim].pid).children()]
    assert len(horse) == 1, "the worker forks one work-horse per job"

    cluster.kill_worker(victim, signal.SIGKILL)
    killed = time.monotonic()
    psutil.wait_procs([psutil.Process(horse[0])], timeout=60)
    assert not psutil.pid_exists(horse[0]) or psutil.Process(horse[0]).status() == psutil.STATUS_ZOMBIE, (
        "the work-horse outlived its worker"
    )
    deadline = time.monotonic() + WORKER_TIMEOUT_S + 10
    while (moved := stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id), metadata=MD)).worker == victim:
        assert time.monotonic() < deadline, "the job stayed with its dead worker"
        time.sleep(0.02)
    noticed = time.monotonic() - killed  # queued again (and maybe picked up at once by the other worker)
    final = wait_done(stub, job.id)

    survivor = next(iter(cluster.workers))
    assert final.state == jobs_pb2.SUCCEEDED, final.error
    assert final.worker == f"fake-worker@{survivor}" != f"fake-worker@{victim}"
    assert noticed < WORKER_TIMEOUT_S + 3, f"the lost job was noticed only after {noticed:.1f} s"
    assert moved.state != jobs_pb2.QUEUED or "queued again" in moved.progress.message
    assert read(stub, job.id, "tconv_stats/summary.json")
    rq_job = RQJob.fetch(job.id, connection=cluster.redis_client(), serializer=JSONSerializer)
    assert rq_job.meta[LOSSES_META] == 1
    ensure_two_workers(cluster)


# A worker that dies right after taking a job off the queue, before it registers the job as started.
# It says what its queue's intermediate list held as it died, so that the test need not race the reaper for it.
DIES_AFTER_TAKING = f"""
import os, signal, sys
from workers.__main__ import KernelScopeWorker, main

def die(self, job):
    held = [j.decode() for j in self.connection.lrange("rq:queue:{QUEUE_NAME}:intermediate", 0, -1)]
    print(f"dying with {{job.id}} taken; intermediate list: {{held}}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

KernelScopeWorker.prepare_execution = die
sys.exit(main(sys.argv[1:]))
"""


def test_a_worker_killed_between_taking_a_job_and_starting_it_loses_nothing(cluster: Cluster) -> None:
    stub = cluster.stub()
    for name in list(cluster.workers):  # only the doomed worker may take the job
        cluster.kill_worker(name, signal.SIGTERM)
    job = create(stub, fake_model(stub).id)
    doomed = cluster.start_worker(program=DIES_AFTER_TAKING, wait=False)
    assert cluster.workers.pop(doomed).wait(START_TIMEOUT_S) == -signal.SIGKILL, cluster.log(f"worker-{doomed}")
    died = time.monotonic()
    assert f"dying with {job.id} taken; intermediate list: {[job.id]}" in cluster.log(f"worker-{doomed}")
    assert stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id), metadata=MD).state == jobs_pb2.QUEUED

    # With no worker left, the reaper's rescue shows as the job back on the queue (timed before workers start,
    # which takes a loaded machine many seconds).
    redis = cluster.redis_client()
    while redis.lrange(f"rq:queue:{QUEUE_NAME}", 0, -1) != [job.id.encode()]:
        assert time.monotonic() - died < START_TIMEOUT_S, "the stranded job was never queued again"
        time.sleep(0.05)
    requeued = time.monotonic() - died
    assert requeued < WORKER_TIMEOUT_S + 15, f"the stranded job waited {requeued:.1f} s (for RQ's maintenance?)"
    assert redis.lrange(f"rq:queue:{QUEUE_NAME}:intermediate", 0, -1) == []

    ensure_two_workers(cluster)
    final = wait_done(stub, job.id)
    assert final.state == jobs_pb2.SUCCEEDED, final.error
    rq_job = RQJob.fetch(job.id, connection=redis, serializer=JSONSerializer)
    assert rq_job.meta[LOSSES_META] == 1


@contextmanager
def job_timeout(cluster: Cluster, seconds: int) -> Iterator[None]:
    """Jobs created inside get `seconds` to run: the server is restarted with that KERNELSCOPE_JOB_TIMEOUT
    (RQ keeps each job's timeout from its creation), and restarted with the cluster's own on the way out."""
    cluster.kill_server()
    cluster.server_env["KERNELSCOPE_JOB_TIMEOUT"] = str(seconds)
    try:
        cluster.start_server()
        yield
    finally:
        if cluster.server is not None:
            cluster.kill_server()
        cluster.server_env["KERNELSCOPE_JOB_TIMEOUT"] = str(JOB_TIMEOUT_S)
        cluster.start_server()


def test_a_job_past_its_timeout_fails_clearly_and_the_worker_carries_on(cluster: Cluster) -> None:
    with job_timeout(cluster, SHORT_JOB_TIMEOUT_S):
        stub = cluster.stub()
        slow = create(stub, fake_model(stub, f"sleep={SHORT_JOB_TIMEOUT_S + 120}").id)
    stub = cluster.stub()
    final = wait_done(stub, slow.id, timeout=SHORT_JOB_TIMEOUT_S + 90)  # it may end while the server restarts
    ran_on = final.worker
    assert final.state == jobs_pb2.FAILED
    assert (final.error.code, final.error.reason) == ("DEADLINE_EXCEEDED", "JOB_TIMEOUT")
    assert f"{SHORT_JOB_TIMEOUT_S} seconds" in final.error.message, final.error.message
    assert cluster.workers[ran_on].poll() is None, "the worker died with its job"

    cluster.kill_worker(next(n for n in cluster.workers if n != ran_on), signal.SIGTERM)  # only ran_on is left
    after = wait_done(stub, create(stub, fake_model(stub).id).id)
    assert after.state == jobs_pb2.SUCCEEDED and after.worker == f"fake-worker@{ran_on}"
    ensure_two_workers(cluster)


@pytest.mark.parametrize("how", ["clean", "crash"])
def test_redis_restart_keeps_queued_and_finished_jobs(cluster: Cluster, how: str) -> None:
    """clean: SIGTERM. crash: SIGKILL after AOF's one-second fsync window (appendfsync everysec), so
    everything acknowledged more than a second before the crash must survive."""
    stub = cluster.stub()
    model = fake_model(stub)
    dataset = stub.UploadDataset(dataset_messages(npz_bytes(**clips(n_per_class=3, classes=2))), metadata=MD, timeout=30)
    finished = wait_done(stub, create(stub, model.id).id)
    assert finished.state == jobs_pb2.SUCCEEDED
    artifact = read(stub, finished.id, "tconv_stats/summary.json")
    for name in list(cluster.workers):  # idle workers leave; what is created now stays queued
        cluster.kill_worker(name, signal.SIGTERM)
    queued = [create(stub, model.id) for _ in range(3)]

    if how == "clean":
        cluster.stop_redis()
    else:
        time.sleep(1.5)
        cluster.crash_redis()
    cluster.start_redis()

    deadline = time.monotonic() + 20
    while True:  # the server reconnects by itself
        try:
            again = stub.GetJob(jobs_pb2.GetJobRequest(job_id=finished.id), metadata=MD, timeout=5)
            break
        except Exception:  # noqa: BLE001 - UNAVAILABLE until the client reconnects
            assert time.monotonic() < deadline, "the server never reconnected to Redis"
            time.sleep(0.1)
    assert again.state == jobs_pb2.SUCCEEDED and read(stub, finished.id, "tconv_stats/summary.json") == artifact
    assert stub.GetModel(models_pb2.GetModelRequest(model_id=model.id), metadata=MD).sha256 == model.sha256
    assert stub.GetDataset(datasets_pb2.GetDatasetRequest(dataset_id=dataset.id), metadata=MD).num_samples == 6
    for job in queued:
        assert stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id), metadata=MD).state == jobs_pb2.QUEUED
    ensure_two_workers(cluster)
    for job in queued:
        assert wait_done(stub, job.id).state == jobs_pb2.SUCCEEDED


def test_redis_restarted_under_a_running_job_loses_neither_the_worker_nor_the_job(cluster: Cluster) -> None:
    stub = cluster.stub()
    outage_s = WORKER_TIMEOUT_S + 0.5  # longer than the reaper's patience: no heartbeat can land meanwhile
    job = create(stub, fake_model(stub, f"sleep={outage_s + 1.5}").id)  # and it outlasts the outage
    worker = wait_state(stub, job.id, {jobs_pb2.RUNNING}).worker
    cluster.stop_redis()
    time.sleep(outage_s)
    cluster.start_redis()
    final = wait_done(stub, job.id)
    assert final.state == jobs_pb2.SUCCEEDED and final.worker == f"fake-worker@{worker}", final.error
    assert cluster.workers[worker].poll() is None, "the worker quit when Redis went away"
    time.sleep(WORKER_TIMEOUT_S)  # long enough for a wrongly re-queued copy to start
    assert f"job {job.id}: worker {worker} stopped responding" not in cluster.log("server"), "taken for abandoned"
    conn = cluster.redis_client()
    assert RQJob.fetch(job.id, connection=conn, serializer=JSONSerializer).get_status().value == "finished"
    assert conn.zcard("rq:wip:kernelscope") == 0 and conn.llen("rq:queue:kernelscope") == 0, "it runs again"
    assert "heartbeat skipped, Redis unreachable" in cluster.log(f"worker-{worker}")
    ensure_two_workers(cluster)


def test_server_killed_and_restarted_loses_nothing_and_the_sdk_waits_through_it(cluster: Cluster) -> None:
    import sdk

    client = sdk.Client(cluster.address, token=TOKEN, retry_seconds=60)
    stub = cluster.stub()
    before = client.create_job(fake_model(stub).id, ["tconv_stats"])
    before_result = before.wait(timeout=120, progress=False)
    dataset = client.upload_dataset(npz_bytes(**clips(n_per_class=2, classes=2, seed=3)), name="kept")
    slow_model = fake_model(stub, "sleep=2")
    job = client.create_job(slow_model.id, ["kernel_viz"])
    wait_state(stub, job.id, {jobs_pb2.RUNNING})

    def restart() -> None:
        cluster.kill_server(signal.SIGKILL)
        time.sleep(0.5)
        cluster.start_server()

    restarter = threading.Thread(target=restart)
    restarter.start()
    try:
        result = job.wait(timeout=120, progress=False)  # watches across the outage
    finally:
        restarter.join()
    assert result.job.state == jobs_pb2.SUCCEEDED
    assert client.read_artifact(job.id, "kernel_viz/summary.json")
    # Everything from before the restart is still there.
    assert client.get_model(slow_model.id).sha256 == slow_model.sha256
    assert client.get_dataset(dataset.id).name == "kept"
    assert client.get_job(before.id).state == "SUCCEEDED"
    names = {a.name for r in before_result.job.results for a in r.artifacts}
    assert {"tconv_stats/summary.json", "tconv_stats/big.bin"} <= names
    assert client.read_artifact(before.id, "tconv_stats/big.bin") == bytes(range(256)) * 12_000
    client.close()


def test_the_open_local_mode_says_so_and_this_server_does_not(cluster: Cluster, tmp_path: Path) -> None:
    assert "no API tokens configured" not in cluster.log("server")
    assert "API tokens of 1 tenant(s) from KERNELSCOPE_TOKENS" in cluster.log("server")
