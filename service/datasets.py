"""Validation of uploaded datasets (NPZ with x, y and optional class_names), before they are stored.

Array headers are read from the zip first, so a compressed NPZ that would inflate past the limits
is refused before numpy decodes it; nothing is ever unpickled (allow_pickle=False).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from service import errors

# Elements checked for finiteness at a time, so the check needs no second full-size array.
_FINITE_BLOCK = 1 << 22
# Most classes a dataset may have (labels 0..MAX_CLASSES-1): well above ImageNet-21k's 21,841, and small
# enough that the per-class arrays of the analyses and the stored record stay bounded.
MAX_CLASSES = 100_000
# Longest class name, characters, and most characters of all class names together (what the record stores).
MAX_CLASS_NAME_CHARS = 255
MAX_CLASS_NAMES_CHARS = 2 * 1024 * 1024


@dataclass(frozen=True)
class DatasetFacts:
    """What the service records about a valid dataset."""

    num_samples: int
    num_classes: int
    class_names: list[str]
    sample_shape: list[int]


def _bad(message: str, reason: str = "BAD_DATASET") -> errors.ServiceError:
    return errors.invalid_argument(reason, message)


def inspect_npz(path: Path, *, max_samples: int, max_decoded_bytes: int) -> DatasetFacts:
    """Facts of the NPZ at `path`, or INVALID_ARGUMENT saying what is wrong with it."""
    headers = _array_headers(path)
    for required in ("x", "y"):
        if required not in headers:
            raise _bad(f"dataset needs arrays 'x' and 'y'; found {sorted(headers) or 'none'}", "DATASET_FIELDS")
    decoded = 0
    for name, (shape, dtype) in headers.items():
        if dtype.hasobject:
            raise _bad(f"array {name!r} holds Python objects; only numeric and string arrays are accepted")
        decoded += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if decoded > max_decoded_bytes:
        raise errors.resource_exhausted(
            "TOO_LARGE", f"dataset arrays decode to {decoded} bytes, over the limit of {max_decoded_bytes} bytes"
        )
    x_shape, x_dtype = headers["x"]
    y_shape, y_dtype = headers["y"]
    if x_dtype.kind != "f":
        raise _bad(f"x must be a float array, got dtype {x_dtype}")
    if y_dtype.kind not in "iu":
        raise _bad(f"y must be an integer array, got dtype {y_dtype}")
    if len(x_shape) < 2:
        raise _bad(f"x must have shape (N, *sample shape), got {tuple(x_shape)}")
    if len(y_shape) != 1:
        raise _bad(f"y must have shape (N,), got {tuple(y_shape)}")
    if x_shape[0] != y_shape[0]:
        raise _bad(f"x has {x_shape[0]} samples but y has {y_shape[0]} labels")
    n = int(x_shape[0])
    if n == 0:
        raise _bad("dataset has no samples")
    if n > max_samples:
        raise errors.resource_exhausted("TOO_MANY_SAMPLES", f"dataset has {n} samples, over the limit of {max_samples}")

    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
            names = npz["class_names"] if "class_names" in headers else None
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the uploader's file
        raise _bad(f"not a readable NPZ: {exc}", "DATASET_UNREADABLE") from None

    _check_finite(x)
    if int(y.min()) < 0:
        raise _bad(f"y: labels must be >= 0, found {int(y.min())}", "BAD_LABELS")
    if int(y.max()) >= MAX_CLASSES:
        raise _bad(
            f"y: labels must be below {MAX_CLASSES} (class indices 0..{MAX_CLASSES - 1}), found {int(y.max())}",
            "BAD_LABELS",
        )
    num_classes = int(y.max()) + 1
    present = np.unique(y).size
    if present < 2:
        raise _bad(f"dataset needs at least 2 classes, y holds {present}")
    class_names = _class_names(names, num_classes)
    return DatasetFacts(
        num_samples=n, num_classes=num_classes, class_names=class_names, sample_shape=[int(s) for s in x_shape[1:]]
    )


def check_fits_model(sample_shape: Sequence[int], input_shape: Sequence[int]) -> None:
    """FAILED_PRECONDITION when both shapes are known and differ (checked at CreateJob)."""
    if sample_shape and input_shape and list(sample_shape) != list(input_shape):
        raise errors.failed_precondition(
            "DATASET_SHAPE_MISMATCH",
            f"dataset samples have shape {tuple(sample_shape)} but the model expects {tuple(input_shape)}",
        )


def _array_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape, dtype) of every .npy member, read from headers only."""
    try:
        with zipfile.ZipFile(path) as archive:
            headers = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        shape, _, dtype = np.lib.format._read_array_header(member, version)  # noqa: SLF001
                headers[info.filename[: -len(".npy")]] = (tuple(int(s) for s in shape), np.dtype(dtype))
            return headers
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise _bad(f"not a readable NPZ (a zip of .npy arrays, as numpy.savez writes): {exc}", "DATASET_UNREADABLE") from None


def _check_finite(x: np.ndarray) -> None:
    flat = x.reshape(-1)
    for start in range(0, flat.size, _FINITE_BLOCK):
        block = flat[start : start + _FINITE_BLOCK]
        if not np.isfinite(block).all():
            bad = start + int(np.flatnonzero(~np.isfinite(block))[0])
            sample = bad // max(1, flat.size // x.shape[0])
            raise _bad(f"x holds NaN or infinite values (first in sample {sample})", "DATASET_NOT_FINITE")


def _class_names(names: np.ndarray | None, num_classes: int) -> list[str]:
    if names is None:
        return []
    if names.dtype.kind not in "US" or names.ndim != 1:
        raise _bad(f"class_names must be a 1-D string array, got dtype {names.dtype} shape {names.shape}")
    if names.shape[0] != num_classes:
        raise _bad(f"class_names has {names.shape[0]} entries but y has {num_classes} classes (0..{num_classes - 1})")
    decoded = [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names.tolist()]
    longest = max(decoded, key=len, default="")
    if len(longest) > MAX_CLASS_NAME_CHARS:
        raise _bad(f"class_names: a name is {len(longest)} characters long, the limit is {MAX_CLASS_NAME_CHARS}")
    total = sum(len(n) for n in decoded)
    if total > MAX_CLASS_NAMES_CHARS:
        raise _bad(f"class_names: {total} characters in all, the limit is {MAX_CLASS_NAMES_CHARS}")
    return decoded
