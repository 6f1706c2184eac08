"""The kernel_viz task end to end, on a model whose first-layer kernels are planted drifting gratings."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

from workers.context import TaskContext
from workers.errors import BadOptions, ModelUnusable
from workers.input_spec import InputSpec
from workers.job import perform
from workers.model import LoadedModel


SPEC = InputSpec(shape=(3, 8, 24, 24), value_min=0.0, value_max=1.0, mean=(0.5,) * 3, std=(0.25,) * 3)
# (direction in degrees, speed in px/frame) of each planted kernel; a last kernel is all zeros (dead).
PLANTED = [(0.0, 1.0), (45.0, 1.0), (250.0, 0.75)]


def grating_kernel(direction_deg: float, speed: float, frames: int = 8, size: int = 9, wavelength: float = 6.0) -> torch.Tensor:
    """A space-time oriented filter (3, T, k, k): a grating drifting `speed` px/frame towards `direction_deg`
    under a Gaussian window. Conv3d correlates, so the input it matches best drifts the same way."""
    theta = math.radians(direction_deg)
    y, x = torch.meshgrid(torch.arange(size) - size // 2, torch.arange(size) - size // 2, indexing="ij")
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]
    along = math.cos(theta) * x + math.sin(theta) * y
    window = torch.exp(-(x**2 + y**2) / (2 * 3.0**2))
    kernel = torch.cos(2 * math.pi / wavelength * (along[None] - speed * t)) * window
    return (kernel / kernel.abs().sum())[None].expand(3, -1, -1, -1)


class PlantedMotion(nn.Module):
    """conv1 holds the planted kernels; the rest makes it a whole classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, len(PLANTED) + 1, (8, 9, 9), padding=(0, 4, 4))
        self.relu = nn.ReLU()
        self.fc = nn.Linear(len(PLANTED) + 1, 2)
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.bias.zero_()
            for k, (direction, speed) in enumerate(PLANTED):
                self.conv1.weight[k] = grating_kernel(direction, speed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv1(x)).mean(dim=(2, 3, 4)))


class TinyImageNet(nn.Module):
    """A 2D image model: kernel_viz must visualise its Conv2d layers as single frames."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 5, padding=2)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _run(module: nn.Module, spec: InputSpec, out_dir: Path, **options: Any) -> dict[str, Any]:
    stages: list[tuple[str, float]] = []
    ctx = TaskContext(
        model=LoadedModel.from_module(module, spec),
        out_dir=out_dir,
        progress=lambda stage, fraction: stages.append((stage, fraction)),
    )
    summary = perform("kernel_viz", ctx, options)
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(stages) > 10
    return summary


def _angle_error(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def test_planted_drifting_gratings_give_their_direction_and_speed(tmp_path: Path) -> None:
    summary = _run(PlantedMotion(), SPEC, tmp_path, steps=256, seed=0)
    json.dumps(summary, allow_nan=False)  # plain JSON
    (layer,) = summary["layers"]
    assert layer["name"] == "conv1" and layer["kind"] == "conv3d"
    assert layer["receptive_field"] == [8, 9, 9]
    assert layer["canvas"][0] == 8 and 9 < layer["canvas"][1] <= 24
    channels = layer["channels"]
    assert [c["index"] for c in channels] == [0, 1, 2, 3]
    for (direction, speed), found in zip(PLANTED, channels):
        assert _angle_error(found["direction_deg"], direction) <= 15.0, found
        assert found["speed_px_per_frame"] == pytest.approx(speed, rel=0.2), found
        assert found["ratio"] > 3.0 and not found["dead"]
        # A linear unit tuned to one motion: the reversed video and the static texture drive it far less.
        assert found["direction_selectivity"] > 0.5
        assert found["motion_dependence"] > 0.5
    assert channels[3]["dead"] and channels[3]["direction_deg"] is None
    assert set(channels[0]) >= {
        "index", "activation", "random_activation", "ratio", "direction_deg", "speed_px_per_frame",
        "direction_selectivity", "motion_dependence", "dead",
    }
    assert set(layer["timing"]) >= {"stage1_s", "stage2_s", "total_s", "channels_per_s"}

    root = tmp_path / "kernel_viz"
    assert json.loads((root / "kernel_viz.json").read_text()) == summary
    for k in range(4):
        for name in (f"ch{k:03d}_video.gif", f"ch{k:03d}_texture.png", f"ch{k:03d}_flow.gif"):
            path = root / "conv1" / name
            assert 0 < path.stat().st_size <= 200_000, path
    assert Image.open(root / "conv1" / "ch000_video.gif").n_frames == 8
    assert Image.open(root / "conv1" / "ch000_flow.gif").n_frames == 7
    assert Image.open(root / "conv1" / "contact_sheet.png").size[0] > 100


def test_image_models_are_visualised_as_single_frames_without_a_motion_stage(tmp_path: Path) -> None:
    spec = InputSpec(shape=(1, 20, 20), value_min=-1.0, value_max=1.0)
    summary = _run(TinyImageNet(), spec, tmp_path, steps=20, channels=[0, 2], objective="CHANNEL")
    (layer,) = summary["layers"]
    assert layer["name"] == "conv" and layer["kind"] == "conv2d" and layer["canvas"][0] == 1
    assert [c["index"] for c in layer["channels"]] == [0, 2]
    for channel in layer["channels"]:
        assert channel["direction_deg"] is None and channel["motion_dependence"] is None
        assert channel["activation"] > channel["random_activation"]
    assert (tmp_path / "kernel_viz" / "conv" / "ch002_texture.png").exists()
    assert not (tmp_path / "kernel_viz" / "conv" / "ch002_flow.gif").exists()


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"layers": ["nope"]}, "UNKNOWN_LAYER"),
        ({"channels": [4]}, "CHANNEL_OUT_OF_RANGE"),
        ({"steps": 0}, "BAD_STEPS"),
        ({"canvas": [8, 30, 30]}, "BAD_CANVAS"),
        ({"canvas": [8, 30]}, "BAD_CANVAS"),
        ({"objective": "LOUDEST"}, "BAD_OBJECTIVE"),
        ({"tv_weight": -1.0}, "BAD_TV_WEIGHT"),
    ],
)
def test_bad_options_are_invalid_argument_with_a_reason(tmp_path: Path, options: dict[str, Any], reason: str) -> None:
    with pytest.raises(BadOptions) as caught:
        _run(PlantedMotion(), SPEC, tmp_path, **{"steps": 2, **options})
    assert caught.value.reason == reason and caught.value.code == "INVALID_ARGUMENT"


def test_models_it_cannot_run_are_failed_precondition(tmp_path: Path) -> None:
    weights_only = LoadedModel(input_spec=SPEC, state_dict=PlantedMotion().state_dict(), module=None, format="STATE_DICT")
    with pytest.raises(ModelUnusable) as caught:
        perform("kernel_viz", TaskContext(model=weights_only, out_dir=tmp_path), {})
    assert caught.value.reason == "NEEDS_RUNNABLE_MODEL"
    no_convs = LoadedModel.from_module(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 24 * 24, 2)), SPEC)
    with pytest.raises(ModelUnusable) as caught:
        perform("kernel_viz", TaskContext(model=no_convs, out_dir=tmp_path), {})
    assert caught.value.reason == "NO_CONV_LAYERS" and caught.value.code == "FAILED_PRECONDITION"


def test_canvas_override_and_seed_are_honoured(tmp_path: Path) -> None:
    summary = _run(PlantedMotion(), SPEC, tmp_path, steps=8, channels=[1], canvas=[8, 12, 12], seed="5")
    assert summary["layers"][0]["canvas"] == [8, 12, 12] and summary["seed"] == 5
