"""Prometheus metrics of the service, on a registry of their own.

Two kinds of figures:

- read from Redis at scrape time (a collector, so nothing drifts when several replicas or a restart
  are involved): jobs by RQ state, queue depth, workers listening, and whether Redis answered;
- counted as they happen in this process: job durations (`observe_job`) and upload bytes
  (`record_upload`).

Every service replica reports the same Redis-derived gauges: aggregate those with max(), not sum();
the counters and the histogram are per replica and do sum.

The registry is private (not prometheus_client's global REGISTRY) so that several servers in one
process, as in the tests, never collide, and so /metrics shows only what is defined here.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rq import Queue, Worker
from rq.serializers import JSONSerializer

log = logging.getLogger(__name__)

# RQ states reported by kernelscope_jobs{state}; "queued" is the queue's list, the rest RQ's registries.
JOB_STATES = ("queued", "started", "deferred", "scheduled", "finished", "failed", "canceled")
# How a job ended, as the API names it (jobs.proto JobState), lower-cased: the histogram's label.
JOB_OUTCOMES = ("succeeded", "failed", "cancelled")
# What an upload carried: a model or dataset from a client, an artifact from a worker.
UPLOAD_KINDS = ("model", "dataset", "artifact")
# Seconds; analyses take from seconds (tconv_stats on a small model) to an hour (JOB_TIMEOUT's default).
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)


class Metrics:
    """The service's metrics: `observe_job`, `record_upload`, `render` and `start_http_server`."""

    def __init__(self, conn: redis.Redis, queue_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.job_duration = Histogram(
            "kernelscope_job_duration_seconds",
            "Seconds from a job's start on a worker to its end, by how it ended",
            ["state"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "kernelscope_upload_bytes",
            "Bytes received in completed uploads, by kind (model, dataset, artifact)",
            ["kind"],
            registry=self.registry,
        )
        self.uploads = Counter(
            "kernelscope_uploads", "Completed uploads, by kind (model, dataset, artifact)", ["kind"], registry=self.registry
        )
        # Every label value exists from the start, so rate() and absent() see zeros rather than nothing.
        for outcome in JOB_OUTCOMES:
            self.job_duration.labels(outcome)
        for kind in UPLOAD_KINDS:
            self.upload_bytes.labels(kind)
            self.uploads.labels(kind)
        self.registry.register(QueueCollector(conn, queue_name))

    def observe_job(self, seconds: float, state: str) -> None:
        """Record one ended job: `state` is its outcome ("SUCCEEDED", "FAILED" or "CANCELLED", any case).

        A negative duration (the worker's and the service's clocks disagree) counts as 0 s.
        """
        outcome = state.lower()
        if outcome not in JOB_OUTCOMES:
            raise ValueError(f"job state must be one of {', '.join(JOB_OUTCOMES)} (any case), got {state!r}")
        if math.isnan(seconds):
            raise ValueError("job duration is NaN")
        self.job_duration.labels(outcome).observe(max(float(seconds), 0.0))

    def record_upload(self, kind: str, nbytes: int) -> None:
        """Count one completed upload of `nbytes` bytes; `kind` is one of UPLOAD_KINDS."""
        if kind not in UPLOAD_KINDS:
            raise ValueError(f"upload kind must be one of {', '.join(UPLOAD_KINDS)}, got {kind!r}")
        if nbytes < 0:
            raise ValueError(f"upload size must be >= 0 bytes, got {nbytes}")
        self.uploads.labels(kind).inc()
        self.upload_bytes.labels(kind).inc(nbytes)

    def render(self) -> bytes:
        """The exposition text a scrape of /metrics returns."""
        return generate_latest(self.registry)

    def start_http_server(self, port: int, addr: str = "0.0.0.0") -> "MetricsEndpoint":
        """Serve /metrics on addr:port (0 picks a free port) from a daemon thread; stop it with `.stop()`."""
        server, thread = _start_http_server(port, addr=addr, registry=self.registry)
        return MetricsEndpoint(port=int(server.server_port), addr=addr, _server=server, _thread=thread)


@dataclass
class MetricsEndpoint:
    """A running /metrics HTTP server."""

    port: int
    addr: str
    _server: Any = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class QueueCollector(Collector):
    """Reads the queue's state from Redis on every scrape, read-only (no registry cleanup runs).

    Registry counts are what RQ's registries hold: entries past their TTL stay counted until a worker's
    periodic maintenance removes them. When Redis does not answer, the scrape still succeeds and
    reports kernelscope_redis_up 0 without the Redis-derived figures.
    """

    def __init__(self, conn: redis.Redis, queue_name: str) -> None:
        self.conn = conn
        self.queue = Queue(queue_name, connection=conn, serializer=JSONSerializer)
        self._registries = {
            "started": self.queue.started_job_registry,
            "deferred": self.queue.deferred_job_registry,
            "scheduled": self.queue.scheduled_job_registry,
            "finished": self.queue.finished_job_registry,
            "failed": self.queue.failed_job_registry,
            "canceled": self.queue.canceled_job_registry,
        }

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        up, jobs, depth, workers = self._families()
        try:
            counts, worker_count = self._read()
        except redis.RedisError as exc:
            log.warning("metrics: cannot read queue %r from Redis: %s", self.queue.name, exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        name = self.queue.name
        for state in JOB_STATES:
            jobs.add_metric([name, state], counts[state])
        depth.add_metric([name], counts["queued"])
        workers.add_metric([name], worker_count)
        yield from (up, jobs, depth, workers)

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("kernelscope_redis_up", "1 when this scrape could read the queue from Redis, else 0"),
            GaugeMetricFamily(
                "kernelscope_jobs", "RQ jobs of the queue by state, read from Redis at scrape time", labels=["queue", "state"]
            ),
            GaugeMetricFamily("kernelscope_queue_depth", "Jobs waiting in the queue for a worker", labels=["queue"]),
            GaugeMetricFamily("kernelscope_workers", "RQ workers registered on the queue", labels=["queue"]),
        )

    def _read(self) -> tuple[dict[str, int], int]:
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.llen(self.queue.key)
            for registry in self._registries.values():
                pipe.zcard(registry.key)
            replies = pipe.execute()
        counts = {"queued": int(replies[0])}
        counts.update({state: int(n) for state, n in zip(self._registries, replies[1:])})
        return counts, int(Worker.count(connection=self.conn, queue=self.queue))
