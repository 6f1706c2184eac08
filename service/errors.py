"""Errors the service answers with, and the decorator that turns them into gRPC statuses.

    ServiceError(code, reason, message)   any refusal; the servicer aborts with `code` and puts
    │                                     `reason` in the trailing metadata key "kernelscope-reason"
    ├── invalid_argument(...)             INVALID_ARGUMENT     the request itself is wrong
    ├── not_found(kind, id)               NOT_FOUND            no such model / dataset / job / artifact
    ├── failed_precondition(...)          FAILED_PRECONDITION  valid, but not in this state / for this model
    ├── resource_exhausted(...)           RESOURCE_EXHAUSTED   over a size or count limit
    └── unavailable(...)                  UNAVAILABLE          Redis or storage down; retryable

Redis connection and timeout errors raised anywhere under an RPC become UNAVAILABLE with reason
REDIS_UNAVAILABLE, so that clients retry instead of seeing INTERNAL. Request bytes that do not parse
(UndecodableRequests) become INVALID_ARGUMENT with reason BAD_MESSAGE instead of gRPC's own INTERNAL.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
from typing import Any, Callable, Iterator, TypeVar

import grpc
import redis.exceptions
from kernelscope.contract import REASON_METADATA_KEY

from service.interceptor import Behaviour, MethodInterceptor

log = logging.getLogger(__name__)


F = TypeVar("F", bound=Callable[..., Any])


class ServiceError(Exception):
    """A refusal a client can act on: a gRPC status code, an UPPER_SNAKE reason and a message."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"ServiceError({self.code.name}, {self.reason!r}, {self.message!r})"


def invalid_argument(reason: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


def not_found(kind: str, ident: str, message: str | None = None) -> ServiceError:
    """NOT_FOUND for a `kind` ("model", "job") called `ident`; the reason is MODEL_NOT_FOUND, JOB_NOT_FOUND..."""
    return ServiceError(grpc.StatusCode.NOT_FOUND, f"{kind.upper()}_NOT_FOUND", message or f"no {kind} with id {ident!r}")


def failed_precondition(reason: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, reason, message)


def resource_exhausted(reason: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, message)


def unavailable(reason: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, reason, message)


def status_code(name: str) -> grpc.StatusCode:
    """The StatusCode called `name` ("FAILED_PRECONDITION"); UNKNOWN for a name gRPC does not have."""
    return getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN) if name else grpc.StatusCode.UNKNOWN


def _as_service_error(exc: Exception) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                        redis.exceptions.BusyLoadingError)):
        return unavailable("REDIS_UNAVAILABLE", f"the job store (Redis) is unreachable: {exc}")
    if isinstance(exc, redis.exceptions.LockError):
        return unavailable("BLOB_BUSY", "another request holds this blob for too long; retry")
    if isinstance(exc, grpc.RpcError):  # the client went away while we read its stream
        return ServiceError(grpc.StatusCode.CANCELLED, "CLIENT_CANCELLED", "the client cancelled the call")
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            log.error("blob store is full: %s", exc)
            return resource_exhausted("STORAGE_FULL", "the service's blob store is full")
        log.exception("storage error")
        return unavailable("STORAGE_UNAVAILABLE", f"the blob store failed: {exc.strerror or exc}")
    log.exception("unexpected error in an RPC")
    return ServiceError(grpc.StatusCode.INTERNAL, "INTERNAL", f"internal error: {type(exc).__name__}")


def abort(context: grpc.ServicerContext, error: ServiceError) -> None:
    """End the RPC with `error`'s status; the reason travels in the trailing metadata."""
    context.set_trailing_metadata(((REASON_METADATA_KEY, error.reason),))
    context.abort(error.code, error.message)


def rpc_errors(method: F) -> F:
    """Decorate a servicer method (unary or streaming) so every exception ends the RPC with a proper status.

    Servicer code raises ServiceError and never calls context.abort itself: abort raises a bare
    Exception that this wrapper could not tell from a bug.
    """
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - mapped to a status below
                error = _as_service_error(exc)
            else:
                return
            abort(context, error)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status below
            error = _as_service_error(exc)
        abort(context, error)

    return unary  # type: ignore[return-value]


class Undecodable:
    """Stands in for a request whose bytes did not parse, so the RPC can refuse it with a status of ours."""

    def __init__(self, method: str, error: Exception) -> None:
        self.error = invalid_argument(
            "BAD_MESSAGE", f"the request to {method} is not a valid protobuf message: {error or type(error).__name__}"
        )


class UndecodableRequests(MethodInterceptor):
    """Answers requests that do not parse with INVALID_ARGUMENT (BAD_MESSAGE), not gRPC's INTERNAL.

    gRPC turns a deserializer's exception into INTERNAL "Exception deserializing request!", which
    reads as a server bug and tells the client nothing. For the methods under `prefix` the
    deserializer returns an Undecodable instead, and the method refuses it before any servicer code
    runs (unary requests) or when the servicer reaches it in the stream (client streaming).
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def applies(self, method: str, handler: grpc.RpcMethodHandler) -> bool:
        return handler.request_deserializer is not None and method.startswith(self._prefix)

    def replace(self, method: str, handler: grpc.RpcMethodHandler) -> dict[str, Any]:
        deserialize = handler.request_deserializer

        def tolerant(data: bytes) -> Any:
            try:
                return deserialize(data)
            except Exception as exc:  # noqa: BLE001 - whatever the parser raises, the bytes are bad
                return Undecodable(method, exc)

        return {"request_deserializer": tolerant}

    def wrap(self, method: str, handler: grpc.RpcMethodHandler, behaviour: Behaviour) -> Behaviour:
        if handler.request_streaming:

            def checked(requests: Iterator[Any]) -> Iterator[Any]:
                for request in requests:
                    if isinstance(request, Undecodable):
                        raise request.error  # inside the servicer's rpc_errors: refused like any ServiceError
                    yield request

            def run(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return behaviour(checked(requests), context)

        else:  # a unary request: refused before the method (or its response stream) starts

            def run(request: Any, context: grpc.ServicerContext) -> Any:  # type: ignore[misc]
                if isinstance(request, Undecodable):
                    abort(context, request.error)
                return behaviour(request, context)

        return run
