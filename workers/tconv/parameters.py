"""Find the layers tconv_stats reads in a state_dict: 3T parameter groups and plain Conv3d weights.

A 3T group is any prefix P with P+`first_weight`, P+`scale`, P+`rotate`, P+`translate_x`, P+`translate_y`
(the authors' names and `TConv3d`'s), P empty or ending in a separator (`conv1.`, `p_conv1_`, …), so a
weights-only checkpoint, a torch.export program and ONNX initializers all read the same way. Every other
rank-5 floating tensor is a Conv3d weight; the authors' layer also stores a stale full kernel as
P+`weight`, which belongs to its group and is not a Conv3d.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from workers.errors import ModelUnusable

TRANSFORM_NAMES: tuple[str, ...] = ("scale", "rotate", "translate_x", "translate_y")
_BASE = "first_weight"
_SEPARATORS = "._/:"


@dataclass(frozen=True)
class ThreeTParams:
    """Per-step transforms of one layer, the authors' layout: each (k_t−1, C_out), rotation in radians,
    translation in normalised units; kernel_hw = (k_h, k_w) gives the pixel size of one unit."""

    scale: np.ndarray
    rotate: np.ndarray
    translate_x: np.ndarray
    translate_y: np.ndarray
    kernel_hw: tuple[int, int]

    @property
    def steps(self) -> int:
        return int(self.scale.shape[0])

    @property
    def filters(self) -> int:
        return int(self.scale.shape[1])

    def select(self, mask: np.ndarray) -> "ThreeTParams":
        """Only the filters where mask (C_out,) is true."""
        pick = lambda a: a[:, mask]  # noqa: E731
        return ThreeTParams(pick(self.scale), pick(self.rotate), pick(self.translate_x), pick(self.translate_y), self.kernel_hw)


@dataclass(frozen=True)
class TConvGroup:
    """One 3TConv layer found in a state_dict."""

    name: str
    keys: tuple[str, ...]
    base: torch.Tensor  # (C_out, C_in, k_h, k_w)
    params: ThreeTParams

    @property
    def kernel_shape(self) -> tuple[int, int, int, int, int]:
        c_out, c_in, k_h, k_w = (int(s) for s in self.base.shape)
        return (c_out, c_in, self.params.steps + 1, k_h, k_w)


@dataclass(frozen=True)
class Conv3dWeight:
    """One plain Conv3d weight (C_out, C_in, k_t, k_h, k_w) found in a state_dict."""

    name: str
    key: str
    weight: torch.Tensor

    @property
    def kernel_shape(self) -> tuple[int, int, int, int, int]:
        return tuple(int(s) for s in self.weight.shape)  # type: ignore[return-value]


def _layer_name(prefix: str) -> str:
    return prefix.rstrip(_SEPARATORS)


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _group(prefix: str, state: dict[str, torch.Tensor]) -> TConvGroup:
    group = group_from(_layer_name(prefix), {n: state[prefix + n] for n in (_BASE, *TRANSFORM_NAMES)})
    return dataclasses.replace(group, keys=tuple(prefix + n for n in (_BASE, *TRANSFORM_NAMES)))


def group_from(name: str, tensors: dict[str, torch.Tensor]) -> TConvGroup:
    """The 3TConv layer `name` from its first_weight, scale, rotate, translate_x, translate_y tensors."""
    label = name or "(root)"
    raw = tensors[_BASE]
    base = raw[:, :, 0] if raw.dim() == 5 and raw.shape[2] == 1 else raw
    if base.dim() != 4:
        raise ModelUnusable(
            f"3TConv layer {label!r}: {_BASE} must be (C_out, C_in, 1, k_h, k_w), got {tuple(raw.shape)}",
            reason="TCONV_PARAMETERS_MALFORMED",
        )
    c_out = int(base.shape[0])
    transforms = [tensors[n] for n in TRANSFORM_NAMES]
    shapes = {tuple(t.shape) for t in transforms}
    if len(shapes) != 1 or transforms[0].dim() != 2 or transforms[0].shape[1] != c_out:
        raise ModelUnusable(
            f"3TConv layer {label!r}: scale, rotate, translate_x, translate_y must all be (k_t-1, {c_out}); "
            f"got {[tuple(t.shape) for t in transforms]}",
            reason="TCONV_PARAMETERS_MALFORMED",
        )
    params = ThreeTParams(*(_as_numpy(t) for t in transforms), kernel_hw=(int(base.shape[2]), int(base.shape[3])))
    keys = tuple(f"{name}.{n}" if name else n for n in (_BASE, *TRANSFORM_NAMES))
    return TConvGroup(name=name, keys=keys, base=base.detach(), params=params)


def find_layers(state: dict[str, torch.Tensor]) -> tuple[list[TConvGroup], list[Conv3dWeight]]:
    """All 3T groups and all Conv3d weights (any k_t) in state_dict order."""
    groups: list[TConvGroup] = []
    claimed: set[str] = set()
    for key in state:
        if not key.endswith(_BASE):
            continue
        prefix = key[: -len(_BASE)]
        if prefix and prefix[-1] not in _SEPARATORS:
            continue
        if all(prefix + n in state for n in TRANSFORM_NAMES):
            group = _group(prefix, state)
            groups.append(group)
            claimed.update(group.keys)
            claimed.update(prefix + s for s in ("weight", "bias"))
    convs: list[Conv3dWeight] = []
    for key, value in state.items():
        if key in claimed or not isinstance(value, torch.Tensor) or value.dim() != 5 or not value.is_floating_point():
            continue
        stem = key[: -len("weight")] if key.endswith("weight") else None
        name = _layer_name(stem) if stem is not None and (not stem or stem[-1] in _SEPARATORS) else key
        convs.append(Conv3dWeight(name=name, key=key, weight=value.detach()))
    return groups, convs
