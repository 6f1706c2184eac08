"""Service-test fixtures: a server whose jobs run the torch-free fake worker, and a way to run them."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from tests.service import fake_worker

@pytest.fixture
def start_fake_server(start_server: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """start_fake_server(**config): a server that enqueues tests.service.fake_worker.run, which writes its
    artifacts back to that server."""

    def start(**overrides: Any) -> Any:
        server = start_server(job_function=fake_worker.JOB_FUNCTION, **overrides)
        monkeypatch.setenv(fake_worker.SERVICE_ENV, server.address)
        monkeypatch.setenv(fake_worker.TOKEN_ENV, server.config.worker_token)
        return server

    return start


@pytest.fixture
def fake_server(start_fake_server: Callable[..., Any]) -> Any:
    """A server with the default configuration whose jobs run the fake worker."""
    return start_fake_server()


@pytest.fixture
def run_jobs(redis_conn: Any) -> Callable[..., None]:
    """run_jobs(queue_name): an RQ SimpleWorker in this thread works through the queue, then returns."""
    from rq import Queue, SimpleWorker
    from rq.serializers import JSONSerializer

    from service import defaults

    def run(queue_name: str = defaults.QUEUE_NAME) -> None:
        queue = Queue(queue_name, connection=redis_conn, serializer=JSONSerializer)
        SimpleWorker([queue], connection=redis_conn, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")

    return run
