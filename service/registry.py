"""Model and dataset records in Redis, the Redis key layout, paging, and which records use which blob.

Key layout (every record carries its tenant; blobs are shared across tenants, being content-addressed):

    ks:{tenant}:model:{id}            Model as JSON (+ "tenant")
    ks:{tenant}:models                sorted set "{create_us:017d}:{id}", newest-first paging
    ks:{tenant}:dataset:{id}          Dataset as JSON      ks:{tenant}:datasets   its index
    ks:{tenant}:description:{id}      ModelDescription cache (DescribeModel)
    ks:{tenant}:describing:{id}       id of the describe job in flight
    ks:{tenant}:job:{id}              the service's job record (jobs.py)   ks:{tenant}:jobs   its index
    ks:{tenant}:job:{id}:artifacts    hash: artifact name -> Artifact JSON
    ks:{tenant}:request:{request_id}  job id a request_id created (24 h)
    ks:{tenant}:inflight              sorted set: the tenant's job ids not known to have ended, by claim time
    ks:@job:{id}                      the tenant that owns job {id} (the Worker API finds jobs by id alone)
    ks:blob:{sha256}:refs             set of records using the blob; the blob is deleted with the last one
    ks:blob:{sha256}:lock             held while a blob is committed or released
    ks:blob:{sha256}:size             bytes of a blob the quotas count (set while it is stored)
    ks:{tenant}:held                  hash: sha256 -> how many of the tenant's records use that blob
    ks:{tenant}:usage                 bytes of the distinct blobs the tenant uses (its quota's count)
    ks:usage                          bytes of the distinct blobs stored (the store quota's count)
    ks:retention                      sorted set: public job ids by when retention looks at them next
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

import redis
from google.protobuf import json_format
from google.protobuf.message import Message
from kernelscope.v1 import datasets_pb2, models_pb2

from service import defaults, errors, scripts
from service.blobstore import BlobStore, StagedBlob

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

_MEMBER = re.compile(r"\d{17}:[A-Za-z0-9_]+")
_BLOB_LOCK_SECONDS = 60


class Keys:
    """Every Redis key the service writes, built in one place."""

    def __init__(self, tenant: str = defaults.TENANT) -> None:
        self.tenant = tenant
        self._p = f"ks:{tenant}:"

    def record(self, kind: str, ident: str) -> str:
        return f"{self._p}{kind}:{ident}"

    def index(self, kind: str) -> str:
        return f"{self._p}{kind}s"

    def artifacts(self, job_id: str) -> str:
        return f"{self._p}job:{job_id}:artifacts"

    def request(self, request_id: str) -> str:
        return f"{self._p}request:{request_id}"

    def description(self, model_id: str) -> str:
        return f"{self._p}description:{model_id}"

    def describing(self, model_id: str) -> str:
        return f"{self._p}describing:{model_id}"

    def inflight(self) -> str:
        return f"{self._p}inflight"

    def held(self) -> str:
        return f"{self._p}held"

    def usage(self) -> str:
        return f"{self._p}usage"

    STORE_USAGE = "ks:usage"
    RETENTION = "ks:retention"

    @staticmethod
    def job_owner(job_id: str) -> str:
        return f"ks:@job:{job_id}"

    @staticmethod
    def blob_refs(sha256: str) -> str:
        return f"ks:blob:{sha256}:refs"

    @staticmethod
    def blob_lock(sha256: str) -> str:
        return f"ks:blob:{sha256}:lock"

    @staticmethod
    def blob_size(sha256: str) -> str:
        return f"ks:blob:{sha256}:size"


def job_tenant(conn: redis.Redis, job_id: str) -> str | None:
    """The tenant that owns job `job_id` (the Worker API and the reaper know only the id); None for an unknown job."""
    if not job_id:
        return None
    owner = conn.get(Keys.job_owner(job_id))
    if owner is not None:
        return owner.decode()
    # Jobs created before owners were recorded all belong to the default tenant.
    if conn.exists(Keys(defaults.TENANT).record("job", job_id)):
        return defaults.TENANT
    return None


def to_json(message: Message, **extra: Any) -> str:
    """A message as JSON with proto field names, plus `extra` keys (the tenant)."""
    return json.dumps({**json_format.MessageToDict(message, preserving_proto_field_name=True), **extra})


def from_json(text: str | bytes, message: M) -> M:
    """Fill `message` from to_json's output, ignoring the extra keys."""
    return json_format.ParseDict(json.loads(text), message, ignore_unknown_fields=True)


class Index:
    """Newest-first cursor paging over a sorted set of "{create_us:017d}:{id}" members.

    Members compare lexicographically, so a cursor (the last member returned) stays exact while
    newer records are added and ties on the timestamp are broken by id. The page token is that
    member, base64url-encoded: opaque to clients, checked when it comes back.
    """

    def __init__(self, conn: redis.Redis, key: str) -> None:
        self.conn = conn
        self.key = key

    @staticmethod
    def member(create_us: int, ident: str) -> str:
        return f"{create_us:017d}:{ident}"

    @staticmethod
    def ident(member: str) -> str:
        return member.split(":", 1)[1]

    @staticmethod
    def encode_token(member: str) -> str:
        return base64.urlsafe_b64encode(member.encode()).decode().rstrip("=")

    @staticmethod
    def decode_token(token: str) -> str:
        try:
            member = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            member = ""
        if not _MEMBER.fullmatch(member):
            raise errors.invalid_argument("BAD_PAGE_TOKEN", "page_token is not one this service returned")
        return member

    def add(self, member: str, pipe: Any = None) -> None:
        (pipe or self.conn).zadd(self.key, {member: 0})

    def remove(self, member: str, pipe: Any = None) -> None:
        (pipe or self.conn).zrem(self.key, member)

    def members_of(self, ident: str) -> list[str]:
        """The members of record `ident`, found by a scan (for a record whose create time cannot be read)."""
        found = self.conn.zscan_iter(self.key, match=f"*:{ident}", count=1000)
        return [(m.decode() if isinstance(m, bytes) else m) for m, _ in found]

    def after(self, token: str, count: int) -> list[str]:
        """Up to `count` members older than the token's (all from the newest when token is empty)."""
        top = "(" + self.decode_token(token) if token else "+"
        return [m.decode() if isinstance(m, bytes) else m for m in self.conn.zrevrangebylex(self.key, top, "-", 0, count)]

    def page(self, token: str, page_size: int) -> tuple[list[str], str]:
        """(ids, next_page_token) of one page; the token is empty on the last page."""
        members = self.after(token, page_size + 1)
        more = len(members) > page_size
        members = members[:page_size]
        return [self.ident(m) for m in members], (self.encode_token(members[-1]) if more else "")


def page_size(requested: int) -> int:
    """A request's page_size: 0 means the default, more than the maximum is cut to it, negative is refused."""
    if requested < 0:
        raise errors.invalid_argument("BAD_PAGE_SIZE", f"page_size must be >= 0, got {requested}")
    return min(requested or defaults.PAGE_SIZE, defaults.MAX_PAGE_SIZE)


@dataclass(frozen=True)
class Quotas:
    """Bytes one tenant, and the whole store, may hold (0: no limit); see defaults.TENANT_QUOTA_BYTES."""

    tenant_bytes: int = 0
    store_bytes: int = 0




class BlobRefs:
    """Which records use which blob, so a blob is deleted exactly when its last user goes, and what each
    tenant and the whole store hold, so that quotas are counted once per distinct blob.

    Commit (count the use + rename into place) and release (drop the use + delete the file when none is
    left) run under a per-blob Redis lock, so a concurrent upload of the same bytes can never lose its
    file to a concurrent delete. Counting and the quota check are one Lua script, so concurrent uploads
    cannot together pass a quota that each alone would.
    """

    def __init__(self, conn: redis.Redis, store: BlobStore, keys: Keys | None = None, quotas: Quotas = Quotas()) -> None:
        self.conn = conn
        self.store = store
        self.keys = keys or Keys()
        self.quotas = quotas
        self._take = conn.register_script(scripts.TAKE_BLOB)
        self._drop = conn.register_script(scripts.DROP_BLOB)

    def _lock(self, sha256: str) -> Any:
        return self.conn.lock(Keys.blob_lock(sha256), timeout=_BLOB_LOCK_SECONDS, blocking_timeout=_BLOB_LOCK_SECONDS)

    def _keys(self, sha256: str) -> list[str]:
        return [Keys.blob_refs(sha256), Keys.blob_size(sha256), self.keys.held(), self.keys.usage(), Keys.STORE_USAGE]

    def usage(self) -> tuple[int, int]:
        """(bytes the tenant holds, bytes the store holds) as the quotas count them."""
        tenant, store = self.conn.mget([self.keys.usage(), Keys.STORE_USAGE])
        return int(tenant or 0), int(store or 0)

    def check_room(self, sha256: str, size: int) -> None:
        """RESOURCE_EXHAUSTED now, before an upload's bytes arrive, when storing `size` new bytes would go
        over a quota (commit checks again, atomically; this only spares the client a futile upload)."""
        tenant_used, store_used = self.usage()
        if not self.conn.hexists(self.keys.held(), sha256):
            self._refuse_over(1, tenant_used, size)
        if not self.conn.exists(Keys.blob_size(sha256)):
            self._refuse_over(2, store_used, size)

    def _refuse_over(self, which: int, used: int, size: int) -> None:
        if which == 1 and self.quotas.tenant_bytes and used + size > self.quotas.tenant_bytes:
            raise errors.resource_exhausted(
                "TENANT_QUOTA",
                f"tenant {self.keys.tenant!r} holds {used} bytes; {size} more would pass its quota of "
                f"{self.quotas.tenant_bytes} bytes (KERNELSCOPE_TENANT_QUOTA_BYTES): delete models, datasets or jobs",
            )
        if which == 2 and self.quotas.store_bytes and used + size > self.quotas.store_bytes:
            raise errors.resource_exhausted(
                "STORE_QUOTA",
                f"the service's store holds {used} bytes; {size} more would pass its quota of "
                f"{self.quotas.store_bytes} bytes (KERNELSCOPE_STORE_QUOTA_BYTES)",
            )

    def commit(self, staged: StagedBlob, referrer: str) -> None:
        """Count `referrer`'s use of the staged blob and move it into place; RESOURCE_EXHAUSTED (TENANT_QUOTA,
        STORE_QUOTA) when the tenant or the store would go over its quota, and then nothing is stored."""
        with self._lock(staged.sha256):
            refused, used = self._take(
                keys=self._keys(staged.sha256),
                args=[referrer, staged.sha256, staged.size_bytes, self.quotas.tenant_bytes, self.quotas.store_bytes],
            )
            if refused:
                self._refuse_over(int(refused), int(used), staged.size_bytes)
            try:
                self.store.commit(staged)
            except BaseException:
                self._release_locked(staged.sha256, referrer)
                raise

    def release(self, sha256: str, referrer: str) -> bool:
        """Drop `referrer`'s use of the blob; True when that deleted the blob."""
        with self._lock(sha256):
            return self._release_locked(sha256, referrer)

    def _release_locked(self, sha256: str, referrer: str) -> bool:
        if int(self._drop(keys=self._keys(sha256), args=[referrer, sha256])):
            return self.store.delete(sha256)
        return False


class _Records(Generic[M]):
    """Records of one kind ("model", "dataset"): JSON by id, a newest-first index, a blob each."""

    def __init__(self, conn: redis.Redis, refs: BlobRefs, keys: Keys, kind: str, factory: Callable[[], M]) -> None:
        self.conn = conn
        self.refs = refs
        self.keys = keys
        self.kind = kind
        self.factory = factory
        self.index = Index(conn, keys.index(kind))

    def referrer(self, ident: str) -> str:
        return f"{self.kind}:{self.keys.tenant}:{ident}"

    def add(self, record: M, staged: StagedBlob) -> M:
        """Store `record` with its blob; when the id is already known, return the existing record instead."""
        ident = record.id  # type: ignore[attr-defined]
        self.refs.commit(staged, self.referrer(ident))
        key = self.keys.record(self.kind, ident)
        if not self.conn.set(key, to_json(record, tenant=self.keys.tenant), nx=True):
            return self.get(ident)
        self.index.add(Index.member(record.create_time.ToMicroseconds(), ident))  # type: ignore[attr-defined]
        return record

    def find(self, ident: str) -> M | None:
        raw = self.conn.get(self.keys.record(self.kind, ident)) if ident else None
        return from_json(raw, self.factory()) if raw else None

    def get(self, ident: str) -> M:
        if not ident:
            raise errors.invalid_argument(f"{self.kind.upper()}_ID_REQUIRED", f"{self.kind}_id is required")
        record = self.find(ident)
        if record is None:
            raise errors.not_found(self.kind, ident)
        return record

    def list(self, token: str, size: int) -> tuple[list[M], str]:
        """One page; a record that does not parse is left out (and logged) rather than failing the page."""
        ids, next_token = self.index.page(token, page_size(size))
        raws = self.conn.mget([self.keys.record(self.kind, i) for i in ids]) if ids else []
        found = []
        for ident, raw in zip(ids, raws):
            if not raw:
                continue
            try:
                found.append(from_json(raw, self.factory()))
            except (ValueError, json_format.ParseError) as exc:
                log.error("%s %s: its record cannot be read: %s", self.kind, ident, exc)
        return found, next_token

    def delete(self, ident: str) -> M:
        record = self.get(ident)
        with self.conn.pipeline() as pipe:
            pipe.delete(self.keys.record(self.kind, ident))
            self.index.remove(Index.member(record.create_time.ToMicroseconds(), ident), pipe)  # type: ignore[attr-defined]
            pipe.execute()
        self.refs.release(record.sha256, self.referrer(ident))  # type: ignore[attr-defined]
        return record


class Registry:
    """Models and datasets of one tenant."""

    def __init__(
        self, conn: redis.Redis, store: BlobStore, tenant: str = defaults.TENANT, quotas: Quotas = Quotas()
    ) -> None:
        self.conn = conn
        self.store = store
        self.keys = Keys(tenant)
        self.refs = BlobRefs(conn, store, self.keys, quotas)
        self.models: _Records[models_pb2.Model] = _Records(conn, self.refs, self.keys, "model", models_pb2.Model)
        self.datasets: _Records[datasets_pb2.Dataset] = _Records(
            conn, self.refs, self.keys, "dataset", datasets_pb2.Dataset
        )

    def delete_model(self, model_id: str) -> None:
        self.models.delete(model_id)
        self.conn.delete(self.keys.description(model_id), self.keys.describing(model_id))

    def description(self, model_id: str) -> models_pb2.ModelDescription | None:
        raw = self.conn.get(self.keys.description(model_id))
        return from_json(raw, models_pb2.ModelDescription()) if raw else None

    def put_description(self, description: models_pb2.ModelDescription) -> None:
        self.conn.set(self.keys.description(description.model_id), to_json(description, tenant=self.keys.tenant))
