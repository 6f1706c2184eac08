"""Admission: per-tenant caps on concurrent calls, checked before a method's code runs.

Every call of the threaded server holds one of its RPC threads until it ends, so without a cap one
tenant's idle upload streams (or long WaitJob calls) take every thread and every other tenant's calls
queue behind them. A tenant may have at most `max_rpcs` calls in flight, and at most `max_streams` of
them streaming (uploads, WatchJob, ReadArtifact); a call over either cap is refused at once with
RESOURCE_EXHAUSTED naming the limit, so it costs a thread for microseconds. With the cap below the
server's thread count, other tenants always find a free thread.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import grpc

from service.errors import ServiceError, abort, resource_exhausted
from service.interceptor import Behaviour, MethodInterceptor

# tenant_of(context): the calling tenant, or a ServiceError for a caller without a valid token.
TenantOf = Callable[[grpc.ServicerContext], str]


class Admission(MethodInterceptor):
    """Counts each tenant's calls to the methods under `prefix` and refuses those over its caps.

    Calls without a valid token pass through uncounted: the method itself refuses them before
    reading anything.
    """

    def __init__(self, prefix: str, tenant_of: TenantOf, max_rpcs: int, max_streams: int) -> None:
        self._prefix = prefix
        self._tenant_of = tenant_of
        self.max_rpcs = max_rpcs
        self.max_streams = max_streams
        self._lock = threading.Lock()
        self._rpcs: dict[str, int] = {}
        self._streams: dict[str, int] = {}

    def in_flight(self, tenant: str) -> tuple[int, int]:
        """(calls, streams) `tenant` has in flight now."""
        with self._lock:
            return self._rpcs.get(tenant, 0), self._streams.get(tenant, 0)

    def acquire(self, tenant: str, streaming: bool) -> Callable[[], None]:
        """Take one of `tenant`'s call slots (and a stream slot when `streaming`); returns its release.

        ServiceError (RESOURCE_EXHAUSTED) when the tenant is at a cap.
        """
        with self._lock:
            rpcs, streams = self._rpcs.get(tenant, 0), self._streams.get(tenant, 0)
            if rpcs >= self.max_rpcs:
                raise resource_exhausted(
                    "TOO_MANY_CALLS",
                    f"tenant {tenant!r} has {rpcs} calls in flight, the most allowed "
                    f"(KERNELSCOPE_TENANT_MAX_RPCS={self.max_rpcs}); retry when one has ended",
                )
            if streaming and streams >= self.max_streams:
                raise resource_exhausted(
                    "TOO_MANY_STREAMS",
                    f"tenant {tenant!r} has {streams} streams open, the most allowed "
                    f"(KERNELSCOPE_TENANT_MAX_STREAMS={self.max_streams}); retry when one has ended",
                )
            self._rpcs[tenant] = rpcs + 1
            if streaming:
                self._streams[tenant] = streams + 1

        def release() -> None:
            with self._lock:
                self._release(self._rpcs, tenant)
                if streaming:
                    self._release(self._streams, tenant)

        return release

    @staticmethod
    def _release(counts: dict[str, int], tenant: str) -> None:
        left = counts[tenant] - 1
        if left:
            counts[tenant] = left
        else:
            del counts[tenant]

    def _tenant(self, context: grpc.ServicerContext) -> str | None:
        try:
            return self._tenant_of(context)
        except ServiceError:
            return None

    def applies(self, method: str, handler: grpc.RpcMethodHandler) -> bool:
        return method.startswith(self._prefix)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler, behaviour: Behaviour) -> Behaviour:
        streaming = bool(handler.request_streaming or handler.response_streaming)

        def admit(context: grpc.ServicerContext) -> Callable[[], None]:
            tenant = self._tenant(context)
            if tenant is None:
                return _nothing
            try:
                return self.acquire(tenant, streaming)
            except ServiceError as error:
                abort(context, error)
                raise  # abort raised already

        if handler.response_streaming:  # the slot is held while gRPC drains the response generator

            def run(request: Any, context: grpc.ServicerContext) -> Any:
                release = admit(context)
                try:
                    yield from behaviour(request, context)
                finally:
                    release()

        else:

            def run(request: Any, context: grpc.ServicerContext) -> Any:  # type: ignore[misc]
                release = admit(context)
                try:
                    return behaviour(request, context)
                finally:
                    release()

        return run


def _nothing() -> None:
    pass
