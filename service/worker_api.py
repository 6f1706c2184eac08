"""The Worker servicer: what RQ workers call back for (blobs in, artifacts out), behind the worker token."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import grpc
from kernelscope.v1 import jobs_pb2, worker_pb2, worker_pb2_grpc

from service import artifacts, bounds, errors, uploads
from service.auth import Authenticator
from service.blobstore import BlobStore, check_sha256
from service.config import Config
from service.errors import rpc_errors
from service.tenants import Tenants


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    """Every call needs metadata "authorization: Bearer <worker token>"; with no token configured, none passes.

    Artifacts land in the tenant that owns the job; a worker never names a tenant itself.
    """

    def __init__(
        self,
        config: Config,
        store: BlobStore,
        tenants: Tenants,
        auth: Authenticator,
        on_upload: Callable[[str, int], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.tenants = tenants
        self.auth = auth
        self.on_upload = on_upload

    @rpc_errors
    def FetchBlob(self, request: worker_pb2.FetchBlobRequest, context: grpc.ServicerContext) -> Iterator[worker_pb2.BlobChunk]:
        self.auth.check_worker(context)
        for chunk in self.store.read_chunks(check_sha256(request.sha256), self.config.chunk_bytes):
            yield worker_pb2.BlobChunk(data=chunk)

    @rpc_errors
    def WriteArtifact(
        self, request_iterator: Iterable[worker_pb2.WriteArtifactRequest], context: grpc.ServicerContext
    ) -> jobs_pb2.Artifact:
        self.auth.check_worker(context)
        header, chunks = uploads.split(request_iterator, "ArtifactHeader")
        name = artifacts.check_name(header.name)
        bounds.check(header, "header.")
        if not header.job_id:
            raise errors.invalid_argument("JOB_ID_REQUIRED", "job_id is required")
        tenant = self.tenants.owner_of_job(header.job_id)
        if tenant is None:
            raise errors.not_found("job", header.job_id)
        jobs = tenant.jobs
        jobs.record(header.job_id)
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
            jobs.add_artifact(header.job_id, artifact, staged)
        if self.on_upload is not None:
            self.on_upload("artifact", staged.size_bytes)
        return artifact
