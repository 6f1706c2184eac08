"""A dress rehearsal without containers: the Kubernetes service container's and the compose CPU worker's
commands, run with the environment their manifests give them, against a real Redis. Only what a cluster
would provide changes (Redis, ports, mounted paths), and each of those must be a variable the manifest sets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deploy import probe
from deploy.stack import free_port
from tests.deploy import manifests
from tests.deploy.manifests import ROOT, Container
from tests.service.helpers import scrape

# Bounds on a process starting and stopping. The compose worker imports torch, onnxruntime and every analysis
# before it registers (about 4 s of CPU): on a loaded machine (load 16 on 2 cores) that takes minutes.
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 120.0
WORKER_TOKEN = "rehearsal-worker-token"
TENANT_TOKEN = "rehearsal-tenant-token"


def container(where_prefix: str, role: str) -> Container:
    (found,) = [
        c for c in manifests.containers({"KERNELSCOPE_WORKER_TOKEN": WORKER_TOKEN})
        if c.where.startswith(where_prefix) and c.role == role
    ]
    return found


def process_env(c: Container, **cluster: str) -> dict[str, str]:
    env = c.effective_env(secret_value=WORKER_TOKEN)
    assert set(cluster) <= set(env), f"{c.where} does not set {sorted(set(cluster) - set(env))}"
    env.update(cluster)
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **env}


def argv(c: Container) -> list[str]:
    assert c.command and c.command[0] == "python"
    return [sys.executable, *c.command[1:]]


def wait_for(condition: Any, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {START_TIMEOUT_S:.0f}s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@pytest.mark.slow
@pytest.mark.timeout(2 * START_TIMEOUT_S)  # its own bounds, not the suite's 300 s, say what was late
def test_the_manifests_start_a_service_that_serves_health_metrics_and_tokens_and_a_worker_it_sees(
    redis_url: str, redis_conn: Any, tmp_path: Path
) -> None:
    import grpc
    from kernelscope.v1 import kernelscope_pb2_grpc, models_pb2

    from service.auth import hash_token

    service = container("k8s", "service")
    port, metrics_port = free_port(), free_port()
    tokens = tmp_path / "api" / "tokens"
    tokens.parent.mkdir()
    tokens.write_text(f"alice:{hash_token(TENANT_TOKEN)}\n")
    env = process_env(
        service,
        REDIS_URL=redis_url,
        KERNELSCOPE_HOST="127.0.0.1",  # not 0.0.0.0 on a shared machine
        KERNELSCOPE_PORT=str(port),
        KERNELSCOPE_METRICS_PORT=str(metrics_port),
        KERNELSCOPE_DATA_DIR=str(tmp_path / "data"),
        KERNELSCOPE_TOKENS_FILE=str(tokens),
    )
    queue = env["KERNELSCOPE_QUEUE"]
    server_log = tmp_path / "service.log"
    worker_log = tmp_path / "worker.log"
    with open(server_log, "wb") as out:
        server = subprocess.Popen(argv(service), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    worker = None
    try:
        target = f"127.0.0.1:{port}"
        wait_for(lambda: probe.check(target, timeout=1.0)[0], "health SERVING", server, server_log)
        # The image's HEALTHCHECK command, in the container's environment.
        health = subprocess.run([sys.executable, "-m", "deploy.probe"], env=env, capture_output=True, timeout=START_TIMEOUT_S)
        assert health.returncode == 0, health.stdout

        with grpc.insecure_channel(target) as channel:
            stub = kernelscope_pb2_grpc.KernelScopeStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListModels(models_pb2.ListModelsRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # the tokens file took effect
            stub.ListModels(models_pb2.ListModelsRequest(), timeout=10, metadata=(("authorization", f"Bearer {TENANT_TOKEN}"),))

        seen = scrape(metrics_port)
        assert seen[("kernelscope_redis_up", frozenset())] == 1
        workers_key = ("kernelscope_workers", frozenset({("queue", queue)}))
        assert seen[workers_key] == 0

        cpu_worker = container("compose service worker-cpu", "worker")
        worker_env = process_env(
            cpu_worker,
            REDIS_URL=redis_url,
            KERNELSCOPE_SERVICE=target,
            KERNELSCOPE_WORKER_CACHE=str(tmp_path / "cache"),
        )
        assert worker_env["KERNELSCOPE_QUEUE"] == queue
        with open(worker_log, "wb") as out:
            worker = subprocess.Popen(argv(cpu_worker), env=worker_env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        wait_for(lambda: scrape(metrics_port)[workers_key] == 1, "the worker registered on the queue", worker, worker_log)
        assert stop(worker) == 0, worker_log.read_text()[-3000:]
        assert scrape(metrics_port)[workers_key] == 0  # a warm shutdown deregisters
    finally:
        if worker is not None:
            stop(worker)
        code = stop(server)
    assert code == 0, server_log.read_text()[-3000:]
