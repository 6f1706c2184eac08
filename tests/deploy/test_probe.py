"""deploy/probe.py: exit 0 only when the target's gRPC health check answers SERVING."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import pytest

from deploy import probe
from deploy.stack import free_port
from tests.deploy.manifests import ROOT


@pytest.fixture
def health_server() -> Iterator[tuple[str, Any]]:
    """A bare gRPC server with only a health service: (target, servicer) to plant a status on."""
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(0).wait()


def test_serving_is_healthy_and_anything_else_is_not(health_server: tuple[str, Any]) -> None:
    from grpc_health.v1 import health_pb2

    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("kernelscope.v1.KernelScope", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert probe.check(target) == (True, "SERVING")
    assert probe.main(["--target", target]) == 0
    assert probe.check(target, "kernelscope.v1.KernelScope") == (False, "NOT_SERVING")
    assert probe.main(["--target", target, "--service", "kernelscope.v1.KernelScope"]) == 1
    serving, seen = probe.check(target, "no.such.Service")
    assert not serving and seen.startswith("NOT_FOUND")
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert probe.main(["--target", target]) == 1


def test_nothing_listening_is_unhealthy_within_the_timeout() -> None:
    serving, seen = probe.check(f"127.0.0.1:{free_port()}", timeout=1.0)
    assert not serving and seen.startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED"))


def test_the_default_target_follows_kernelscope_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELSCOPE_PORT", "6000")
    assert probe.default_target() == "127.0.0.1:6000"
    monkeypatch.delenv("KERNELSCOPE_PORT")
    assert probe.default_target() == f"127.0.0.1:{probe.DEFAULT_PORT}"


def test_python_m_deploy_probe_exits_with_the_health(health_server: tuple[str, Any]) -> None:
    # The exact command the Dockerfile's HEALTHCHECK and compose run, in a fresh interpreter.
    from grpc_health.v1 import health_pb2

    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    env = {**os.environ, "KERNELSCOPE_PORT": target.rsplit(":", 1)[1], "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "deploy.probe"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SERVING" in done.stdout
    env["KERNELSCOPE_PORT"] = str(free_port())
    done = subprocess.run([sys.executable, "-m", "deploy.probe", "--timeout", "1"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 1


def test_a_kernelscope_server_is_serving_while_redis_answers(kernelscope_server: Any) -> None:
    assert probe.check(kernelscope_server.address) == (True, "SERVING")
