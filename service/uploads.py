"""Client-streaming uploads: the first message is a header, every later one a chunk of bytes."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from service import errors


def split(requests: Iterable[Any], header_type: str) -> tuple[Any, Iterator[bytes]]:
    """(header, chunks) of an upload stream whose messages have a oneof "payload" of header | chunk.

    INVALID_ARGUMENT when the stream is empty, starts with a chunk, or repeats the header.
    """
    stream = iter(requests)
    first = next(stream, None)
    if first is None or first.WhichOneof("payload") != "header":
        raise errors.invalid_argument(
            "HEADER_REQUIRED", f"the first message of an upload must be its {header_type}, then the bytes in chunks"
        )

    def chunks() -> Iterator[bytes]:
        for message in stream:
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
