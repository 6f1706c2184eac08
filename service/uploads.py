"""Client-streaming uploads: the first message is a header, every later one a chunk of bytes.

Chunk messages skip protobuf on the way in: `ChunkViews` gives the upload methods a deserializer that
hands a message consisting of exactly one `chunk` field to the servicer as a memoryview of the received
bytes. Parsing it would copy each MiB twice (into the parser's arena, then out into a new bytes object):
in a profile of a 1 GiB upload that was 1.2 s of the server's CPU, on a thread of its own that gRPC's
receiving waits for.
Anything else (the header, an odd but valid encoding) is parsed as usual.

`IdleStreams` ends an upload that sends nothing for a while (the header included): with the threaded
server every open stream holds an RPC thread, so a client that opens a stream and goes quiet would
otherwise hold it, and a staging file, until it disconnects.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping

import grpc
from grpc._cython import cygrpc

from kernelscope import varint
from kernelscope.chunks import CHUNK_TAG
from service import errors
from service.interceptor import Behaviour, MethodInterceptor

log = logging.getLogger(__name__)

# Field 2, wire type 2 (length-delimited): `bytes chunk = 2` in every upload request message.


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
    length, pos = varint.decode(data, 1)
    if length is None or pos + length != len(data):
        return None
    return memoryview(data)[pos:]


def chunk_deserializer(message_type: Any) -> Callable[[bytes], Any]:
    """`message_type.FromString`, except that a lone-chunk message comes back as a memoryview of its bytes."""
    parse = message_type.FromString

    def deserialize(data: bytes) -> Any:
        view = chunk_view(data)
        return view if view is not None else parse(data)

    return deserialize


class ChunkViews(MethodInterceptor):
    """Swaps in `chunk_deserializer` for the upload methods (full method name -> request message type)."""

    def __init__(self, methods: Mapping[str, Any]) -> None:
        self._deserializers = {name: chunk_deserializer(message_type) for name, message_type in methods.items()}

    def applies(self, method: str, handler: grpc.RpcMethodHandler) -> bool:
        return method in self._deserializers and handler.request_streaming

    def replace(self, method: str, handler: grpc.RpcMethodHandler) -> dict[str, Any]:
        return {"request_deserializer": self._deserializers[method]}


class IdleStreams(MethodInterceptor):
    """Ends upload calls (the full method names in `methods`) that wait longer than `timeout` seconds for
    their next message.

    Only the time the method spends waiting for the client counts (not the time it spends storing
    what arrived). The client gets DEADLINE_EXCEEDED saying how long the stream was idle and which
    setting says so; the method sees the call cancelled and cleans up as for a client that left.
    One thread (`run`) watches every stream.
    """

    def __init__(self, timeout: float, methods: Collection[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._methods = frozenset(methods)
        self._clock = clock
        self._lock = threading.Lock()
        # One entry per stream whose method is waiting for a message: key -> (deadline, method, context).
        self._waiting: dict[object, tuple[float, str, grpc.ServicerContext]] = {}

    def watch(self, requests: Iterable[Any], method: str, context: grpc.ServicerContext) -> Iterator[Any]:
        """`requests`, with each wait for the next message under the idle deadline."""
        stream = iter(requests)
        key = object()
        while True:
            with self._lock:
                self._waiting[key] = (self._clock() + self.timeout, method, context)
            try:
                message = next(stream)
            except StopIteration:
                return
            finally:
                with self._lock:
                    self._waiting.pop(key, None)  # end_idle may have taken it out already
            yield message

    def end_idle(self) -> int:
        """End every stream past its deadline now; returns how many."""
        now = self._clock()
        with self._lock:
            expired = [(key, method, context) for key, (deadline, method, context) in self._waiting.items() if deadline <= now]
            for key, _, _ in expired:
                del self._waiting[key]
        for _, method, context in expired:
            log.info("ending %s: no message for %g s", method, self.timeout)
            _end(
                context,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the upload sent nothing for {self.timeout:g} s, the most allowed (KERNELSCOPE_UPLOAD_IDLE_TIMEOUT); "
                "nothing was stored: send it again",
            )
        return len(expired)

    def run(self, stopped: threading.Event) -> None:
        """Look for idle streams a few times per timeout until `stopped` is set."""
        interval = min(1.0, self.timeout / 4)
        while not stopped.wait(interval):
            self.end_idle()

    def applies(self, method: str, handler: grpc.RpcMethodHandler) -> bool:
        return bool(handler.request_streaming) and method in self._methods

    def wrap(self, method: str, handler: grpc.RpcMethodHandler, behaviour: Behaviour) -> Behaviour:
        def run(requests: Iterable[Any], context: grpc.ServicerContext) -> Any:
            return behaviour(self.watch(requests, method, context), context)

        return run


def _end(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> None:
    """End a call from outside its handler thread, with a status the client sees.

    The threaded server offers only `context.cancel()` for that, which the client reads as a bare
    CANCELLED; the core call underneath takes a status (a server-side cancel sends it as the trailers).
    """
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    if isinstance(call, cygrpc.Call):
        call.cancel(code.value[0], details)
    else:
        context.cancel()
