"""MethodInterceptor: the one shape of this server's gRPC interceptors.

Every interceptor here does the same dance: ask the continuation for the method's handler, decide whether the
method is one it cares about, and hand back the handler with its behaviour (the `unary_unary`, `stream_unary`, ...
function) or its request deserializer swapped. A subclass says only which methods (`applies`) and how (`wrap`,
`replace`); the dance is written once, here.
"""

from __future__ import annotations

from typing import Any, Callable

import grpc

Behaviour = Callable[..., Any]


class MethodInterceptor(grpc.ServerInterceptor):
    """Wraps the handlers of the methods for which `applies` is true; others pass through untouched."""

    def applies(self, method: str, handler: grpc.RpcMethodHandler) -> bool:
        """Whether this interceptor acts on `method` (its full name, "/kernelscope.v1.KernelScope/GetJob")."""
        raise NotImplementedError

    def wrap(self, method: str, handler: grpc.RpcMethodHandler, behaviour: Behaviour) -> Behaviour:
        """The behaviour to run instead of `behaviour` (taking the same (request or requests, context))."""
        return behaviour

    def replace(self, method: str, handler: grpc.RpcMethodHandler) -> dict[str, Any]:
        """Other handler fields to swap, e.g. {"request_deserializer": ...}."""
        return {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or not self.applies(method, handler):
            return handler
        kind = _behaviour_field(handler)
        fields = {kind: self.wrap(method, handler, getattr(handler, kind)), **self.replace(method, handler)}
        return handler._replace(**fields)  # type: ignore[attr-defined]


def _behaviour_field(handler: grpc.RpcMethodHandler) -> str:
    """The handler's behaviour attribute ("unary_unary", "stream_unary", ...)."""
    return ("stream_" if handler.request_streaming else "unary_") + ("stream" if handler.response_streaming else "unary")
