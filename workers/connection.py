"""The worker's link to the service: fetch blobs, write artifacts, authenticated by the worker token.

The worker process reads its token from the environment once at start (`configure`) and removes it
from os.environ, so that the job's work-horse (which loads untrusted models) inherits the token in
memory only and cannot leak it to code that reads the environment.

When the service speaks TLS, KERNELSCOPE_TLS_CA names the PEM file of the certificate(s) to trust.
Calls answered UNAVAILABLE (the service restarting) are retried for up to RETRY_SECONDS.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from kernelscope import chunks

RPC_TIMEOUT_S = 600.0  # upper bound for one blob transfer
RETRY_SECONDS = 60.0  # how long a call answered UNAVAILABLE is retried

T = TypeVar("T")

# gRPC's core (as grpcio builds it) restarts its event-engine threads in every forked child of a process that has
# used gRPC. The horse uses gRPC, then forks the model process, which closes every descriptor it inherited
# (workers/sandbox.py): those threads then met closed epoll and event fds and aborted it ("Check failed:
# wakeup_fd_->Wakeup().ok()", MODEL_PROCESS_SIGABRT), a few jobs in a hundred on a loaded machine. No child of a
# worker uses gRPC, so none needs the threads: workers/__init__.py sets GRPC_ENABLE_FORK_SUPPORT=0 before grpc
# is first imported (this module imports it when it first calls the service).

_settings: dict[str, str] = {}


def configure(target: str | None = None, token: str | None = None) -> None:
    """Remember the service address and worker token; scrub the token from the environment."""
    _settings["target"] = target or os.environ.get("KERNELSCOPE_SERVICE", "127.0.0.1:50051")
    _settings["token"] = token if token is not None else os.environ.get("KERNELSCOPE_WORKER_TOKEN", "")
    os.environ.pop("KERNELSCOPE_WORKER_TOKEN", None)


@dataclass
class ServiceConnection:
    """A channel to the service's Worker API; create one per work-horse (gRPC channels do not survive fork)."""

    target: str
    token: str

    @classmethod
    def from_settings(cls) -> "ServiceConnection":
        if not _settings:
            configure()
        return cls(target=_settings["target"], token=_settings["token"])

    def __post_init__(self) -> None:
        import grpc

        from kernelscope.v1 import worker_pb2_grpc

        size = chunks.MAX_MESSAGE_BYTES
        options = [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)]
        ca = os.environ.get("KERNELSCOPE_TLS_CA", "")
        if ca:
            credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
            self._channel = grpc.secure_channel(self.target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(self.target, options=options)
        self._stub = worker_pb2_grpc.WorkerStub(self._channel)
        self._metadata = (("authorization", f"Bearer {self.token}"),)

    def close(self) -> None:
        self._channel.close()

    def _retry(self, call: Callable[[], T]) -> T:
        import grpc

        started, delay = time.monotonic(), 0.2
        while True:
            try:
                return call()
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() - started > RETRY_SECONDS:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def fetch_blob(self, sha256: str, dest: Path) -> None:
        """Stream blob `sha256` into dest (through a temp file), verifying its hash."""
        self._retry(lambda: self._fetch_blob(sha256, dest))

    def _fetch_blob(self, sha256: str, dest: Path) -> None:
        from kernelscope.v1 import worker_pb2

        tmp = dest.with_name(dest.name + f".part{os.getpid()}")
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                for chunk in self._stub.FetchBlob(
                    worker_pb2.FetchBlobRequest(sha256=sha256), metadata=self._metadata, timeout=RPC_TIMEOUT_S
                ):
                    digest.update(chunk.data)
                    f.write(chunk.data)
                f.flush()
                os.fsync(f.fileno())
            if digest.hexdigest() != sha256:
                raise IOError(f"blob {sha256} arrived with hash {digest.hexdigest()}")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def write_artifact(self, job_id: str, task: str, name: str, path: Path, media_type: str) -> dict:
        """Upload one artifact file; return its Artifact record as a dict."""
        from kernelscope.v1 import worker_pb2

        data = path.read_bytes()
        header = worker_pb2.ArtifactHeader(
            job_id=job_id,
            name=name,
            media_type=media_type,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            task=task,
        )

        def messages() -> Iterator[worker_pb2.WriteArtifactRequest]:
            yield worker_pb2.WriteArtifactRequest(header=header)
            for piece in chunks.pieces(data):
                yield worker_pb2.WriteArtifactRequest(chunk=bytes(piece))

        artifact = self._retry(lambda: self._stub.WriteArtifact(messages(), metadata=self._metadata, timeout=RPC_TIMEOUT_S))
        return {
            "name": artifact.name,
            "media_type": artifact.media_type,
            "size_bytes": artifact.size_bytes,
            "sha256": artifact.sha256,
            "task": artifact.task,
        }
