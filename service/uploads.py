"""Client-streaming uploads: the first message is a header, every later one a chunk of bytes.

Chunk messages skip protobuf on the way in: `ChunkViews` gives the upload methods a deserializer that
hands a message consisting of exactly one `chunk` field to the servicer as a memoryview of the received
bytes. Parsing it would copy each MiB twice (into the parser's arena, then out into a new bytes object):
in a profile of a 1 GiB upload that was 1.2 s of the server's CPU, on a thread of its own that gRPC's
receiving waits for.
Anything else (the header, an odd but valid encoding) is parsed as usual.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping

import grpc

from service import errors

# Field 2, wire type 2 (length-delimited): `bytes chunk = 2` in every upload request message.
CHUNK_TAG = (2 << 3) | 2
_MAX_VARINT_BYTES = 10


def split(requests: Iterable[Any], header_type: str) -> tuple[Any, Iterator[bytes | memoryview]]:
    """(header, chunks) of an upload stream whose messages have a oneof "payload" of header | chunk.

    INVALID_ARGUMENT when the stream is empty, starts with a chunk, or repeats the header.
    """
    stream = iter(requests)
    first = next(stream, None)
    if first is None or isinstance(first, memoryview) or first.WhichOneof("payload") != "header":
        raise errors.invalid_argument(
            "HEADER_REQUIRED", f"the first message of an upload must be its {header_type}, then the bytes in chunks"
        )

    def chunks() -> Iterator[bytes | memoryview]:
        for message in stream:
            if isinstance(message, memoryview):  # decoded by ChunkViews
                yield message
                continue
            if message.WhichOneof("payload") != "chunk":
                raise errors.invalid_argument("HEADER_REPEATED", f"only the first message may carry the {header_type}")
            yield message.chunk

    return first.header, chunks()


def check_size(size: int, max_bytes: int, what: str, allow_empty: bool = False) -> None:
    """A declared size: positive (or zero when `allow_empty`), and RESOURCE_EXHAUSTED at once when over the limit."""
    if size < 0 or (size == 0 and not allow_empty):
        raise errors.invalid_argument("BAD_SIZE", f"the header's size_bytes must be positive, got {size}")
    if size > max_bytes:
        raise errors.resource_exhausted("TOO_LARGE", f"{what} of {size} bytes is over the limit of {max_bytes} bytes")


def chunk_view(data: bytes) -> memoryview | None:
    """The payload of a message that is exactly one `chunk` field, as a view into `data`; None for any other."""
    if len(data) < 2 or data[0] != CHUNK_TAG:
        return None
    length = shift = 0
    pos = 1
    while True:
        if pos >= len(data) or pos > _MAX_VARINT_BYTES:
            return None
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if pos + length != len(data):
        return None
    return memoryview(data)[pos:]


def chunk_deserializer(message_type: Any) -> Callable[[bytes], Any]:
    """`message_type.FromString`, except that a lone-chunk message comes back as a memoryview of its bytes."""
    parse = message_type.FromString

    def deserialize(data: bytes) -> Any:
        view = chunk_view(data)
        return view if view is not None else parse(data)

    return deserialize


class ChunkViews(grpc.ServerInterceptor):
    """Swaps in `chunk_deserializer` for the upload methods (full method name -> request message type)."""

    def __init__(self, methods: Mapping[str, Any]) -> None:
        self._deserializers = {name: chunk_deserializer(message_type) for name, message_type in methods.items()}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        deserializer = self._deserializers.get(handler_call_details.method)  # type: ignore[attr-defined]
        if handler is None or deserializer is None or not handler.request_streaming:
            return handler
        return handler._replace(request_deserializer=deserializer)  # type: ignore[attr-defined]
