"""What stage 1 maximises: one channel per sample of the batch (sample b drives channel c_b).

Why the centre unit by default: a unit has one receptive field, so its optimal input is a
single, well-defined pattern the size of that field; the channel mean instead rewards tiling
the pattern over the whole canvas and depends on the canvas size. Both are offered.

Layers that fold other axes into the batch (MViT's pooling convolutions see (videos × heads, C, T, H, W))
give k rows per video; video b's activation is then channel c_b's mean over its k rows, so every head's
copy of the channel is driven, and none is mistaken for another video's.
"""

from __future__ import annotations

from enum import Enum
from typing import Sequence

import torch


class Objective(str, Enum):
    """NEURON: the centre unit of the channel. CHANNEL: the mean of the whole channel."""

    NEURON = "NEURON"
    CHANNEL = "CHANNEL"

    @classmethod
    def parse(cls, value: "str | int | Objective | None") -> "Objective":
        """The proto enum by name (MessageToDict gives names) or number; unset or OBJECTIVE_UNSPECIFIED means NEURON."""
        if isinstance(value, Objective):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            value = {0: "NEURON", 1: "NEURON", 2: "CHANNEL"}.get(value, str(value))
        if value is None or value == "" or value == "OBJECTIVE_UNSPECIFIED":
            return cls.NEURON
        return cls(str(value).upper())


def centre_index(spatial: Sequence[int]) -> tuple[int, ...]:
    """Index of the centre unit of a feature map with these spatial sizes (lower-right of the middle when even)."""
    return tuple(int(s) // 2 for s in spatial)


def channel_activations(output: torch.Tensor, channels: torch.Tensor, objective: Objective) -> torch.Tensor:
    """(B,) activation of channel channels[b] in video b of a layer output (B·k, C, *spatial), k rows per video."""
    videos = int(channels.shape[0])
    if videos == 0 or output.shape[0] % videos:
        raise ValueError(f"a layer output of batch {output.shape[0]} cannot be split among {videos} videos")
    folded = output.reshape(videos, output.shape[0] // videos, *output.shape[1:])  # (B, k, C, *spatial)
    picked = folded[torch.arange(videos, device=output.device), :, channels.to(output.device)]  # (B, k, *spatial)
    if objective is Objective.NEURON:
        picked = picked[(slice(None), slice(None), *centre_index(picked.shape[2:]))]
    return picked.flatten(1).mean(dim=1)
