"""Worker defaults. Each is overridden by the environment variable named beside it."""

from __future__ import annotations

# KERNELSCOPE_SERVICE: address of the service's gRPC endpoint (host:port).
SERVICE_TARGET = "127.0.0.1:50051"
# REDIS_URL: where the queue lives.
REDIS_URL = "redis://127.0.0.1:6379/0"
# KERNELSCOPE_QUEUE: RQ queue the worker listens on.
QUEUE_NAME = "kernelscope"
# KERNELSCOPE_DEVICE: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1".
DEVICE = "auto"
# KERNELSCOPE_JOB_MEMORY_BYTES: memory limit of a job's work-horse in bytes (0 = no limit). 16 GiB.
JOB_MEMORY_BYTES = 16 << 30
# KERNELSCOPE_JOB_CPU_SECONDS: CPU-time limit of a job's work-horse in seconds (0 = no limit).
JOB_CPU_SECONDS = 4 * 3600
# KERNELSCOPE_WORKER_CACHE: directory of cached blobs (default ~/.cache/kernelscope/blobs).

# KERNELSCOPE_ALLOW_TORCHSCRIPT: "1" lets jobs load TorchScript models (compiled code: it then runs only in the
# job's sandbox). Off by default: TorchScript uploads are refused with TORCHSCRIPT_DISABLED and told to export.
ALLOW_TORCHSCRIPT = False
