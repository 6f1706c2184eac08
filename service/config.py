"""The service's configuration: one dataclass, read from environment variables.

Every setting has an environment variable, listed here in one place (defaults and units in
defaults.py):

    KERNELSCOPE_HOST                 interface to bind                    (127.0.0.1)
    KERNELSCOPE_PORT                 TCP port; 0 picks a free one         (50051)
    KERNELSCOPE_DATA_DIR             blob store directory                 (~/.kernelscope)
    REDIS_URL                        redis://, rediss:// or unix:// URL   (required)
    KERNELSCOPE_REDIS_TIMEOUT        seconds per Redis command            (5)
    KERNELSCOPE_QUEUE                RQ queue name                        (kernelscope)
    KERNELSCOPE_JOB_FUNCTION         dotted path RQ runs                  (workers.job.run)
    KERNELSCOPE_JOB_TIMEOUT          seconds a job may run                (3600)
    KERNELSCOPE_FAILURE_TTL          seconds RQ keeps failed jobs         (604800)
    KERNELSCOPE_REQUEST_ID_TTL       seconds a request_id is remembered   (86400)
    KERNELSCOPE_INTERNAL_JOB_TTL     seconds DescribeModel's job records live (604800)
    KERNELSCOPE_MAX_WORKERS          RPC threads                          (32)
    KERNELSCOPE_MAX_MESSAGE_BYTES    largest gRPC message                 (16MiB)
    KERNELSCOPE_STREAM_WINDOW_BYTES  HTTP/2 window per stream to the server (4MiB)
    KERNELSCOPE_SHUTDOWN_GRACE       seconds RPCs get at shutdown         (5)
    KERNELSCOPE_MAX_UPLOAD_BYTES     largest model                        (2GiB)
    KERNELSCOPE_MAX_DATASET_BYTES    largest dataset (file and decoded)   (1GiB)
    KERNELSCOPE_MAX_DATASET_SAMPLES  most samples in a dataset            (1000000)
    KERNELSCOPE_MAX_ARTIFACT_BYTES   largest artifact                     (512MiB)
    KERNELSCOPE_TENANT_QUOTA_BYTES   bytes one tenant may store; 0: no limit (50GiB)
    KERNELSCOPE_STORE_QUOTA_BYTES    bytes the whole store may hold; 0: no limit (500GiB)
    KERNELSCOPE_JOB_TTL              seconds an ended job is kept; 0: until DeleteJob (2592000)
    KERNELSCOPE_CHUNK_BYTES          streamed chunk size                  (1MiB)
    KERNELSCOPE_MAX_WAIT_SECONDS     cap on WaitJob's timeout             (60)
    KERNELSCOPE_POLL_INTERVAL        seconds between job-state looks      (0.1)
    KERNELSCOPE_DESCRIBE_TIMEOUT     seconds DescribeModel waits          (120)
    KERNELSCOPE_HEALTH_INTERVAL      seconds between Redis health pings   (2)
    KERNELSCOPE_MAX_JOBS_IN_FLIGHT   jobs a tenant may have queued/running (100)
    KERNELSCOPE_TENANT_MAX_RPCS      calls a tenant may have in flight    (16)
    KERNELSCOPE_TENANT_MAX_STREAMS   streaming calls a tenant may have open (8)
    KERNELSCOPE_UPLOAD_IDLE_TIMEOUT  seconds an upload may send nothing   (30)
    KERNELSCOPE_REAP_INTERVAL        seconds between looks for dead workers (1)
    KERNELSCOPE_WORKER_TIMEOUT       seconds of late heartbeats before a job is re-queued (15)
    KERNELSCOPE_JOB_RETRIES          times a job whose worker died is re-queued (2)
    KERNELSCOPE_WORKER_TOKEN         bearer token of the Worker service   (empty: refuse all)
    KERNELSCOPE_TOKENS_FILE          API tokens file, "tenant:sha256" lines (none)
    KERNELSCOPE_TOKENS               API tokens "tenant=token,..."        (none; neither: open, tenant "default")
    KERNELSCOPE_TLS_CERT             PEM certificate chain: TLS on        (none: plaintext)
    KERNELSCOPE_TLS_KEY              PEM private key of that certificate  (none)
    KERNELSCOPE_METRICS_PORT         Prometheus /metrics port on HOST     (0: off)

Byte sizes take a plain integer or a suffix KiB, MiB, GiB ("512MiB").
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from service import defaults


def _env(name: str, *, kind: str = "") -> dict[str, str]:
    return {"env": name, "kind": kind}


@dataclass(frozen=True)
class Config:
    """Settings of one service process; `Config.from_env()` reads them, tests build them directly."""

    host: str = field(default=defaults.HOST, metadata=_env("KERNELSCOPE_HOST"))
    port: int = field(default=defaults.PORT, metadata=_env("KERNELSCOPE_PORT"))
    data_dir: Path = field(default=defaults.DATA_DIR, metadata=_env("KERNELSCOPE_DATA_DIR"))
    redis_url: str = field(default=defaults.REDIS_URL, metadata=_env("REDIS_URL"))
    redis_timeout: float = field(default=defaults.REDIS_TIMEOUT, metadata=_env("KERNELSCOPE_REDIS_TIMEOUT"))
    queue_name: str = field(default=defaults.QUEUE_NAME, metadata=_env("KERNELSCOPE_QUEUE"))
    job_function: str = field(default=defaults.JOB_FUNCTION, metadata=_env("KERNELSCOPE_JOB_FUNCTION"))
    job_timeout: int = field(default=defaults.JOB_TIMEOUT, metadata=_env("KERNELSCOPE_JOB_TIMEOUT"))
    failure_ttl: int = field(default=defaults.FAILURE_TTL, metadata=_env("KERNELSCOPE_FAILURE_TTL"))
    request_id_ttl: int = field(default=defaults.REQUEST_ID_TTL, metadata=_env("KERNELSCOPE_REQUEST_ID_TTL"))
    internal_job_ttl: int = field(default=defaults.INTERNAL_JOB_TTL, metadata=_env("KERNELSCOPE_INTERNAL_JOB_TTL"))
    max_workers: int = field(default=defaults.MAX_WORKERS, metadata=_env("KERNELSCOPE_MAX_WORKERS"))
    max_message_bytes: int = field(
        default=defaults.MAX_MESSAGE_BYTES, metadata=_env("KERNELSCOPE_MAX_MESSAGE_BYTES", kind="bytes")
    )
    stream_window_bytes: int = field(
        default=defaults.STREAM_WINDOW_BYTES, metadata=_env("KERNELSCOPE_STREAM_WINDOW_BYTES", kind="bytes")
    )
    shutdown_grace: float = field(default=defaults.SHUTDOWN_GRACE, metadata=_env("KERNELSCOPE_SHUTDOWN_GRACE"))
    max_upload_bytes: int = field(
        default=defaults.MAX_UPLOAD_BYTES, metadata=_env("KERNELSCOPE_MAX_UPLOAD_BYTES", kind="bytes")
    )
    max_dataset_bytes: int = field(
        default=defaults.MAX_DATASET_BYTES, metadata=_env("KERNELSCOPE_MAX_DATASET_BYTES", kind="bytes")
    )
    max_dataset_samples: int = field(
        default=defaults.MAX_DATASET_SAMPLES, metadata=_env("KERNELSCOPE_MAX_DATASET_SAMPLES")
    )
    max_artifact_bytes: int = field(
        default=defaults.MAX_ARTIFACT_BYTES, metadata=_env("KERNELSCOPE_MAX_ARTIFACT_BYTES", kind="bytes")
    )
    tenant_quota_bytes: int = field(
        default=defaults.TENANT_QUOTA_BYTES, metadata=_env("KERNELSCOPE_TENANT_QUOTA_BYTES", kind="bytes")
    )
    store_quota_bytes: int = field(
        default=defaults.STORE_QUOTA_BYTES, metadata=_env("KERNELSCOPE_STORE_QUOTA_BYTES", kind="bytes")
    )
    job_ttl: int = field(default=defaults.JOB_TTL, metadata=_env("KERNELSCOPE_JOB_TTL"))
    chunk_bytes: int = field(default=defaults.CHUNK_BYTES, metadata=_env("KERNELSCOPE_CHUNK_BYTES", kind="bytes"))
    max_wait_seconds: float = field(default=defaults.MAX_WAIT_SECONDS, metadata=_env("KERNELSCOPE_MAX_WAIT_SECONDS"))
    poll_interval: float = field(default=defaults.POLL_INTERVAL, metadata=_env("KERNELSCOPE_POLL_INTERVAL"))
    describe_timeout: float = field(default=defaults.DESCRIBE_TIMEOUT, metadata=_env("KERNELSCOPE_DESCRIBE_TIMEOUT"))
    health_interval: float = field(default=defaults.HEALTH_INTERVAL, metadata=_env("KERNELSCOPE_HEALTH_INTERVAL"))
    max_jobs_in_flight: int = field(default=defaults.MAX_JOBS_IN_FLIGHT, metadata=_env("KERNELSCOPE_MAX_JOBS_IN_FLIGHT"))
    tenant_max_rpcs: int = field(default=defaults.TENANT_MAX_RPCS, metadata=_env("KERNELSCOPE_TENANT_MAX_RPCS"))
    tenant_max_streams: int = field(default=defaults.TENANT_MAX_STREAMS, metadata=_env("KERNELSCOPE_TENANT_MAX_STREAMS"))
    upload_idle_timeout: float = field(
        default=defaults.UPLOAD_IDLE_TIMEOUT, metadata=_env("KERNELSCOPE_UPLOAD_IDLE_TIMEOUT")
    )
    reap_interval: float = field(default=defaults.REAP_INTERVAL, metadata=_env("KERNELSCOPE_REAP_INTERVAL"))
    worker_timeout: float = field(default=defaults.WORKER_TIMEOUT, metadata=_env("KERNELSCOPE_WORKER_TIMEOUT"))
    job_retries: int = field(default=defaults.JOB_RETRIES, metadata=_env("KERNELSCOPE_JOB_RETRIES"))
    worker_token: str = field(default=defaults.WORKER_TOKEN, metadata=_env("KERNELSCOPE_WORKER_TOKEN"), repr=False)
    tokens_file: str = field(default=defaults.TOKENS_FILE, metadata=_env("KERNELSCOPE_TOKENS_FILE"))
    tokens: str = field(default=defaults.TOKENS, metadata=_env("KERNELSCOPE_TOKENS"), repr=False)
    tls_cert: str = field(default=defaults.TLS_CERT, metadata=_env("KERNELSCOPE_TLS_CERT"))
    tls_key: str = field(default=defaults.TLS_KEY, metadata=_env("KERNELSCOPE_TLS_KEY"))
    metrics_port: int = field(default=defaults.METRICS_PORT, metadata=_env("KERNELSCOPE_METRICS_PORT"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        if self.chunk_bytes <= 0 or self.chunk_bytes * 2 > self.max_message_bytes:
            raise ValueError(
                f"chunk_bytes ({self.chunk_bytes}) must be positive and at most half of max_message_bytes "
                f"({self.max_message_bytes})"
            )
        for name in ("max_workers", "max_upload_bytes", "max_dataset_bytes", "max_dataset_samples",
                     "max_artifact_bytes", "job_timeout", "request_id_ttl", "max_jobs_in_flight",
                     "stream_window_bytes", "tenant_max_rpcs", "tenant_max_streams"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("poll_interval", "health_interval", "max_wait_seconds", "describe_timeout",
                     "reap_interval", "worker_timeout", "upload_idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive seconds, got {getattr(self, name)}")
        if self.job_retries < 0:
            raise ValueError(f"job_retries must be >= 0, got {self.job_retries}")
        for name in ("tenant_quota_bytes", "store_quota_bytes", "job_ttl"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: no limit), got {getattr(self, name)}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both KERNELSCOPE_TLS_CERT and KERNELSCOPE_TLS_KEY (or neither)")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be 0 (off) or a TCP port, got {self.metrics_port}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Config":
        """Settings from `environ` (default os.environ); unset or empty variables keep their defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"], "")
            if raw.strip() == "":
                continue
            values[f.name] = _parse(f, raw.strip())
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> "Config":
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)


_UNITS = {"": 1, "B": 1, "KIB": defaults.KiB, "MIB": defaults.MiB, "GIB": defaults.GiB}


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    env = f.metadata["env"]
    try:
        if f.metadata["kind"] == "bytes":
            return parse_bytes(raw)
        if f.type in (int, "int"):
            return int(raw)
        if f.type in (float, "float"):
            return float(raw)
        if f.type in (Path, "Path"):
            return Path(raw)
        return raw
    except ValueError as exc:
        raise ValueError(f"{env}={raw!r}: {exc}") from None


def parse_bytes(text: str) -> int:
    """'1048576', '512MiB', '2 GiB' -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]iB|B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError("expected a byte count such as 1048576, 512MiB or 2GiB")
    return int(match.group(1)) * _UNITS[(match.group(2) or "").upper()]
