"""Size bounds on every request the public API parses: list lengths, string lengths, total bytes.

gRPC lets a request grow to the message limit (16 MiB), and whatever a request carries may end up in a
record (a job's tasks are stored with it): one CreateJob with 10^6 channel indices used to store 31 MB
and leave the job unreadable. `check` walks a request's set fields and refuses the first one over its
bound with INVALID_ARGUMENT, naming it by its path in the request (`tasks[0].kernel_viz.channels`).

Bounds are protocol limits, the same on every deployment, so they live here rather than in the config:

    any string                       MAX_STRING_CHARS (255) characters, unless listed in _STRING_CHARS
    any list                         MAX_LIST_ENTRIES (1024) entries, unless listed in _LIST_ENTRIES
    the whole request (or header)    MAX_REQUEST_BYTES (64 KiB) encoded
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from service import errors

MAX_STRING_CHARS = 255
MAX_LIST_ENTRIES = 1024
MAX_REQUEST_BYTES = 64 * 1024

# Lists with a bound of their own, by the field's full protobuf name.
_LIST_ENTRIES: dict[str, int] = {
    # Channel indices apply to each chosen layer; the widest video convolutions have 2048 channels.
    "kernelscope.v1.KernelVizOptions.channels": 4096,
    # A canvas is (T, H, W).
    "kernelscope.v1.KernelVizOptions.canvas": 3,
    # An input is (C, T, H, W); a few more axes leave room for other layouts.
    "kernelscope.v1.InputSpec.shape": 8,
    "kernelscope.v1.CreateJobRequest.tasks": 32,
}
# Strings with a bound of their own.
_STRING_CHARS: dict[str, int] = {
    "kernelscope.v1.CreateJobRequest.request_id": 128,
    "kernelscope.v1.ArtifactHeader.media_type": 127,
}


def check(request: Message, prefix: str = "") -> None:
    """INVALID_ARGUMENT (TOO_MANY_ENTRIES, FIELD_TOO_LONG or REQUEST_TOO_LARGE) naming the field over its bound
    by its path (`prefix` first: "header." for an upload's header)."""
    _check_fields(request, prefix)
    size = request.ByteSize()
    if size > MAX_REQUEST_BYTES:
        what = f"the {prefix.rstrip('.')}" if prefix else "the request"
        raise errors.invalid_argument(
            "REQUEST_TOO_LARGE", f"{what} is {size} bytes encoded, the limit is {MAX_REQUEST_BYTES}"
        )


def _check_fields(message: Message, prefix: str) -> None:
    for field, value in message.ListFields():
        path = prefix + field.name
        if field.is_repeated:
            limit = _LIST_ENTRIES.get(field.full_name, MAX_LIST_ENTRIES)
            if len(value) > limit:
                raise errors.invalid_argument(
                    "TOO_MANY_ENTRIES", f"{path} has {len(value)} entries, the limit is {limit}"
                )
            for index, item in enumerate(value):
                _check_value(field, item, f"{path}[{index}]")
        else:
            _check_value(field, value, path)


def _check_value(field: FieldDescriptor, value: object, path: str) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        _check_fields(value, path + ".")  # type: ignore[arg-type]
    elif field.type == FieldDescriptor.TYPE_STRING:
        limit = _STRING_CHARS.get(field.full_name, MAX_STRING_CHARS)
        if len(value) > limit:  # type: ignore[arg-type]
            raise errors.invalid_argument(
                "FIELD_TOO_LONG", f"{path} is {len(value)} characters long, the limit is {limit}"  # type: ignore[arg-type]
            )
