"""Every default of the service, with its unit and meaning (config.py maps each to an environment variable)."""

from __future__ import annotations

from pathlib import Path

from kernelscope import chunks, formats

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# --- network -------------------------------------------------------------------------------
# Interface the gRPC server binds; loopback by default so that nothing is exposed by accident.
HOST = "127.0.0.1"
# TCP port of the gRPC server; 0 picks a free port.
PORT = 50051
# Threads serving RPCs; every open WatchJob/WaitJob/upload holds one for its duration.
MAX_WORKERS = 32
# Largest single gRPC message either way, bytes; chunks are CHUNK_BYTES, so this only needs headroom.
MAX_MESSAGE_BYTES = chunks.MAX_MESSAGE_BYTES  # 16 MiB, what the SDK and the workers allow
# HTTP/2 window of each stream toward the server, bytes: what gRPC may buffer per upload while the
# disk catches up (fixed: BDP probing would grow it with the link's speed). 4 MiB fills loopback and LAN
# links; a long fat link wants window >= bandwidth x round-trip time.
STREAM_WINDOW_BYTES = 4 * MiB
# Seconds in-flight RPCs get to finish when the server stops.
SHUTDOWN_GRACE = 5.0

# --- storage ---------------------------------------------------------------------------------
# Directory of the blob store ({data_dir}/blobs, {data_dir}/tmp).
DATA_DIR = Path.home() / ".kernelscope"
# Size of the chunks the server streams (ReadArtifact, FetchBlob), bytes.
CHUNK_BYTES = chunks.CHUNK_BYTES  # 1 MiB, as the SDK and the workers send
# Bytes of an upload that format sniffing looks at before accepting the rest.
SNIFF_BYTES = formats.HEAD_BYTES  # 4 KiB: what kernelscope.formats' rules read
# An upload's bytes are pushed to disk every this many bytes as they arrive, not all at the final fsync.
WRITE_BEHIND_BYTES = 16 * MiB
# glibc malloc for the server process (service/allocator.py): buffers below this stay on the heap ...
MALLOC_MMAP_THRESHOLD_BYTES = 4 * MiB
# ... and this much freed heap stays mapped, so upload chunks reuse pages instead of faulting new ones.
MALLOC_TRIM_THRESHOLD_BYTES = 8 * MiB

# --- limits ----------------------------------------------------------------------------------
# Largest model upload, bytes.
MAX_UPLOAD_BYTES = 2 * GiB
# Largest dataset upload, bytes; also the cap on its decoded arrays (a compressed NPZ can inflate).
MAX_DATASET_BYTES = 1 * GiB
# Most samples a dataset may hold.
MAX_DATASET_SAMPLES = 1_000_000
# Most calls one tenant may have in flight at once (each holds one of the MAX_WORKERS RPC threads);
# below MAX_WORKERS so that one tenant cannot take every thread. Over it: RESOURCE_EXHAUSTED.
TENANT_MAX_RPCS = 16
# Most streaming calls (uploads, WatchJob, ReadArtifact) one tenant may have open at once; they count
# toward TENANT_MAX_RPCS too.
TENANT_MAX_STREAMS = 8
# Seconds an upload stream may go without a message (the header included) before the server ends it
# with DEADLINE_EXCEEDED, so that an idle client cannot hold an RPC thread and a staging file forever.
UPLOAD_IDLE_TIMEOUT = 30.0
# Most jobs one tenant may have queued or running at once (DescribeModel's internal jobs count too).
MAX_JOBS_IN_FLIGHT = 100
# Largest artifact a worker may write, bytes.
MAX_ARTIFACT_BYTES = 512 * MiB
# Bytes of models, datasets and artifacts one tenant may hold, and the whole store may hold; 0: no limit.
# A tenant is charged once per distinct blob it uses (a re-upload of bytes it holds costs nothing; bytes
# another tenant also holds are charged to both), the store once per blob on disk. Over: RESOURCE_EXHAUSTED.
TENANT_QUOTA_BYTES = 50 * GiB
STORE_QUOTA_BYTES = 500 * GiB
# Page size of List* calls when the request leaves it 0, and the most a request may ask for.
PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

# --- redis and jobs ----------------------------------------------------------------------------
# Redis URL (redis://, rediss://, unix://); required (deploy/stack.py starts an embedded one for local use).
REDIS_URL = ""
# Seconds a Redis command may take (connect or reply) before the RPC answers UNAVAILABLE.
REDIS_TIMEOUT = 5.0
# RQ queue the service enqueues on and the workers listen to.
QUEUE_NAME = "kernelscope"
# Dotted path of the function RQ runs for a job; a worker imports it, the service never does.
JOB_FUNCTION = "workers.job.run"
# Seconds a job may run before RQ kills it (the job then FAILS with DEADLINE_EXCEEDED / JOB_TIMEOUT).
JOB_TIMEOUT = 3600
# Seconds RQ keeps a failed job's data; the service keeps its own record of the outcome regardless.
FAILURE_TTL = 7 * 24 * 3600
# Seconds a request_id is remembered for CreateJob idempotency.
REQUEST_ID_TTL = 24 * 3600
# Seconds the records of DescribeModel's internal jobs are kept (the description itself is cached forever).
INTERNAL_JOB_TTL = 7 * 24 * 3600
# Seconds an ended job is kept after its end; then it is deleted like DeleteJob does (record, RQ data,
# artifacts, and the blobs no other record uses). 0: kept until DeleteJob.
JOB_TTL = 30 * 24 * 3600
# Longest WaitJob may block, seconds; a longer requested timeout is cut to this and the client loops.
MAX_WAIT_SECONDS = 60.0
# Seconds between two looks at a job's state in WaitJob / WatchJob.
POLL_INTERVAL = 0.1
# Seconds DescribeModel waits for its internal job before DEADLINE_EXCEEDED.
DESCRIBE_TIMEOUT = 120.0
# Seconds between two Redis pings of the health checker.
HEALTH_INTERVAL = 2.0
# Seconds between two passes of the reaper over running jobs (service/reaper.py).
REAP_INTERVAL = 1.0
# Seconds a running job's heartbeat may be late before its worker counts as dead and the job is queued
# again; keep it well above the workers' KERNELSCOPE_WORKER_HEARTBEAT (2 s by default).
WORKER_TIMEOUT = 15.0
# Times a job whose worker died is queued again before it fails with WORKER_LOST.
JOB_RETRIES = 2

# --- auth, TLS and metrics -----------------------------------------------------------------------
# Tenant of every record when no API tokens are configured (the open, local mode).
TENANT = "default"
# File of API tokens, one "tenant:sha256-hex-of-token" per line (service/auth.py); empty: none.
TOKENS_FILE = ""
# API tokens as "tenant=token,tenant=token", hashed at load; empty: none. Neither set: the service is open.
TOKENS = ""
# PEM files of the server's certificate chain and private key; both set: the server speaks TLS only.
TLS_CERT = ""
TLS_KEY = ""
# TCP port of the Prometheus /metrics endpoint (on HOST); 0: no endpoint.
METRICS_PORT = 0

# --- workers ---------------------------------------------------------------------------------
# Bearer token the Worker service requires; empty refuses every worker call.
WORKER_TOKEN = ""
