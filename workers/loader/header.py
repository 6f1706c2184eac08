"""The upload header's input spec: validated, and checked against the shape a file records."""

from __future__ import annotations

from typing import Any

from workers.errors import BadOptions, ModelRejected
from workers.input_spec import InputSpec


def _validate_header(header: dict[str, Any]) -> None:
    shape = [int(s) for s in header.get("shape") or []]
    if any(s <= 0 for s in shape):
        raise BadOptions(f"input_spec.shape must be positive, got {shape}", reason="INPUT_SPEC_INVALID")
    lo, hi = float(header.get("value_min", 0.0) or 0.0), float(header.get("value_max", 0.0) or 0.0)
    if (lo, hi) != (0.0, 0.0) and not lo < hi:
        raise BadOptions(f"input_spec value range [{lo}, {hi}] is empty", reason="INPUT_SPEC_INVALID")
    std = [float(s) for s in header.get("std") or []]
    if any(not s > 0 for s in std):
        raise BadOptions(f"input_spec.std must be positive, got {std}", reason="INPUT_SPEC_INVALID")
    for key in ("mean", "std"):
        values = header.get(key) or []
        if values and shape and len(values) != shape[0]:
            raise BadOptions(f"input_spec.{key} has {len(values)} values for {shape[0]} channels", reason="INPUT_SPEC_INVALID")


def _spec(header: dict[str, Any], shape: tuple[int, ...] | None, dtype: str | None = None) -> InputSpec:
    """The upload's spec with the shape (and dtype) the file records filled in when the header has none."""
    merged = dict(header)
    if dtype and not merged.get("dtype"):
        merged["dtype"] = dtype
    spec = InputSpec.from_dict(merged, fallback_shape=shape)
    for key, values in (("mean", spec.mean), ("std", spec.std)):
        if values and spec.shape and len(values) != spec.shape[0]:
            raise BadOptions(f"input_spec.{key} has {len(values)} values for {spec.shape[0]} channels", reason="INPUT_SPEC_INVALID")
    return spec


def _check_shape(header: dict[str, Any], recorded: list[int | None], where: str) -> None:
    """A header shape must agree with the file's static (non-batch) dims."""
    given = [int(s) for s in header.get("shape") or []]
    if not given:
        return
    if len(given) != len(recorded) or any(r is not None and r != g for r, g in zip(recorded, given)):
        shown = ["?" if r is None else r for r in recorded]
        raise ModelRejected(
            f"input_spec.shape {given} disagrees with the {where}'s input shape {shown} (batch axis excluded)",
            reason="INPUT_SPEC_MISMATCH",
        )
