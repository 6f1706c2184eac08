"""How much of the input a layer's centre unit sees, measured by a gradient probe, and the canvas it needs.

Why measure: architectures are arbitrary uploads (padding, strides, dilations, pools, branches),
so the receptive field is read off the support of d(centre unit)/d(input) rather than computed
from layer attributes. The support is united over a few random inputs and all channels, since a
ReLU or max-pool hides part of the field for any one input.

Why size the canvas: the reference renders every kernel on a full 32x224x224 clip; a unit sees
only its receptive field, so a canvas of that field plus a jitter margin (capped at the model's
input) costs a fraction of the compute and gives the same optimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from workers.kernel_viz import defaults
from workers.kernel_viz.objective import centre_index
from workers.kernel_viz.target import LayerTarget, Size3


@dataclass(frozen=True)
class ReceptiveField:
    """Bounding box (inclusive) of the input pixels the centre unit depends on, per axis (t, y, x), and
    `frames`: the frames inside it that the unit depends on at all (all of lo..hi unless the network
    skips frames, e.g. by subsampling time; empty means every frame of the box)."""

    lo: Size3
    hi: Size3
    frames: tuple[int, ...] = ()

    @property
    def seen_frames(self) -> tuple[int, ...]:
        """The frames the centre unit sees, in increasing order: where its motion is measured."""
        return self.frames or tuple(range(self.lo[0], self.hi[0] + 1))

    @property
    def size(self) -> Size3:
        return tuple(h - l + 1 for l, h in zip(self.lo, self.hi))  # type: ignore[return-value]

    @property
    def centre(self) -> tuple[float, float, float]:
        return tuple(0.5 * (l + h) for l, h in zip(self.lo, self.hi))  # type: ignore[return-value]


@dataclass(frozen=True)
class CanvasPlan:
    """size: the canvas (T, H, W); offset: where it sits in the full input when the network needs full size
    (else None); field: the centre unit's support on the canvas; jitter: shift room per axis (t, y, x)."""

    size: Size3
    offset: Size3 | None
    field: ReceptiveField
    jitter: Size3
    full_field: ReceptiveField


def measure(target: LayerTarget, size: Size3, samples: int = defaults.PROBE_SAMPLES, seed: int = 0) -> ReceptiveField:
    """The centre unit's receptive field on canvases of `size` fed through `target`."""
    generator = torch.Generator().manual_seed(seed)
    lo_value, hi_value = target.value_range
    noise = torch.rand((samples, target.channels, *size), generator=generator)
    video = (lo_value + (hi_value - lo_value) * noise).to(target.device).requires_grad_(True)
    with target.frozen():
        out = target(video)
        units = out[(slice(None), slice(None), *centre_index(out.shape[2:]))]
        (grad,) = torch.autograd.grad(units.abs().sum(), video)
    weight = grad.abs().sum(dim=(0, 1))  # (T, H, W)
    support = weight > weight.max() * 1e-12 if float(weight.max()) > 0 else torch.ones_like(weight, dtype=torch.bool)
    lo: list[int] = []
    hi: list[int] = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = support.any(dim=others).nonzero().flatten()
        lo.append(int(hit.min()))
        hi.append(int(hit.max()))
    frames = tuple(int(f) for f in support.any(dim=(1, 2)).nonzero().flatten())
    return ReceptiveField(lo=tuple(lo), hi=tuple(hi), frames=frames)  # type: ignore[arg-type]


def jitter_margin(extent: int) -> int:
    """Jitter room wanted on each side of a receptive field of this extent (pixels or frames)."""
    return min(defaults.MAX_JITTER, max(defaults.MIN_JITTER, math.ceil(extent * defaults.JITTER_FRACTION)))


def plan_canvas(target: LayerTarget, override: Size3 | None = None) -> CanvasPlan:
    """Canvas = receptive field + 2 jitter margins, capped at the input (or `override`), and where it goes.

    The network is tried on the canvas itself; if it refuses (static shapes) or gives the layer no
    output (pooling needs more), the canvas is placed inside a full-size input around the field.
    The jitter room is what the canvas leaves around the field on each side, up to the margin.
    Strides can leave the centre unit's field off-centre on a canvas, so without an override a
    few slightly larger canvases are probed too and the one with the most jitter room is kept.
    """
    full = target.input_size
    full_field = measure(target.placed(None), full)
    wanted = tuple(jitter_margin(e) for e in full_field.size)
    if override is not None:
        candidates = [tuple(int(s) for s in override)]
    else:
        base = tuple(min(f, e + 2 * m) for f, e, m in zip(full, full_field.size, wanted))
        candidates = list(dict.fromkeys(tuple(min(f, b + k) for f, b in zip(full, base)) for k in range(4)))
    best: CanvasPlan | None = None
    for size in candidates:
        plan = _plan(target, size, full_field, wanted)  # type: ignore[arg-type]
        if best is None or sum(plan.jitter) > sum(best.jitter):
            best = plan
        if best.jitter == tuple(min(w, (s - e) // 2) for w, s, e in zip(wanted, size, full_field.size)):
            break  # as much room as this canvas can give: larger ones only cost more
    assert best is not None
    return best


def _plan(target: LayerTarget, size: Size3, full_field: ReceptiveField, wanted: Size3) -> CanvasPlan:
    offset: Size3 | None = None
    if size != target.input_size and not target.accepts(size):
        offset = tuple(  # type: ignore[assignment]
            min(max(int(round(c - (s - 1) / 2)), 0), f - s)
            for c, s, f in zip(full_field.centre, size, target.input_size)
        )
    # The full input was measured already (same target, size and seed): not again.
    field = full_field if size == target.input_size else measure(target.placed(offset), size)
    jitter = tuple(max(0, min(w, l, s - 1 - h)) for w, l, h, s in zip(wanted, field.lo, field.hi, size))
    return CanvasPlan(size=size, offset=offset, field=field, jitter=jitter, full_field=full_field)  # type: ignore[arg-type]
