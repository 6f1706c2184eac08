"""`python -m deploy.probe`: exit 0 when a gRPC server's health check answers SERVING, else 1.

For Docker's HEALTHCHECK and for exec probes where no native gRPC probe exists (docker compose,
Kubernetes before 1.24; newer Kubernetes uses its own `grpc:` probe). The service reports
NOT_SERVING while Redis is unreachable, so this also fails then.

It imports grpc and grpc_health only (not the service package), so each probe starts quickly.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Callable

# The service's default port (service/defaults.py PORT; a test checks that they agree). Not imported
# from there because importing the service package pulls in Redis, RQ and the whole server.
DEFAULT_PORT = 50051
# Seconds the health RPC may take, connection included.
DEFAULT_TIMEOUT_S = 3.0


def default_target() -> str:
    """Loopback on the port the service in this container was told to bind (KERNELSCOPE_PORT)."""
    port = os.environ.get("KERNELSCOPE_PORT", "").strip() or str(DEFAULT_PORT)
    return f"127.0.0.1:{port}"


def check(target: str, service: str = "", timeout: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """(serving, what was seen): the health status name, or the gRPC error that prevented an answer."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=False
            )
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            name = code.name if code is not None else "ERROR"
            return False, f"{name}: {exc.details() if hasattr(exc, 'details') else exc}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def wait_serving(
    target: str,
    timeout: float,
    process: subprocess.Popen[bytes] | None = None,
    interval: float = 0.1,
    detail: Callable[[], str] = lambda: "",
) -> None:
    """Poll `check` until the server answers SERVING; RuntimeError when `process` (the server) exits
    first or `timeout` seconds pass, with `detail()` (e.g. where its log is) appended."""
    deadline = time.monotonic() + timeout
    seen = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} {detail()}".rstrip())
        serving, seen = check(target, timeout=1.0)
        if serving:
            return
        time.sleep(interval)
    raise RuntimeError(f"{target} not SERVING after {timeout:.0f}s (last seen: {seen}) {detail()}".rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=None, help="host:port (default 127.0.0.1:$KERNELSCOPE_PORT, else :50051)")
    parser.add_argument("--service", default="", help="health service name (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds (default %(default)s)")
    args = parser.parse_args(argv)
    target = args.target or default_target()
    serving, seen = check(target, args.service, args.timeout)
    print(f"{target} {args.service or '(server)'}: {seen}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
