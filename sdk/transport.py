"""How the client reaches the service. Swappable (httpx's habit): tests and embedders can hand the
client a transport over an existing channel, e.g. an in-process server, instead of a network address."""

from __future__ import annotations

from typing import Protocol

import grpc

from kernelscope.v1 import datasets_pb2, kernelscope_pb2_grpc, models_pb2
from sdk import chunks

MAX_MESSAGE_BYTES = 16 << 20


class Transport(Protocol):
    """Gives the client its stub and the metadata to send with every call.

    Any KernelScope stub will do (the generated one over any channel, or a fake). Upload chunks go to
    it as protobuf messages, unless the stub sets `takes_encoded_chunks = True` (this module's
    KernelScopeStub does): then they go as bytes already encoded by sdk.chunks.
    """

    def stub(self) -> kernelscope_pb2_grpc.KernelScopeStub: ...

    def metadata(self) -> tuple[tuple[str, str], ...]: ...

    def close(self) -> None: ...


class KernelScopeStub(kernelscope_pb2_grpc.KernelScopeStub):
    """The generated stub, except that its upload methods also take chunks already encoded (sdk.chunks)."""

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
    """A gRPC channel to `target`, TLS when `root_certificates` (PEM bytes) are given, bearer token in metadata."""

    def __init__(self, target: str, token: str | None = None, root_certificates: bytes | None = None) -> None:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.target = target
        self._token = token
        self._stub = KernelScopeStub(self.channel)

    def stub(self) -> kernelscope_pb2_grpc.KernelScopeStub:
        return self._stub

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token}"),) if self._token else ()

    def close(self) -> None:
        self.channel.close()
