"""What stage 1 maximises: one channel per sample of the batch (sample b drives channel c_b).

Why the centre unit by default: a unit has one receptive field, so its optimal input is a
single, well-defined pattern the size of that field; the channel mean instead rewards tiling
the pattern over the whole canvas and depends on the canvas size. Both are offered.
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
    """(B,) activation of channel channels[b] in sample b of a layer output (B, C, *spatial)."""
    picked = output[torch.arange(output.shape[0], device=output.device), channels.to(output.device)]
    if objective is Objective.NEURON:
        return picked[(slice(None), *centre_index(picked.shape[1:]))]
    return picked.flatten(1).mean(dim=1)
