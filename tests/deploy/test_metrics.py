"""service/metrics.py against a real Redis: jobs planted in every RQ state are counted as planted, durations
and upload bytes add up, /metrics serves the same text, and a dead Redis degrades to kernelscope_redis_up 0."""

from __future__ import annotations

import math
import urllib.request
from datetime import timedelta
from typing import Any

import pytest

from service.metrics import JOB_STATES, Metrics
from tests.service.helpers import Samples, metric_samples

QUEUE = "ks-metrics-test"

# The Metrics a job running inside the test's worker scrapes, and what it saw.
_running: dict[str, Any] = {}


def succeed() -> int:
    return 1


def fail() -> None:
    raise RuntimeError("planted failure")


def scrape_while_running() -> None:
    _running["seen"] = metric_samples(_running["metrics"].render())


def jobs(seen: Samples) -> dict[str, float]:
    return {
        dict(labels)["state"]: value
        for (name, labels), value in seen.items()
        if name == "kernelscope_jobs" and dict(labels)["queue"] == QUEUE
    }


def gauge(seen: Samples, name: str) -> float:
    return seen[(name, frozenset({("queue", QUEUE)}))]


@pytest.fixture
def queue(redis_conn: Any) -> Any:
    from rq import Queue
    from rq.serializers import JSONSerializer

    return Queue(QUEUE, connection=redis_conn, serializer=JSONSerializer)


def run_burst(queue: Any) -> None:
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    SimpleWorker([queue], connection=queue.connection, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")


def test_jobs_planted_in_every_state_are_counted_from_redis(redis_conn: Any, queue: Any) -> None:
    metrics = Metrics(redis_conn, QUEUE)
    empty = metric_samples(metrics.render())
    assert empty[("kernelscope_redis_up", frozenset())] == 1
    assert jobs(empty) == {state: 0 for state in JOB_STATES}
    assert gauge(empty, "kernelscope_queue_depth") == 0 and gauge(empty, "kernelscope_workers") == 0

    here = __name__
    _running["metrics"] = metrics
    for function in ("succeed", "scrape_while_running", "succeed", "fail"):
        queue.enqueue(f"{here}.{function}")
    run_burst(queue)
    during = _running.pop("seen")  # scraped by the second job, while it ran
    assert jobs(during) == {**{s: 0 for s in JOB_STATES}, "queued": 2, "started": 1, "finished": 1}
    assert gauge(during, "kernelscope_queue_depth") == 2
    assert gauge(during, "kernelscope_workers") == 1

    waiting = [queue.enqueue(f"{here}.succeed") for _ in range(5)]
    waiting[0].cancel()
    for _ in range(2):
        queue.enqueue(f"{here}.succeed", depends_on=waiting[1])
    queue.enqueue_in(timedelta(hours=1), f"{here}.succeed")
    after = metric_samples(metrics.render())
    assert jobs(after) == {
        "queued": 4, "started": 0, "deferred": 2, "scheduled": 1, "finished": 3, "failed": 1, "canceled": 1,
    }
    assert gauge(after, "kernelscope_queue_depth") == 4
    assert gauge(after, "kernelscope_workers") == 0  # the burst worker has left


def test_job_durations_land_in_their_buckets_by_outcome(redis_conn: Any) -> None:
    metrics = Metrics(redis_conn, QUEUE)
    metrics.observe_job(2.0, "SUCCEEDED")
    metrics.observe_job(3.5, "succeeded")
    metrics.observe_job(100.0, "FAILED")
    metrics.observe_job(-5.0, "CANCELLED")  # clocks that disagree: counted as 0 s
    seen = metric_samples(metrics.render())

    def value(suffix: str, outcome: str, le: str | None = None) -> float:
        labels = {("state", outcome)} | ({("le", le)} if le else set())
        return seen[(f"kernelscope_job_duration_seconds_{suffix}", frozenset(labels))]

    assert value("count", "succeeded") == 2 and value("sum", "succeeded") == pytest.approx(5.5)
    assert value("bucket", "succeeded", "1.0") == 0 and value("bucket", "succeeded", "5.0") == 2
    assert value("bucket", "failed", "60.0") == 0 and value("bucket", "failed", "120.0") == 1
    assert value("count", "cancelled") == 1 and value("sum", "cancelled") == 0
    assert value("bucket", "cancelled", "1.0") == 1
    with pytest.raises(ValueError, match="succeeded"):
        metrics.observe_job(1.0, "RUNNING")
    with pytest.raises(ValueError, match="NaN"):
        metrics.observe_job(math.nan, "FAILED")


def test_upload_bytes_add_up_by_kind(redis_conn: Any) -> None:
    metrics = Metrics(redis_conn, QUEUE)
    metrics.record_upload("model", 1000)
    metrics.record_upload("model", 24)
    metrics.record_upload("dataset", 7)
    seen = metric_samples(metrics.render())
    assert seen[("kernelscope_upload_bytes_total", frozenset({("kind", "model")}))] == 1024
    assert seen[("kernelscope_uploads_total", frozenset({("kind", "model")}))] == 2
    assert seen[("kernelscope_upload_bytes_total", frozenset({("kind", "dataset")}))] == 7
    assert seen[("kernelscope_upload_bytes_total", frozenset({("kind", "artifact")}))] == 0  # present before any
    with pytest.raises(ValueError, match="kind"):
        metrics.record_upload("weights", 1)
    with pytest.raises(ValueError, match=">= 0"):
        metrics.record_upload("model", -1)


def test_http_endpoint_serves_the_registry(redis_conn: Any, queue: Any) -> None:
    metrics = Metrics(redis_conn, QUEUE)
    Metrics(redis_conn, QUEUE)  # a second instance in the same process: private registries do not collide
    queue.enqueue(f"{__name__}.succeed")
    metrics.record_upload("artifact", 5)
    endpoint = metrics.start_http_server(0, "127.0.0.1")
    try:
        assert endpoint.port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=10) as reply:
            assert reply.status == 200
            served = metric_samples(reply.read())
    finally:
        endpoint.stop()
    assert jobs(served)["queued"] == 1
    assert served[("kernelscope_upload_bytes_total", frozenset({("kind", "artifact")}))] == 5
    assert not any(name.startswith(("python_", "process_")) for name, _labels in served)  # only ours


def test_a_dead_redis_reports_down_instead_of_failing_the_scrape(tmp_path: Any) -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # Fail fast, as the service's own client does (service/server.py connect_redis).
    dead = redis.Redis(unix_socket_path=str(tmp_path / "nobody-listens.sock"), socket_timeout=1, retry=Retry(NoBackoff(), 1))
    metrics = Metrics(dead, QUEUE)
    metrics.record_upload("model", 3)
    seen = metric_samples(metrics.render())
    assert seen[("kernelscope_redis_up", frozenset())] == 0
    assert not jobs(seen) and not any(name == "kernelscope_queue_depth" for name, _ in seen)
    assert seen[("kernelscope_upload_bytes_total", frozenset({("kind", "model")}))] == 3  # the rest still served
