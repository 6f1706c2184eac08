"""The Worker servicer: what RQ workers call back for (blobs in, artifacts out), behind the worker token."""

from __future__ import annotations

import hmac
from typing import Iterable, Iterator

import grpc
from kernelscope.v1 import jobs_pb2, worker_pb2, worker_pb2_grpc

from service import artifacts, uploads
from service.blobstore import BlobStore, check_sha256
from service.config import Config
from service.errors import ServiceError, rpc_errors
from service.jobs import JobManager


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    """Every call needs metadata "authorization: Bearer <worker token>"; with no token configured, none passes."""

    def __init__(self, config: Config, store: BlobStore, jobs: JobManager) -> None:
        self.config = config
        self.store = store
        self.jobs = jobs

    def _authorize(self, context: grpc.ServicerContext) -> None:
        expected = self.config.worker_token
        if not expected:
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED,
                "WORKER_TOKEN_NOT_CONFIGURED",
                "this service accepts no worker calls: set KERNELSCOPE_WORKER_TOKEN for the service and its workers",
            )
        metadata = {m.key: m.value for m in context.invocation_metadata() or ()}
        scheme, _, given = str(metadata.get("authorization", "")).partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED,
                "BAD_WORKER_TOKEN",
                "worker calls need metadata 'authorization: Bearer <worker token>' with the service's token",
            )

    @rpc_errors
    def FetchBlob(self, request: worker_pb2.FetchBlobRequest, context: grpc.ServicerContext) -> Iterator[worker_pb2.BlobChunk]:
        self._authorize(context)
        for chunk in self.store.read_chunks(check_sha256(request.sha256), self.config.chunk_bytes):
            yield worker_pb2.BlobChunk(data=chunk)

    @rpc_errors
    def WriteArtifact(
        self, request_iterator: Iterable[worker_pb2.WriteArtifactRequest], context: grpc.ServicerContext
    ) -> jobs_pb2.Artifact:
        self._authorize(context)
        header, chunks = uploads.split(request_iterator, "ArtifactHeader")
        name = artifacts.check_name(header.name)
        self.jobs.record(header.job_id)
        uploads.check_size(header.size_bytes, self.config.max_artifact_bytes, f"artifact {name!r}", allow_empty=True)
        if header.sha256:
            check_sha256(header.sha256, "header.sha256")
        with self.store.stage(
            chunks,
            limit=self.config.max_artifact_bytes,
            expected_size=header.size_bytes,
            expected_sha256=header.sha256 or None,
            what=f"artifact {name!r}",
        ) as staged:
            artifact = jobs_pb2.Artifact(
                name=name,
                media_type=artifacts.media_type(name, header.media_type),
                size_bytes=staged.size_bytes,
                sha256=staged.sha256,
                task=header.task or name.split("/", 1)[0],
            )
            self.jobs.add_artifact(header.job_id, artifact, staged)
        return artifact
