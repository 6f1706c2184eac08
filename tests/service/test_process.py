"""The service as its own process: `python -m service` stops cleanly on SIGTERM, never imports torch while
serving a job, and a running job is cancelled through a real (forking) RQ worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kernelscope.v1 import jobs_pb2, kernelscope_pb2_grpc, models_pb2, tasks_pb2

from deploy.stack import free_port
from tests.service import fake_worker
from tests.service.helpers import onnx_bytes, upload_model

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "process-test-token"


def env_for(redis_url: str, data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELSCOPE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        REDIS_URL=redis_url,
        KERNELSCOPE_PORT=str(port),
        KERNELSCOPE_DATA_DIR=str(data_dir),
        KERNELSCOPE_WORKER_TOKEN=TOKEN,
        KERNELSCOPE_POLL_INTERVAL="0.02",
        **extra,
    )
    return env


def wait_serving(address: str, process: subprocess.Popen, timeout: float = 30) -> grpc.Channel:
    channel = grpc.insecure_channel(address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return channel
        except grpc.RpcError:
            pass
        time.sleep(0.05)
    raise AssertionError("the server never answered SERVING")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


def test_python_m_service_serves_and_stops_on_sigterm(tmp_path: Path, redis_url: str, redis_conn) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service"], env=env_for(redis_url, tmp_path / "data", port),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        channel = wait_serving(f"127.0.0.1:{port}", process)
        model = upload_model(kernelscope_pb2_grpc.KernelScopeStub(channel), onnx_bytes())
        assert (tmp_path / "data" / "blobs" / model.sha256[:2] / model.sha256).is_file()
        channel.close()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        stop(process)
    assert process.returncode == 0, output
    assert f"listening on 127.0.0.1:{port}" in output and "SIGTERM" in output
    assert "no API tokens configured: every caller is tenant 'default'" in output  # open, and it says so


def test_python_m_service_refuses_a_bad_tokens_file_naming_the_line(tmp_path: Path, redis_url: str) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# ok\nalice:not-a-digest\n")
    env = env_for(redis_url, tmp_path / "data", free_port(), KERNELSCOPE_TOKENS_FILE=str(tokens))
    done = subprocess.run([sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"{tokens} line 2" in done.stderr, done.stderr


def test_python_m_service_refuses_to_start_without_redis(tmp_path: Path) -> None:
    env = env_for("", tmp_path, free_port())
    done = subprocess.run([sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "REDIS_URL" in done.stderr


_SERVER_SCRIPT = textwrap.dedent(
    """
    import sys
    from service import Config, build_server
    server, port = build_server(Config.from_env())
    print(port, flush=True)
    sys.stdin.readline()  # the test writes a line once it is done with the server
    heavy = sorted(m for m in ("torch", "torchvision", "onnxruntime", "onnx", "workers") if m in sys.modules)
    print("heavy:" + ",".join(heavy), flush=True)
    server.stop(0).wait()
    """
)


def test_the_server_process_never_imports_torch(tmp_path: Path, redis_url: str, redis_conn, monkeypatch, run_jobs) -> None:
    env = env_for(redis_url, tmp_path / "data", 0, KERNELSCOPE_JOB_FUNCTION=fake_worker.JOB_FUNCTION)
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVER_SCRIPT], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(process.stdout.readline())
        address = f"127.0.0.1:{port}"
        stub = kernelscope_pb2_grpc.KernelScopeStub(wait_serving(address, process))
        monkeypatch.setenv(fake_worker.SERVICE_ENV, address)
        monkeypatch.setenv(fake_worker.TOKEN_ENV, TOKEN)
        model = upload_model(stub, onnx_bytes())
        job = stub.CreateJob(jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name="kernel_viz")]))
        describe = stub.DescribeModel.future(models_pb2.DescribeModelRequest(model_id=model.id), timeout=30)
        time.sleep(0.3)
        run_jobs()
        assert describe.result().layers
        final = stub.WaitJob(jobs_pb2.WaitJobRequest(job_id=job.id), timeout=10)
        assert final.state == jobs_pb2.SUCCEEDED, final.error
        assert b"".join(c.data for c in stub.ReadArtifact(jobs_pb2.ReadArtifactRequest(job_id=job.id, name="kernel_viz/summary.json")))
        output, _ = process.communicate("done\n", timeout=20)
    finally:
        stop(process)
    assert "heavy:\n" in output, output


# The project's worker class (RQ's plain Worker waits up to a minute for its command listener when it exits, see
# KernelScopeWorker), in burst mode, on the fake job function.
_WORKER_SCRIPT = textwrap.dedent(
    """
    import os, redis
    from rq import Queue
    from rq.serializers import JSONSerializer
    from workers.__main__ import KernelScopeWorker
    conn = redis.Redis.from_url(os.environ["REDIS_URL"])
    queue = Queue("kernelscope", connection=conn, serializer=JSONSerializer)
    KernelScopeWorker([queue], connection=conn, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")
    """
)


def test_cancelling_a_running_job_stops_it_on_the_worker(start_server, redis_url: str, tmp_path: Path) -> None:
    server = start_server(job_function=fake_worker.JOB_FUNCTION)
    stub = server.stub()
    job = stub.CreateJob(
        jobs_pb2.CreateJobRequest(model_id=upload_model(stub, onnx_bytes()).id, tasks=[tasks_pb2.Task(name="tconv_stats")])
    )
    env = env_for(redis_url, tmp_path, 0, **{fake_worker.MODE_ENV: "sleep=120"})
    worker = subprocess.Popen([sys.executable, "-c", _WORKER_SCRIPT], env=env)
    try:
        deadline = time.monotonic() + 30
        while stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)).state != jobs_pb2.RUNNING:
            assert time.monotonic() < deadline, "the worker never started the job"
            time.sleep(0.05)
        started = time.monotonic()
        assert stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id)).state in (jobs_pb2.RUNNING, jobs_pb2.CANCELLED)
        final = stub.WaitJob(jobs_pb2.WaitJobRequest(job_id=job.id), timeout=60)
        assert final.state == jobs_pb2.CANCELLED and final.error.reason == "JOB_CANCELLED"
        # The job sleeps 120 s: ending in under 60 means it was stopped, however busy the machine (the bounds were
        # 4.5 s of a 5 s sleep and 20 s for the burst worker to exit, and a loaded run missed the second).
        assert time.monotonic() - started < 60, "the job ran on instead of being stopped"
        worker.wait(60)
    finally:
        stop(worker)
