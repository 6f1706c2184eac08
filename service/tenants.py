"""Tenants: each one's registry (models, datasets) and job manager, and which tenant owns a job.

Every record lives under its tenant's Redis keys (ks:{tenant}:..., registry.Keys), so a tenant reaches
only its own: another tenant's model, dataset, job or artifact is NOT_FOUND, exactly like one that
never existed. Blobs are shared (content-addressed), but only the worker token reads them by hash.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import redis

from service.artifacts import ArtifactLog
from service.blobstore import BlobStore
from service.config import Config
from service.jobs import JobManager
from service.registry import Quotas, Registry, job_tenant


@dataclass(frozen=True)
class Tenant:
    """One tenant's view of the service."""

    name: str
    registry: Registry
    jobs: JobManager


class Tenants:
    """Builds each tenant's Registry and JobManager once; `on_job_end(seconds, state)` hears of ended jobs."""

    def __init__(
        self,
        conn: redis.Redis,
        config: Config,
        store: BlobStore,
        on_job_end: Callable[[float, str], None] | None = None,
    ) -> None:
        self.conn = conn
        self.config = config
        self.store = store
        self.on_job_end = on_job_end
        self._tenants: dict[str, Tenant] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Tenant:
        tenant = self._tenants.get(name)
        if tenant is None:
            with self._lock:
                tenant = self._tenants.get(name)
                if tenant is None:
                    quotas = Quotas(self.config.tenant_quota_bytes, self.config.store_quota_bytes)
                    registry = Registry(self.conn, self.store, name, quotas)
                    artifacts = ArtifactLog(self.conn, registry.refs, registry.keys)
                    jobs = JobManager(self.conn, self.config, registry, artifacts, on_end=self.on_job_end)
                    tenant = self._tenants[name] = Tenant(name, registry, jobs)
        return tenant

    def owner_of_job(self, job_id: str) -> Tenant | None:
        """The tenant whose job this is (the Worker API knows only the id); None for an unknown job."""
        name = job_tenant(self.conn, job_id)
        return self.get(name) if name is not None else None
