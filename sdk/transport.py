"""How the client reaches the service, swappable as httpx's transports are: a transport makes each call by the
method's name and raises the SDK's own errors (sdk.errors), so the client holds no gRPC and a test needs none.

GrpcTransport goes over a gRPC channel and is the one place that turns a grpc.RpcError into an sdk error;
MockTransport hands every call to a function, for users' tests and the SDK's own.
"""

from __future__ import annotations

from typing import Any, Callable, Generator, Iterable, Protocol

import grpc
from google.protobuf.message import Message

from kernelscope import chunks
from kernelscope.contract import REASON_METADATA_KEY
from kernelscope.v1 import datasets_pb2, kernelscope_pb2_grpc, models_pb2
from sdk.errors import BY_CODE, ApiError

Pieces = Iterable[bytes | memoryview]


class Transport(Protocol):
    """Makes the client's calls, named as in the KernelScope service ("GetJob", "WatchJob", "UploadModel").

    Every failure is raised as an sdk.errors.ApiError subclass (sdk.Unavailable, sdk.NotFound, ...), never as the
    transport's own error: the client decides what to retry from those alone. `timeout` is the call's deadline.
    """

    def unary(self, method: str, request: Message, timeout: float) -> Any:
        """One request, one reply."""
        ...

    def stream(self, method: str, request: Message, timeout: float) -> Generator[Any, None, None]:
        """One request, a stream of replies (WatchJob, ReadArtifact); the call starts at the first next() and
        ends when the generator is closed."""
        ...

    def upload(self, method: str, header: Message, pieces: Pieces, timeout: float) -> Any:
        """A client stream (UploadModel, UploadDataset): the `header` request, then one request of the header's
        type per piece (`chunk = piece`), read as they are sent; one reply."""
        ...

    def close(self) -> None: ...


class KernelScopeStub(kernelscope_pb2_grpc.KernelScopeStub):
    """The generated stub, except that its upload methods also take chunks already encoded (kernelscope.chunks)."""

    takes_encoded_chunks = True

    def __init__(self, channel: grpc.Channel) -> None:
        super().__init__(channel)
        self.UploadModel = channel.stream_unary(
            "/kernelscope.v1.KernelScope/UploadModel",
            request_serializer=chunks.serialize,
            response_deserializer=models_pb2.Model.FromString,
        )
        self.UploadDataset = channel.stream_unary(
            "/kernelscope.v1.KernelScope/UploadDataset",
            request_serializer=chunks.serialize,
            response_deserializer=datasets_pb2.Dataset.FromString,
        )


class GrpcTransport:
    """A gRPC channel to `target`, TLS when `root_certificates` (PEM bytes) are given, bearer token in metadata.

    Calls go through `self.stub` (a KernelScopeStub; any KernelScope stub will do). Upload chunks go to it as
    protobuf messages, unless the stub sets `takes_encoded_chunks = True` (KernelScopeStub does): then they go
    as bytes already encoded by kernelscope.chunks.
    """

    def __init__(self, target: str, token: str | None = None, root_certificates: bytes | None = None) -> None:
        options = [
            ("grpc.max_receive_message_length", chunks.MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", chunks.MAX_MESSAGE_BYTES),
        ]
        if root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.target = target
        self._token = token
        self.stub: Any = KernelScopeStub(self.channel)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What every call carries: the bearer token, when there is one."""
        return (("authorization", f"Bearer {self._token}"),) if self._token else ()

    def unary(self, method: str, request: Any, timeout: float) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=timeout, metadata=self.metadata())
        except grpc.RpcError as exc:
            raise api_error(exc) from None

    def stream(self, method: str, request: Message, timeout: float) -> Generator[Any, None, None]:
        call = getattr(self.stub, method)(request, timeout=timeout, metadata=self.metadata())
        try:
            yield from call
        except grpc.RpcError as exc:
            raise api_error(exc) from None
        finally:
            # Left early (Ctrl-C in the caller, a closed generator): end the call now, not at interpreter exit.
            if hasattr(call, "cancel"):
                call.cancel()

    def upload(self, method: str, header: Message, pieces: Pieces, timeout: float) -> Any:
        encoded = getattr(self.stub, "takes_encoded_chunks", False) is True  # a flag, not any attribute a fake makes up
        return self.unary(method, chunks.requests(header, pieces, encoded), timeout)

    def close(self) -> None:
        self.channel.close()


def api_error(error: grpc.RpcError) -> ApiError:
    """The ApiError subclass of this RPC error's status code, with the service's reason from trailing metadata."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    reason = ""
    trailing: Any = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == REASON_METADATA_KEY:
            reason = value
    cls = BY_CODE.get(code, ApiError)
    return cls(details or str(code), reason=reason, code=code)


Handler = Callable[[str, Any], Any]


class MockTransport:
    """A transport that hands every call to `handler(method, request)` instead of a service: for tests.

    The handler returns the reply (for a stream, WatchJob or ReadArtifact, an iterable of replies) or raises an
    sdk error (sdk.NotFound, sdk.Unavailable, ...), which the client then treats as it would the service's: it
    retries sdk.Unavailable and busy refusals, raises the rest. A stream's iterable may raise mid-way too. An
    upload's request is the list of its messages: the header request, then one chunk request per piece.

        def handler(method: str, request: Any) -> Any:
            if method == "GetJob":
                return jobs_pb2.Job(id=request.job_id, state=jobs_pb2.SUCCEEDED)
            raise sdk.NotFound(f"no {method} here", reason="NOT_FOUND")

        client = sdk.Client(transport=sdk.MockTransport(handler))

    Every call is recorded in `calls` as (method, request, timeout), for assertions on what was sent.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[tuple[str, Any, float]] = []

    def unary(self, method: str, request: Any, timeout: float) -> Any:
        self.calls.append((method, request, timeout))
        return self.handler(method, request)

    def stream(self, method: str, request: Message, timeout: float) -> Generator[Any, None, None]:
        yield from self.unary(method, request, timeout)

    def upload(self, method: str, header: Message, pieces: Pieces, timeout: float) -> Any:
        return self.unary(method, list(chunks.requests(header, pieces, encoded=False)), timeout)

    def close(self) -> None:
        pass
