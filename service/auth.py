"""Who is calling: API tokens mapped to tenants, and the worker token of the Worker API.

Clients send metadata "authorization: Bearer <token>". The service knows tokens only by their
sha256 (hashed at rest), from two sources that add up:

    KERNELSCOPE_TOKENS_FILE   a text file, one token per line:  <tenant>:<sha256 hex of the token>
                              ("#" starts a comment; blank lines are skipped). Re-read when it changes,
                              so tokens are added or revoked without a restart. Make a line with
                              `printf %s "$TOKEN" | sha256sum` or `python -m service.auth TENANT TOKEN`.
    KERNELSCOPE_TOKENS        "<tenant>=<token>,<tenant>=<token>" in the environment, hashed at load
                              (for tests and single-user setups; the file is the production way).

A tenant sees only its own models, datasets, jobs and artifacts (service/tenants.py). With neither
source configured the service is open: every caller is tenant "default", and the server logs a
warning saying so (the embedded local stack relies on that).

The Worker API takes only the worker token (KERNELSCOPE_WORKER_TOKEN); a tenant's token there is
PERMISSION_DENIED, and the worker token is no tenant's token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import sys
import threading
import time
from pathlib import Path
from typing import Mapping

import grpc

from service import defaults
from service.errors import ServiceError

log = logging.getLogger(__name__)

# A tenant names Redis keys (ks:{tenant}:...): letters, digits, "_", "-", ".", at most 64, not reserved.
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Key prefixes the service uses itself (ks:blob:{sha}:...), so no tenant may be called that.
RESERVED_TENANTS = frozenset({"blob"})
_DIGEST = re.compile(r"[0-9a-f]{64}")
# Seconds between two looks at the tokens file's modification time.
_FILE_CHECK_SECONDS = 1.0


def hash_token(token: str) -> str:
    """The form a token is kept in: the sha256 hex digest of its UTF-8 bytes."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_tenant(name: str, where: str = "tenant") -> str:
    if not TENANT_PATTERN.fullmatch(name) or name in RESERVED_TENANTS:
        raise ValueError(
            f"{where}: tenant {name!r} must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
            f" (and not {', '.join(sorted(RESERVED_TENANTS))})"
        )
    return name


def parse_tokens_file(text: str, source: str = "tokens file") -> dict[str, str]:
    """{sha256 digest: tenant} from lines "tenant:sha256-hex"; ValueError naming the line for a bad one."""
    table: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tenant, sep, digest = (part.strip() for part in line.partition(":"))
        where = f"{source} line {number}"
        if not sep or not _DIGEST.fullmatch(digest.lower()):
            raise ValueError(f"{where}: expected '<tenant>:<sha256 hex of the token>' (64 hex digits)")
        _add(table, digest.lower(), check_tenant(tenant, where), where)
    return table


def parse_tokens_env(text: str, source: str = "KERNELSCOPE_TOKENS") -> dict[str, str]:
    """{sha256 digest: tenant} from "tenant=token,tenant=token"; the plain tokens are not kept."""
    table: dict[str, str] = {}
    for number, item in enumerate(text.split(","), start=1):
        item = item.strip()
        if not item:
            continue
        tenant, sep, token = (part.strip() for part in item.partition("="))
        where = f"{source} entry {number}"
        if not sep or not token:
            raise ValueError(f"{where}: expected '<tenant>=<token>'")
        _add(table, hash_token(token), check_tenant(tenant, where), where)
    return table


def _add(table: dict[str, str], digest: str, tenant: str, where: str) -> None:
    if table.get(digest, tenant) != tenant:
        raise ValueError(f"{where}: the same token is listed for tenants {table[digest]!r} and {tenant!r}")
    table[digest] = tenant


def bearer_token(context: grpc.ServicerContext) -> str | None:
    """The token of "authorization: Bearer <token>", "" for another scheme, None when the header is absent."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


class Authenticator:
    """Maps a call's bearer token to its tenant, and checks the worker token."""

    def __init__(self, tokens_file: str = "", tokens: str = "", worker_token: str = "") -> None:
        self._file = Path(tokens_file).expanduser() if tokens_file else None
        self._from_env = parse_tokens_env(tokens) if tokens else {}
        self._worker_digest = hash_token(worker_token) if worker_token else ""
        self._lock = threading.Lock()
        self._file_table: dict[str, str] = {}
        self._file_stamp: tuple[int, int] | None = None
        self._next_check = 0.0
        if self._file is not None:
            self._file_table = self._read_file()  # a bad or missing file stops the server at start
        # Both sources merged, rebuilt only when the file's table changes (not on every call).
        self._merged: Mapping[str, str] = {**self._file_table, **self._from_env}
        self.open = self._file is None and not self._from_env
        if self._worker_digest and self._worker_digest in self._table():
            raise ValueError("the worker token must differ from every API token")

    @property
    def tenants(self) -> list[str]:
        """The tenants that have at least one token now (["default"] when open)."""
        return [defaults.TENANT] if self.open else sorted(set(self._table().values()))

    def tenant(self, context: grpc.ServicerContext) -> str:
        """The calling tenant; UNAUTHENTICATED without a known token (unless the service is open)."""
        if self.open:
            return defaults.TENANT
        token = bearer_token(context)
        if not token:
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED,
                "TOKEN_REQUIRED",
                "this service requires an API token: send metadata 'authorization: Bearer <token>' "
                "(sdk.Client(token=...) or KERNELSCOPE_TOKEN)",
            )
        tenant = self._table().get(hash_token(token))
        if tenant is None:
            raise ServiceError(grpc.StatusCode.UNAUTHENTICATED, "BAD_TOKEN", "the API token is not valid")
        return tenant

    def check_worker(self, context: grpc.ServicerContext) -> None:
        """Pass the worker token; refuse anything else (a tenant's token with PERMISSION_DENIED)."""
        if not self._worker_digest:
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED,
                "WORKER_TOKEN_NOT_CONFIGURED",
                "this service accepts no worker calls: set KERNELSCOPE_WORKER_TOKEN for the service and its workers",
            )
        digest = hash_token(bearer_token(context) or "")
        if hmac.compare_digest(digest, self._worker_digest):
            return
        if not self.open and digest in self._table():
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED, "WORKER_ONLY", "the Worker API takes the worker token, not an API token"
            )
        raise ServiceError(
            grpc.StatusCode.UNAUTHENTICATED,
            "BAD_WORKER_TOKEN",
            "worker calls need metadata 'authorization: Bearer <worker token>' with the service's token",
        )

    def describe(self) -> str:
        """One line for the log: where tokens come from, never the tokens."""
        if self.open:
            return "no API tokens configured: every caller is tenant 'default' (set KERNELSCOPE_TOKENS_FILE to require tokens)"
        sources = ([str(self._file)] if self._file else []) + (["KERNELSCOPE_TOKENS"] if self._from_env else [])
        return f"API tokens of {len(self.tenants)} tenant(s) from {', '.join(sources)}"

    # --- the tokens file ---------------------------------------------------------------------

    def _table(self) -> Mapping[str, str]:
        if self._file is not None:
            self._refresh()
        return self._merged

    def _refresh(self) -> None:
        """Re-read the tokens file when its mtime or size changed; keep the old table if the new one is bad."""
        now = time.monotonic()
        if now < self._next_check:
            return
        with self._lock:
            if now < self._next_check:
                return
            self._next_check = now + _FILE_CHECK_SECONDS
            try:
                table = self._read_file()
            except (OSError, ValueError) as exc:
                log.error("keeping the previous API tokens: %s", exc)
                return
            if table is not self._file_table:
                self._file_table, self._merged = table, {**table, **self._from_env}

    def _read_file(self) -> dict[str, str]:
        assert self._file is not None
        stat = self._file.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._file_stamp:
            return self._file_table
        if stat.st_mode & 0o022:
            log.warning("%s is writable by others: anyone who can write it can add tokens", self._file)
        table = parse_tokens_file(self._file.read_text(), str(self._file))
        if self._file_stamp is not None:
            log.info("re-read %s: tokens of %d tenant(s)", self._file, len(set(table.values())))
        self._file_stamp = stamp
        return table


def main(argv: list[str] | None = None) -> int:
    """`python -m service.auth TENANT [TOKEN]`: print a tokens-file line (a new random token when none is given)."""
    import secrets

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m service.auth TENANT [TOKEN]", file=sys.stderr)
        return 2
    tenant = check_tenant(args[0])
    token = args[1] if len(args) == 2 else secrets.token_urlsafe(32)
    if len(args) == 1:
        print(f"token (give it to the tenant, it is not stored): {token}", file=sys.stderr)
    print(f"{tenant}:{hash_token(token)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
