"""The network from the model's raw input up to one layer, as a function of raw 5D canvas videos.

Everything in kernel_viz is 5D (B, C, T, H, W) in the model's raw value space; this is the one
place that normalises with the model's own input spec, drops the time axis for image models
(T = 1) and stops the forward pass at the target layer. Any batch and any canvas go to the model
wrapper (LoadedModel.forward_to), which copes with exports of fixed batch or fixed size; a canvas
is placed inside a full-size grey input here only when the plan asks for it (`placed`): a canvas
too small for the layer to give any output.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from workers.errors import ModelUnusable, TaskError
from workers.input_spec import InputSpec
from workers.model import LoadedModel, frozen

Size3 = tuple[int, int, int]


def input_size(spec: InputSpec) -> Size3:
    """A model's input as (T, H, W); T = 1 for an image model."""
    spatial = spec.spatial
    return (1, *spatial) if len(spatial) == 2 else tuple(spatial)  # type: ignore[return-value]


@dataclass
class LayerTarget:
    """model up to `layer` on `device`. offset: where the plan places canvases inside the full input (a canvas
    too small for the layer to give an output), or None: canvases are fed as they are."""

    model: LoadedModel
    layer: str
    device: torch.device
    offset: Size3 | None = None

    def __post_init__(self) -> None:
        module = self.model.require_module("kernel_viz")
        self.model.submodule(self.layer)  # an unknown name fails here, listing the valid ones
        first = next(iter(module.parameters()), None)
        if first is not None and first.device != torch.device(self.device):
            module.to(self.device)

    @property
    def module(self) -> nn.Module:
        return self.model.require_module("kernel_viz")

    @property
    def input_size(self) -> Size3:
        return input_size(self.model.input_spec)

    @property
    def channels(self) -> int:
        return self.model.input_spec.channels

    @property
    def value_range(self) -> tuple[float, float]:
        spec = self.model.input_spec
        return float(spec.value_min), float(spec.value_max)

    def placed(self, offset: Size3 | None) -> "LayerTarget":
        """The same target with canvases placed at `offset` inside the full input (None: fed as they are)."""
        return replace(self, offset=offset)

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """The layer's output (B·k, C', ...) for raw videos (B, C, T, H, W); k > 1 where the layer folds
        other axes into the batch (attention heads), each video's k rows together."""
        video = video.to(self.device)
        if self.offset is not None:
            video = self._embed(video)
        x = self.model.input_spec.normalize(video)
        if not self.model.input_spec.is_video:
            x = x[:, :, 0]
        out = self.model.forward_to(self.layer, x)
        if out.dim() == 0 or out.shape[0] % video.shape[0]:
            raise ModelUnusable(
                f"layer {self.layer!r} returns {tuple(out.shape)} for {video.shape[0]} videos: its batch axis does not "
                "hold the videos (or the videos times other axes), so its channels cannot be told apart per video; "
                "pick another layer",
                reason="LAYER_BATCH_NOT_VIDEOS",
            )
        return out

    def accepts(self, size: Size3) -> bool:
        """Whether the network runs on a canvas of this (T, H, W) and gives the layer a non-empty output."""
        try:
            with torch.no_grad():
                out = self.placed(None)(torch.zeros((1, self.channels, *size), device=self.device))
        except TaskError:
            raise
        except Exception:
            return False
        return out.numel() > 0

    @contextlib.contextmanager
    def frozen(self) -> Iterator["LayerTarget"]:
        """Weights need no gradient and the network is in eval mode while inside; both restored after."""
        modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        try:
            with frozen(self.module):
                yield self
        finally:
            for m, mode in modes:
                m.training = mode

    def _embed(self, video: torch.Tensor) -> torch.Tensor:
        """The canvas inside a full-size input of mid-range grey (gradients flow to the canvas only)."""
        assert self.offset is not None
        full = self.input_size
        pad: list[int] = []
        for axis in (2, 1, 0):  # F.pad lists the last axis first
            before = self.offset[axis]
            pad += [before, full[axis] - before - video.shape[2 + axis]]
        if min(pad) < 0:
            raise ValueError(f"canvas {tuple(video.shape[2:])} at {self.offset} does not fit the input {full}")
        lo, hi = self.value_range
        return F.pad(video, pad, value=0.5 * (lo + hi))
