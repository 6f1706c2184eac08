"""Protobuf's base-128 varint, both ways, for the few places that read or write the wire format by hand: upload
chunks (kernelscope.chunks, and the service's zero-copy view of them) and the ONNX header reader
(kernelscope.formats). Standard library only: the worker's model process imports it through formats.
"""

from __future__ import annotations

MAX_BYTES = 10  # a 64-bit value never needs more


def encode(value: int) -> bytes:
    """A non-negative int as a varint (lengths, field tags)."""
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value >> 7 else 0))
        value >>= 7
        if not value:
            return bytes(out)


def decode(data: bytes | memoryview, pos: int) -> tuple[int | None, int]:
    """The varint at `pos` and the position after it; (None, pos) when `data` ends first or it runs past MAX_BYTES."""
    value, shift = 0, 0
    for i in range(pos, min(pos + MAX_BYTES, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    return None, pos
