"""Stage 1 of kernel_viz: parameterisation, transforms, receptive-field probe, canvas, batched renderer."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from workers.input_spec import InputSpec
from workers.kernel_viz import transforms
from workers.kernel_viz.objective import Objective, channel_activations
from workers.kernel_viz.parameterization import FourierVideo
from workers.kernel_viz.receptive_field import measure, plan_canvas
from workers.kernel_viz.renderer import channel_generator, render
from workers.kernel_viz.target import LayerTarget
from workers.kernel_viz.transforms import Jitter
from workers.model import LoadedModel


SPEC = InputSpec(shape=(3, 8, 24, 24), value_min=0.0, value_max=1.0, mean=(0.5,) * 3, std=(0.25,) * 3)


class TwoConvs(nn.Module):
    """conv1 (3x5x5) → ReLU → pool (space, 2) → conv2 (3x3x3): conv2's centre unit sees 5 frames x 10x10 pixels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv3d(3, 6, (3, 5, 5), padding=(1, 2, 2))
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool3d((1, 2, 2))
        self.conv2 = nn.Conv3d(6, 5, 3, padding=1)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.pool(self.relu(self.conv1(x))))
        return self.head(x.mean(dim=(2, 3, 4)))


class FullSizeOnly(TwoConvs):
    """The same network refusing any input but its own size, like a torch.export program with static shapes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != SPEC.shape:
            raise RuntimeError(f"expected input {SPEC.shape}, got {tuple(x.shape[1:])}")
        return super().forward(x)


class BatchOfOne(TwoConvs):
    """The same network refusing batches of more than one sample (an export with a static batch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1:
            raise RuntimeError(f"expected batch 1, got {x.shape[0]}")
        return super().forward(x)


def _target(module: nn.Module, layer: str) -> LayerTarget:
    return LayerTarget(LoadedModel.from_module(module, SPEC), layer, torch.device("cpu"))


def test_fourier_video_stays_in_the_value_range_and_starts_the_same_in_any_batch() -> None:
    spec_range = (-1.0, 2.0)
    with torch.no_grad():
        together = FourierVideo(3, (4, 9, 9), spec_range, [channel_generator(7, c) for c in (0, 1, 2)])()
        alone = FourierVideo(3, (4, 9, 9), spec_range, [channel_generator(7, 1)])()
    assert together.shape == (3, 3, 4, 9, 9)
    assert float(together.min()) >= -1.0 and float(together.max()) <= 2.0
    assert torch.allclose(together[1], alone[0])
    assert not torch.allclose(together[0], together[1])


def test_jitter_shifts_by_whole_pixels_both_ways_and_scales_about_the_centre() -> None:
    video = torch.rand(2, 3, 5, 11, 11)
    params = torch.tensor([[1.0, -2.0, 3.0, 1.0], [0.0, 0.0, 0.0, 1.2]])
    out = transforms.apply(video, params)
    # Sample 0: content moves +1 frame, 2 px up, 3 px right (exact: integer shifts, no blur).
    assert torch.allclose(out[0, :, 1:, :-2, 3:], video[0, :, :-1, 2:, :-3], atol=1e-5)
    # Sample 1: a pure scale keeps the centre pixel where it is.
    assert torch.allclose(out[1, :, :, 5, 5], video[1, :, :, 5, 5], atol=1e-5)
    draws = Jitter((1, 2, 2), 0.05).draw(400, torch.Generator().manual_seed(0))
    assert draws[:, 1].min() == -2 and draws[:, 1].max() == 2  # centred: both signs
    assert float(draws[:, 3].min()) >= 0.95 and float(draws[:, 3].max()) <= 1.05


def test_gradient_probe_measures_the_receptive_field() -> None:
    target = _target(TwoConvs(), "conv2")
    assert measure(target, (8, 24, 24)).size == (5, 10, 10)
    assert measure(_target(TwoConvs(), "conv1"), (8, 24, 24)).size == (3, 5, 5)


def test_canvas_is_the_field_plus_jitter_room_and_the_field_fits_inside() -> None:
    plan = plan_canvas(_target(TwoConvs(), "conv2"))
    assert plan.full_field.size == (5, 10, 10)
    assert plan.offset is None
    assert all(c <= f for c, f in zip(plan.size, (8, 24, 24)))
    assert all(c > e for c, e in zip(plan.size, plan.full_field.size))
    for lo, hi, size, room in zip(plan.field.lo, plan.field.hi, plan.size, plan.jitter):
        assert room >= 1 and lo >= room and size - 1 - hi >= room  # jitter never shows the unit padding


def test_networks_that_take_only_their_full_input_or_one_sample_give_the_same_result() -> None:
    free_target, fixed_target = _target(TwoConvs(), "conv2"), _target(FullSizeOnly(), "conv2")
    free, fixed = plan_canvas(free_target), plan_canvas(fixed_target)
    # The model wrapper places the canvas in a full-size input itself (kernel_viz feeds canvases as they are).
    assert fixed.offset is None and fixed.size == free.size and fixed.field == free.field
    assert fixed_target.model.placement("conv2", fixed.size) is not None
    a = render(free_target, [1, 3], free.size, steps=12, jitter=Jitter(free.jitter))
    b = render(fixed_target, [1, 3], fixed.size, steps=12, jitter=Jitter(fixed.jitter))
    # The centre unit sees only the canvas, so the placement inside grey changes nothing it responds to.
    assert b.activations == pytest.approx(a.activations, rel=0.05, abs=1e-3)
    single = _target(BatchOfOne(), "conv2")
    c = render(single, [1, 3], free.size, steps=12, jitter=Jitter(free.jitter))
    assert single.model.shapes.batch == 1 and c.activations == pytest.approx(a.activations, rel=1e-4, abs=1e-5)


def test_a_batch_of_channels_reaches_the_same_activations_as_separate_runs() -> None:
    target = _target(TwoConvs(), "conv2")
    plan = plan_canvas(target)
    kwargs: dict[str, Any] = dict(steps=25, seed=3, jitter=Jitter(plan.jitter, 0.05))
    batch = render(target, [0, 1, 2, 3, 4], plan.size, **kwargs)
    alone = [render(target, [c], plan.size, **kwargs).activations[0] for c in range(5)]
    assert batch.activations == pytest.approx(alone, rel=1e-3, abs=1e-4)
    assert torch.allclose(batch.videos[2], render(target, [2], plan.size, **kwargs).videos[0], atol=1e-4)
    chunked = render(target, [0, 1, 2, 3, 4], plan.size, chunk=2, **kwargs)
    assert chunked.activations == pytest.approx(batch.activations, rel=1e-3, abs=1e-4)
    reseeded = render(target, [0, 1, 2, 3, 4], plan.size, **{**kwargs, "seed": 4})
    assert reseeded.activations != pytest.approx(batch.activations, rel=1e-3)


def test_rendering_drives_units_far_above_their_start_and_never_touches_the_weights() -> None:
    module = TwoConvs()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    flags = [p.requires_grad for p in module.parameters()]
    target = _target(module, "conv2")
    plan = plan_canvas(target)
    start = render(target, [0, 1, 2], plan.size, steps=1, jitter=Jitter(plan.jitter))
    end = render(target, [0, 1, 2], plan.size, steps=60, jitter=Jitter(plan.jitter))
    assert all(e > s + 0.5 for s, e in zip(start.activations, end.activations))
    assert all(p.grad is None for p in module.parameters())
    assert [p.requires_grad for p in module.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_channel_objective_is_the_mean_and_neuron_the_centre() -> None:
    out = torch.arange(2 * 3 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 3, 5, 5)
    picked = torch.tensor([2, 0])
    neuron = channel_activations(out, picked, Objective.NEURON)
    channel = channel_activations(out, picked, Objective.CHANNEL)
    assert neuron.tolist() == [float(out[0, 2, 1, 2, 2]), float(out[1, 0, 1, 2, 2])]
    assert channel.tolist() == pytest.approx([float(out[0, 2].mean()), float(out[1, 0].mean())])
    assert Objective.parse(None) is Objective.NEURON
    assert Objective.parse("OBJECTIVE_UNSPECIFIED") is Objective.NEURON
    assert Objective.parse("channel") is Objective.CHANNEL


class _PixelVideo(nn.Module):
    """A pixel-space parameterisation (Lucent's `param.pixel_image` in 3D): one logit per value."""

    made = 0

    def __init__(self, channels: int, size: Any, value_range: tuple[float, float], generators: Any, device: torch.device) -> None:
        super().__init__()
        _PixelVideo.made += 1
        self.lo, self.hi = value_range
        self.logits = nn.Parameter(torch.stack([0.01 * torch.randn((channels, *size), generator=g) for g in generators]).to(device))

    def forward(self) -> torch.Tensor:
        return self.lo + (self.hi - self.lo) * torch.sigmoid(self.logits)


def test_the_renderer_takes_its_parameterization_as_an_argument() -> None:
    target = _target(TwoConvs(), "conv2")
    plan = plan_canvas(target)
    before = _PixelVideo.made
    start = render(target, [0, 1], plan.size, parameterization=_PixelVideo, steps=0, jitter=Jitter(plan.jitter))
    done = render(target, [0, 1], plan.size, parameterization=_PixelVideo, steps=40, jitter=Jitter(plan.jitter))
    assert _PixelVideo.made == before + 2  # one module per chunk, from the argument
    assert done.videos.shape == (2, 3, *plan.size)
    assert all(d > s + 0.1 for d, s in zip(done.activations, start.activations)), (start.activations, done.activations)
    fourier = render(target, [0, 1], plan.size, steps=40, jitter=Jitter(plan.jitter))
    assert not torch.allclose(fourier.videos, done.videos)  # the default is still FourierVideo
