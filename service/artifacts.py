"""Artifacts: files a worker writes for a job, recorded in Redis as they arrive so a crash loses none."""

from __future__ import annotations

import mimetypes
from typing import Any

import redis
from kernelscope.v1 import jobs_pb2

from service import errors
from service.blobstore import StagedBlob
from service.registry import BlobRefs, Keys, from_json, to_json

MAX_NAME_CHARS = 255
# Most artifacts one job may hold: each is listed in the Job message, which must stay well under gRPC's
# 16 MiB message limit (10,000 entries of at most ~400 bytes: 4 MB).
MAX_PER_JOB = 10_000
_MEDIA_TYPES = {
    ".png": "image/png",
    ".gif": "image/gif",
    ".json": "application/json",
    ".npz": "application/octet-stream",
    ".npy": "application/octet-stream",
    ".html": "text/html",
    ".txt": "text/plain",
    ".csv": "text/csv",
}


def check_name(name: str) -> str:
    """A relative path inside the job: no "..", no leading "/" or "\\", no empty parts, at most 255 chars."""
    problem = None
    if not name:
        problem = "is empty"
    elif len(name) > MAX_NAME_CHARS:
        problem = f"is longer than {MAX_NAME_CHARS} characters"
    elif "\\" in name:
        problem = "contains a backslash"
    elif name.startswith("/"):
        problem = "is absolute"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = 'has an empty, "." or ".." part'
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        problem = "contains control characters"
    if problem:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise errors.invalid_argument("BAD_ARTIFACT_NAME", f"artifact name {shown!r} {problem}; use a relative path like kernel_viz/conv1/ch003.png")
    return name


def media_type(name: str, declared: str = "") -> str:
    """The declared media type, else one guessed from the extension."""
    if declared:
        return declared
    dot = name.rfind(".")
    ext = name[dot:].lower() if dot > name.rfind("/") else ""
    return _MEDIA_TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"


class ArtifactLog:
    """The artifacts of each job: a Redis hash name -> Artifact JSON, and a blob reference per artifact."""

    def __init__(self, conn: redis.Redis, refs: BlobRefs, keys: Keys) -> None:
        self.conn = conn
        self.refs = refs
        self.keys = keys

    def referrer(self, job_id: str, name: str) -> str:
        return f"artifact:{self.keys.tenant}:{job_id}:{name}"

    def record(self, job_id: str, artifact: jobs_pb2.Artifact, staged: StagedBlob) -> None:
        """Store the blob and list the artifact for the job (replacing an earlier one of the same name);
        RESOURCE_EXHAUSTED TOO_MANY_ARTIFACTS for a new name past MAX_PER_JOB."""
        key = self.keys.artifacts(job_id)
        if self.conn.hlen(key) >= MAX_PER_JOB and not self.conn.hexists(key, artifact.name):
            raise errors.resource_exhausted(
                "TOO_MANY_ARTIFACTS", f"job {job_id} already holds {MAX_PER_JOB} artifacts, the most a job may hold"
            )
        self.refs.commit(staged, self.referrer(job_id, artifact.name))
        old = self.conn.hget(key, artifact.name)
        self.conn.hset(key, artifact.name, to_json(artifact, tenant=self.keys.tenant))
        if old:
            previous = from_json(old, jobs_pb2.Artifact())
            if previous.sha256 != artifact.sha256:
                self.refs.release(previous.sha256, self.referrer(job_id, artifact.name))

    def all(self, job_id: str) -> list[jobs_pb2.Artifact]:
        raw: dict[Any, Any] = self.conn.hgetall(self.keys.artifacts(job_id))
        artifacts = [from_json(v, jobs_pb2.Artifact()) for v in raw.values()]
        return sorted(artifacts, key=lambda a: a.name)

    def get(self, job_id: str, name: str) -> jobs_pb2.Artifact:
        raw = self.conn.hget(self.keys.artifacts(job_id), name) if name else None
        if not raw:
            raise errors.not_found("artifact", name, f"job {job_id!r} has no artifact {name!r}")
        return from_json(raw, jobs_pb2.Artifact())

    def delete_all(self, job_id: str) -> int:
        """Forget every artifact of the job; blobs no other record uses are deleted. Returns how many blobs went."""
        artifacts = self.all(job_id)
        self.conn.delete(self.keys.artifacts(job_id))
        return sum(self.refs.release(a.sha256, self.referrer(job_id, a.name)) for a in artifacts)
