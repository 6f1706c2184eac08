"""Assembles the gRPC server: KernelScope, Worker, grpc.health.v1 (following Redis) and server reflection,
with token auth, TLS when configured, the reaper of abandoned jobs and, on request, Prometheus metrics.

The server is gRPC's threaded one: each call holds an RPC thread until it ends. What keeps one tenant
from taking them all is admission (per-tenant caps on calls and streams, below the thread count) and
the idle timeout of upload streams.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import redis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from google.protobuf import descriptor as _descriptor
from google.protobuf import message_factory
from kernelscope.chunks import CHUNK_TAG
from kernelscope.v1 import kernelscope_pb2, kernelscope_pb2_grpc, worker_pb2, worker_pb2_grpc
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.admission import Admission
from service.api import KernelScopeServicer
from service.auth import Authenticator
from service.blobstore import BlobStore
from service.config import Config
from service.errors import UndecodableRequests
from service.reaper import Reaper
from service.tenants import Tenants
from service.uploads import ChunkViews, IdleStreams
from service.worker_api import WorkerServicer

log = logging.getLogger(__name__)

KERNELSCOPE_SERVICE = kernelscope_pb2.DESCRIPTOR.services_by_name["KernelScope"].full_name
WORKER_SERVICE = worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name
# Health is reported for the whole server ("") and for the public API by name.
HEALTH_SERVICES = ("", KERNELSCOPE_SERVICE)
# Methods whose undecodable requests are refused as INVALID_ARGUMENT: ours (KernelScope and Worker).
KERNELSCOPE_PACKAGE = "/" + kernelscope_pb2.DESCRIPTOR.package + "."


def upload_methods() -> dict[str, Any]:
    """Client-streaming methods whose requests carry `bytes chunk = 2`: "/service/Method" -> request class."""
    found = {}
    for service in (kernelscope_pb2.DESCRIPTOR.services_by_name["KernelScope"], worker_pb2.DESCRIPTOR.services_by_name["Worker"]):
        for method in service.methods:
            chunk = method.input_type.fields_by_name.get("chunk")
            if (
                method.client_streaming
                and chunk is not None
                and chunk.type == _descriptor.FieldDescriptor.TYPE_BYTES
                and (chunk.number << 3) | 2 == CHUNK_TAG
            ):
                found[f"/{service.full_name}/{method.name}"] = message_factory.GetMessageClass(method.input_type)
    return found


def connect_redis(config: Config) -> redis.Redis:
    """A client that fails fast (one retry, no backoff) so a Redis outage surfaces as UNAVAILABLE quickly."""
    if not config.redis_url:
        raise ValueError("redis_url is empty: set REDIS_URL")
    return redis.Redis.from_url(
        config.redis_url,
        socket_timeout=config.redis_timeout,
        socket_connect_timeout=config.redis_timeout,
        retry=Retry(NoBackoff(), 1),
    )


def build_server(config: Config) -> tuple[grpc.Server, int]:
    """A started server bound to config.host:config.port (0 picks a port), and the port it got.

    Stop it with `server.stop(grace)`; its Redis health monitor, reaper and metrics endpoint end with it.
    Raises ValueError for a bad tokens file and OSError for unreadable TLS files or a port in use.
    """
    auth = Authenticator(config.tokens_file, config.tokens, config.worker_token)
    credentials = _tls_credentials(config)
    conn = connect_redis(config)
    store = BlobStore(config.data_dir)
    swept = store.sweep_tmp()
    if swept:
        log.info("removed %d stale temp files from %s", swept, store.tmp_dir)
    metrics = _metrics(conn, config)
    on_upload = metrics.record_upload if metrics else None
    tenants = Tenants(conn, config, store, on_job_end=metrics.observe_job if metrics else None)
    admission = Admission(f"/{KERNELSCOPE_SERVICE}/", auth.tenant, config.tenant_max_rpcs, config.tenant_max_streams)
    if config.tenant_max_rpcs >= config.max_workers:
        log.warning(
            "KERNELSCOPE_TENANT_MAX_RPCS (%d) is not below KERNELSCOPE_MAX_WORKERS (%d): one tenant can take every RPC thread",
            config.tenant_max_rpcs, config.max_workers,
        )
    upload_streams = upload_methods()
    idle = IdleStreams(config.upload_idle_timeout, upload_streams)

    server = grpc.server(
        ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="kernelscope-rpc"),
        # Outermost first: Admission refuses before anything runs; IdleStreams watches gRPC's own request
        # iterator; UndecodableRequests wraps whatever deserializer ChunkViews put in place.
        interceptors=(admission, idle, UndecodableRequests(KERNELSCOPE_PACKAGE), ChunkViews(upload_streams)),
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # A fixed HTTP/2 window instead of BDP probing, which grows it without bound on a fast link:
            # then a client faster than the disk makes gRPC buffer the backlog in the server's memory.
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", config.stream_window_bytes),
        ],
    )
    kernelscope_pb2_grpc.add_KernelScopeServicer_to_server(
        KernelScopeServicer(config, store, tenants, auth, on_upload=on_upload), server
    )
    worker_pb2_grpc.add_WorkerServicer_to_server(WorkerServicer(config, store, tenants, auth, on_upload=on_upload), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (KERNELSCOPE_SERVICE, WORKER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{config.host}:{config.port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    endpoint = metrics.start_http_server(config.metrics_port, addr=config.host) if metrics else None
    server.start()
    (log.warning if auth.open else log.info)("%s", auth.describe())
    if credentials:
        log.info("TLS on with certificate %s", config.tls_cert)
    if endpoint:
        log.info("Prometheus metrics on http://%s:%d/metrics", config.host, endpoint.port)
    healthy = _report_health(health_servicer, conn)
    if not healthy:
        log.warning("Redis at %s is unreachable: health NOT_SERVING", config.redis_url)
    threading.Thread(
        target=_monitor_health,
        args=(server, health_servicer, conn, config.health_interval, healthy),
        name="kernelscope-health",
        daemon=True,
    ).start()
    stopped = threading.Event()
    threading.Thread(target=Reaper(conn, config).run, args=(stopped,), name="kernelscope-reaper", daemon=True).start()
    threading.Thread(target=idle.run, args=(stopped,), name="kernelscope-idle-streams", daemon=True).start()
    threading.Thread(target=_on_termination, args=(server, stopped, endpoint), name="kernelscope-stop", daemon=True).start()
    return server, port


def _tls_credentials(config: Config) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    try:
        chain, key = Path(config.tls_cert).read_bytes(), Path(config.tls_key).read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read the TLS certificate or key: {exc}") from None
    return grpc.ssl_server_credentials([(key, chain)])


def _metrics(conn: redis.Redis, config: Config) -> Any:
    """The Metrics of this server when KERNELSCOPE_METRICS_PORT is set (prometheus_client is imported only then)."""
    if not config.metrics_port:
        return None
    from service.metrics import Metrics

    return Metrics(conn, config.queue_name)


def _on_termination(server: grpc.Server, stopped: threading.Event, endpoint: Any) -> None:
    server.wait_for_termination()
    stopped.set()
    if endpoint is not None:
        endpoint.stop()


def serve(config: Config, stop: threading.Event) -> None:
    """Run until `stop` is set, then refuse new RPCs and give running ones config.shutdown_grace seconds."""
    server, port = build_server(config)
    log.info(
        "kernelscope service listening on %s:%d (%s, data in %s, queue %r)",
        config.host, port, "TLS" if config.tls_cert else "plaintext", config.data_dir, config.queue_name,
    )
    stop.wait()
    log.info("stopping: %.1f s grace for running RPCs", config.shutdown_grace)
    server.stop(config.shutdown_grace).wait()


def _report_health(servicer: health.HealthServicer, conn: redis.Redis) -> bool:
    try:
        healthy = bool(conn.ping())
    except redis.RedisError:
        healthy = False
    status = health_pb2.HealthCheckResponse.SERVING if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in HEALTH_SERVICES:
        servicer.set(name, status)
    return healthy


def _monitor_health(
    server: grpc.Server, servicer: health.HealthServicer, conn: redis.Redis, interval: float, healthy: bool
) -> None:
    """Ping Redis every `interval` s while the server runs; log each change of health."""
    while server.wait_for_termination(timeout=interval):  # True: timed out, the server still runs
        now = _report_health(servicer, conn)
        if now != healthy:
            log.warning("Redis is %s: health %s", "back" if now else "unreachable", "SERVING" if now else "NOT_SERVING")
            healthy = now
    conn.close()
