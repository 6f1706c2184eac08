"""What a model expects at its input: shape, value range and normalisation.

Analyses work in raw value space ([value_min, value_max], e.g. pixels in [0, 1]) and call
`normalize` right before the network, so that visualisations are shown as the model's users see
their data, never with ImageNet statistics the model was not trained with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


@dataclass(frozen=True)
class InputSpec:
    """shape excludes the batch axis: (C, T, H, W) for video models, (C, H, W) for images."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    value_min: float = 0.0
    value_max: float = 1.0
    mean: tuple[float, ...] = field(default_factory=tuple)
    std: tuple[float, ...] = field(default_factory=tuple)

    @property
    def channels(self) -> int:
        return int(self.shape[0])

    @property
    def is_video(self) -> bool:
        return len(self.shape) == 4

    @property
    def spatial(self) -> tuple[int, ...]:
        """(T, H, W) or (H, W)."""
        return tuple(int(s) for s in self.shape[1:])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map raw values (N, C, ...) to what the network sees: (x - mean) / std per channel."""
        if not self.mean and not self.std:
            return x
        view = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.tensor(self.mean or [0.0] * self.channels, dtype=x.dtype, device=x.device).view(view)
        std = torch.tensor(self.std or [1.0] * self.channels, dtype=x.dtype, device=x.device).view(view)
        return (x - mean) / std

    def random(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform raw values in the value range, shape (n, *shape)."""
        u = torch.rand((n, *self.shape), generator=generator)
        return self.value_min + (self.value_max - self.value_min) * u

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "value_min": self.value_min,
            "value_max": self.value_max,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], fallback_shape: Sequence[int] | None = None) -> "InputSpec":
        """Build from the job spec's JSON (proto field names). Zero range means [0, 1]."""
        shape = tuple(int(s) for s in (d.get("shape") or fallback_shape or ()))
        lo, hi = float(d.get("value_min", 0.0) or 0.0), float(d.get("value_max", 0.0) or 0.0)
        if lo == 0.0 and hi == 0.0:
            lo, hi = 0.0, 1.0
        return cls(
            shape=shape,
            dtype=str(d.get("dtype") or "float32"),
            value_min=lo,
            value_max=hi,
            mean=tuple(float(v) for v in d.get("mean", ()) or ()),
            std=tuple(float(v) for v in d.get("std", ()) or ()),
        )
