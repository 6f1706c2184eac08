"""The KernelScope servicer: the public API, a thin layer over the registry, the blob store and the jobs.

Every call first resolves its tenant from the bearer token (service/auth.py), then works only on that
tenant's records (service/tenants.py), before reading anything of a streamed request.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message
from kernelscope import ids
from kernelscope.v1 import datasets_pb2, jobs_pb2, kernelscope_pb2_grpc, models_pb2

from service import bounds, datasets, defaults, formats, models, uploads
from service.auth import Authenticator
from service.blobstore import BlobStore, check_sha256
from service.config import Config
from service.errors import invalid_argument, rpc_errors
from service.tenants import Tenant, Tenants

# Called with (kind, bytes) after each stored upload: metrics.Metrics.record_upload.
UploadHook = Callable[[str, int], None]

_MAX_NAME = 255


class KernelScopeServicer(kernelscope_pb2_grpc.KernelScopeServicer):
    """Every method raises ServiceError for what the caller got wrong; rpc_errors turns it into a status."""

    def __init__(
        self,
        config: Config,
        store: BlobStore,
        tenants: Tenants,
        auth: Authenticator,
        on_upload: UploadHook | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.tenants = tenants
        self.auth = auth
        self.on_upload = on_upload

    def _tenant(self, context: grpc.ServicerContext, request: Message | None = None) -> Tenant:
        """The caller's tenant, once authenticated; then `request` is held to its bounds (service/bounds.py)."""
        tenant = self.tenants.get(self.auth.tenant(context))
        if request is not None:
            bounds.check(request)
        return tenant

    def _uploaded(self, kind: str, size: int) -> None:
        if self.on_upload is not None:
            self.on_upload(kind, size)

    # --- models -----------------------------------------------------------------------------

    @rpc_errors
    def UploadModel(
        self, request_iterator: Iterable[models_pb2.UploadModelRequest], context: grpc.ServicerContext
    ) -> models_pb2.Model:
        tenant = self._tenant(context)
        header, chunks = uploads.split(request_iterator, "ModelHeader")
        bounds.check(header, "header.")
        model = models.check_header(header, self.config.max_upload_bytes)
        tenant.registry.refs.check_room(header.sha256, header.size_bytes)
        with self.store.stage(
            chunks,
            limit=self.config.max_upload_bytes,
            expected_size=header.size_bytes,
            expected_sha256=header.sha256,
            check_head=lambda head: formats.check(header.format, head, header.size_bytes),
            head_bytes=defaults.SNIFF_BYTES,
            what="model",
        ) as staged:
            model.create_time.GetCurrentTime()
            stored = tenant.registry.models.add(model, staged)
        self._uploaded("model", staged.size_bytes)
        return stored

    @rpc_errors
    def GetModel(self, request: models_pb2.GetModelRequest, context: grpc.ServicerContext) -> models_pb2.Model:
        return self._tenant(context, request).registry.models.get(request.model_id)

    @rpc_errors
    def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        found, token = self._tenant(context, request).registry.models.list(request.page_token, request.page_size)
        return models_pb2.ListModelsResponse(models=found, next_page_token=token)

    @rpc_errors
    def DeleteModel(self, request: models_pb2.DeleteModelRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self._tenant(context, request).registry.delete_model(request.model_id)
        return empty_pb2.Empty()

    @rpc_errors
    def DescribeModel(
        self, request: models_pb2.DescribeModelRequest, context: grpc.ServicerContext
    ) -> models_pb2.ModelDescription:
        return self._tenant(context, request).jobs.describe(request.model_id, context.is_active)

    # --- datasets ---------------------------------------------------------------------------

    @rpc_errors
    def UploadDataset(
        self, request_iterator: Iterable[datasets_pb2.UploadDatasetRequest], context: grpc.ServicerContext
    ) -> datasets_pb2.Dataset:
        registry = self._tenant(context).registry
        header, chunks = uploads.split(request_iterator, "DatasetHeader")
        bounds.check(header, "header.")
        check_sha256(header.sha256, "header.sha256")
        uploads.check_size(header.size_bytes, self.config.max_dataset_bytes, "dataset")
        if len(header.name) > _MAX_NAME:
            raise invalid_argument("BAD_NAME", f"name is longer than {_MAX_NAME} characters")
        registry.refs.check_room(header.sha256, header.size_bytes)
        with self.store.stage(
            chunks,
            limit=self.config.max_dataset_bytes,
            expected_size=header.size_bytes,
            expected_sha256=header.sha256,
            what="dataset",
        ) as staged:
            ident = ids.dataset_id(staged.sha256)
            existing = registry.datasets.find(ident)
            if existing is not None:  # same verified bytes: already validated once
                stored = registry.datasets.add(existing, staged)
                self._uploaded("dataset", staged.size_bytes)
                return stored
            facts = datasets.inspect_npz(
                staged.path,
                max_samples=self.config.max_dataset_samples,
                max_decoded_bytes=self.config.max_dataset_bytes,
            )
            dataset = datasets_pb2.Dataset(
                id=ident,
                name=header.name,
                size_bytes=staged.size_bytes,
                sha256=staged.sha256,
                num_samples=facts.num_samples,
                num_classes=facts.num_classes,
                class_names=facts.class_names,
                sample_shape=facts.sample_shape,
            )
            dataset.create_time.GetCurrentTime()
            stored = registry.datasets.add(dataset, staged)
        self._uploaded("dataset", staged.size_bytes)
        return stored

    @rpc_errors
    def GetDataset(self, request: datasets_pb2.GetDatasetRequest, context: grpc.ServicerContext) -> datasets_pb2.Dataset:
        return self._tenant(context, request).registry.datasets.get(request.dataset_id)

    @rpc_errors
    def ListDatasets(
        self, request: datasets_pb2.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> datasets_pb2.ListDatasetsResponse:
        found, token = self._tenant(context, request).registry.datasets.list(request.page_token, request.page_size)
        return datasets_pb2.ListDatasetsResponse(datasets=found, next_page_token=token)

    @rpc_errors
    def DeleteDataset(
        self, request: datasets_pb2.DeleteDatasetRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._tenant(context, request).registry.datasets.delete(request.dataset_id)
        return empty_pb2.Empty()

    # --- jobs -------------------------------------------------------------------------------

    @rpc_errors
    def CreateJob(self, request: jobs_pb2.CreateJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:
        return self._tenant(context, request).jobs.create(request)

    @rpc_errors
    def GetJob(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:
        return self._tenant(context, request).jobs.get(request.job_id)

    @rpc_errors
    def ListJobs(self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext) -> jobs_pb2.ListJobsResponse:
        found, token = self._tenant(context, request).jobs.list(request.page_size, request.page_token, request.state)
        return jobs_pb2.ListJobsResponse(jobs=found, next_page_token=token)

    @rpc_errors
    def WaitJob(self, request: jobs_pb2.WaitJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:
        jobs = self._tenant(context, request).jobs
        timeout = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else 0.0
        if timeout < 0:
            raise invalid_argument("BAD_TIMEOUT", f"timeout must not be negative, got {timeout} s")
        return jobs.wait(request.job_id, timeout, context.is_active)

    @rpc_errors
    def WatchJob(self, request: jobs_pb2.WatchJobRequest, context: grpc.ServicerContext) -> Iterator[jobs_pb2.Job]:
        yield from self._tenant(context, request).jobs.watch(request.job_id, context.is_active)

    @rpc_errors
    def CancelJob(self, request: jobs_pb2.CancelJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:
        return self._tenant(context, request).jobs.cancel(request.job_id)

    @rpc_errors
    def DeleteJob(self, request: jobs_pb2.DeleteJobRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self._tenant(context, request).jobs.delete(request.job_id)
        return empty_pb2.Empty()

    @rpc_errors
    def ReadArtifact(
        self, request: jobs_pb2.ReadArtifactRequest, context: grpc.ServicerContext
    ) -> Iterator[jobs_pb2.ArtifactChunk]:
        artifact = self._tenant(context, request).jobs.artifact(request.job_id, request.name)
        for chunk in self.store.read_chunks(artifact.sha256, self.config.chunk_bytes):
            yield jobs_pb2.ArtifactChunk(data=chunk)
