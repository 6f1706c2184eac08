"""ONNX padding conventions translated to torch's.

ONNX writes pads as (begin_1, ..., begin_n, end_1, ..., end_n) over the spatial axes and may ask
for automatic "same" padding; torch's F.pad wants (begin, end) pairs starting from the LAST axis,
and torch's convolutions and pools take only symmetric padding.
"""

from __future__ import annotations

import math
from typing import Sequence


def split_pads(pads: Sequence[int] | None, rank: int) -> tuple[list[int], list[int]]:
    """ONNX `pads` attribute -> (begins, ends) per spatial axis; absent means zeros."""
    if not pads:
        return [0] * rank, [0] * rank
    values = [int(p) for p in pads]
    return values[:rank], values[rank:]


def pad_pairs(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """(begins, ends) over trailing axes in order -> F.pad's list, last axis first."""
    pairs: list[int] = []
    for b, e in zip(reversed(list(begin)), reversed(list(end))):
        pairs += [int(b), int(e)]
    return pairs


def auto_pads(
    spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int], mode: str
) -> tuple[list[int], list[int]]:
    """SAME_UPPER / SAME_LOWER: output size ceil(input / stride), the odd cell at the end (UPPER) or start."""
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = math.ceil(int(size) / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - int(size), 0)
        small, large = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else large)
        end.append(large if mode == "SAME_UPPER" else small)
    return begin, end
