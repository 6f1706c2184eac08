"""Retention: an ended job is deleted config.job_ttl seconds after its end, with its artifacts; a blob goes
with its last user only, and the quota is credited."""

from __future__ import annotations

import time

import grpc
from kernelscope.v1 import jobs_pb2, tasks_pb2

from service.registry import Keys
from service.retention import Retention
from tests.service.helpers import model_messages, onnx_bytes, stored_files

WAIT_S = 60.0


def tconv(model_id: str) -> jobs_pb2.CreateJobRequest:
    return jobs_pb2.CreateJobRequest(model_id=model_id, tasks=[tasks_pb2.Task(name="tconv_stats")])


def artifact_blobs(job: jobs_pb2.Job) -> set[str]:
    return {a.sha256 for r in job.results for a in r.artifacts}


def blob_names(server) -> set[str]:
    return {p.name for p in stored_files(server.config.data_dir)["blobs"]}


def test_the_server_deletes_an_ended_job_and_its_artifacts_after_the_ttl(start_fake_server, run_jobs, redis_conn) -> None:
    server = start_fake_server(job_ttl=2, reap_interval=0.2)
    stub = server.stub()
    model = stub.UploadModel(model_messages(onnx_bytes()), timeout=30)
    job = stub.CreateJob(tconv(model.id), timeout=30)
    run_jobs()
    try:
        done = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id), timeout=30)
        assert done.state == jobs_pb2.SUCCEEDED and artifact_blobs(done) and artifact_blobs(done) <= blob_names(server)
    except grpc.RpcError as error:  # a machine so busy that the reaper got there first
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()

    deadline = time.monotonic() + WAIT_S  # the reaper's pass after end + 2 s, on however busy a machine
    while True:
        try:
            stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id), timeout=30)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
            break
        assert time.monotonic() < deadline, f"job {job.id} still there {WAIT_S} s after its end"
        time.sleep(0.1)
    assert blob_names(server) == {model.sha256}
    assert list(stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=30).jobs) == []
    assert int(redis_conn.get(Keys().usage())) == len(onnx_bytes())
    assert redis_conn.zcard(Keys.RETENTION) == 0


def test_a_blob_two_jobs_share_goes_with_the_later_one(start_fake_server, run_jobs, redis_conn) -> None:
    """Both jobs write the same artifact bytes; sweeps run at chosen times around their two deadlines."""
    ttl = 1000
    server = start_fake_server(job_ttl=ttl)
    stub = server.stub()
    model = stub.UploadModel(model_messages(onnx_bytes()), timeout=30)
    first = stub.CreateJob(tconv(model.id), timeout=30)
    run_jobs()
    second = stub.CreateJob(tconv(model.id), timeout=30)
    run_jobs()
    queued = stub.CreateJob(tconv(model.id), timeout=30)  # never run: kept whatever the time
    ended = [stub.GetJob(jobs_pb2.GetJobRequest(job_id=j.id), timeout=30) for j in (first, second)]
    assert [j.state for j in ended] == [jobs_pb2.SUCCEEDED] * 2
    shared = artifact_blobs(ended[0]) & artifact_blobs(ended[1])
    assert shared, "the fake worker writes the same bytes for the same task"
    t1, t2 = (j.end_time.ToNanoseconds() / 1e9 for j in ended)
    assert t2 > t1

    retention = Retention(redis_conn, server.config)
    assert retention.sweep(now=t1 + ttl - 0.001) == []
    assert retention.sweep(now=(t1 + t2) / 2 + ttl) == [first.id]
    assert shared <= blob_names(server)  # the second job still uses them
    assert retention.sweep(now=t2 + ttl + 1) == [second.id]
    assert blob_names(server) == {model.sha256}
    assert int(redis_conn.get(Keys().usage())) == len(onnx_bytes())  # the artifacts' bytes were credited
    assert [j.id for j in stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=30).jobs] == [queued.id]
    assert stub.GetJob(jobs_pb2.GetJobRequest(job_id=queued.id), timeout=30).state == jobs_pb2.QUEUED
    assert redis_conn.zscore(Keys.RETENTION, queued.id) is not None  # looked at again later


def test_jobs_from_before_retention_are_scheduled_once(start_fake_server, run_jobs, redis_conn) -> None:
    server = start_fake_server(job_ttl=1000)
    stub = server.stub()
    model = stub.UploadModel(model_messages(onnx_bytes()), timeout=30)
    job = stub.CreateJob(tconv(model.id), timeout=30)
    run_jobs()
    stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id), timeout=30)
    redis_conn.delete(Keys.RETENTION, "ks:retention:backfilled")  # as a Redis written by an older service
    retention = Retention(redis_conn, server.config)
    assert retention.sweep(now=time.time()) == []  # scheduled now, looked at now: ended too recently
    assert redis_conn.zscore(Keys.RETENTION, job.id) is not None
    assert retention.sweep(now=time.time() + 1001) == [job.id]
