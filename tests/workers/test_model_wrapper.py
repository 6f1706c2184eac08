"""The model wrapper: every analysis gets the same numbers from a .pt2 exported at batch 1 or with fixed
sizes as from the model itself, at any batch and any canvas (workers/model.py, workers/export_graph.py).

The reference is the live nn.Module (it takes any shape). Each test loads real exports through load_model,
as a job does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from workers.class_filters.activations import collect
from workers.context import TaskContext
from workers.dataset import Dataset
from workers.errors import ModelUnusable
from workers.input_spec import InputSpec
from workers.job import perform
from workers.kernel_viz.objective import Objective, channel_activations
from workers.kernel_viz.receptive_field import plan_canvas
from workers.kernel_viz.renderer import render
from workers.kernel_viz.target import LayerTarget
from workers.kernel_viz.transforms import Jitter
from workers.loader import load_model
from workers.model import LoadedModel
from workers.samples.models import export_pt2


SPEC = InputSpec(shape=(3, 8, 24, 24), value_min=0.0, value_max=1.0, mean=(0.45,) * 3, std=(0.25,) * 3)
HEADER = {"value_min": 0.0, "value_max": 1.0, "mean": list(SPEC.mean), "std": list(SPEC.std)}
CLASSES = 3
REL = 1e-4


class Grating(nn.Module):
    """C3D-like: conv1 (a planted drifting grating in channel 0) → pool → conv2 → pool → conv3 → global
    mean → `x.view(x.size(0), -1)` → fc. Traced at batch 1, the view's size becomes the literal [1, -1]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv3d(3, 6, (3, 5, 5), padding=(1, 2, 2))
        self.pool1 = nn.MaxPool3d((1, 2, 2))
        self.conv2 = nn.Conv3d(6, 8, 3, padding=1)
        self.pool2 = nn.MaxPool3d(2)
        self.conv3 = nn.Conv3d(8, 8, 3, padding=1)
        self.pool3 = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(8, CLASSES)
        t, y, x = torch.meshgrid(torch.arange(3.0), torch.arange(5.0), torch.arange(5.0), indexing="ij")
        with torch.no_grad():
            self.conv1.weight[0] = torch.cos(2 * torch.pi * (x - t) / 5).expand(3, -1, -1, -1) / 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(torch.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.conv2(x)))
        x = self.pool3(torch.relu(self.conv3(x)))
        return self.fc(x.view(x.size(0), -1))


class ZerosChannel(nn.Module):
    """Concatenates a zero channel made with `torch.zeros(x.size(0), 1, T, H, W)`: traced at batch 1 the
    zeros are a literal (1, 1, 8, 24, 24) block, which no rewrite of views can generalise."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv3d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, torch.zeros(x.size(0), 1, *x.shape[2:], dtype=x.dtype, device=x.device)], dim=1)
        x = torch.relu(self.conv(x))
        return self.fc(x.mean(dim=(2, 3, 4)))


class FoldedHeads(nn.Module):
    """An MViT-style pooling conv: `pool` sees (videos × 2 heads, 4, T, H, W)."""

    heads = 2

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.proj = nn.Conv3d(3, 8, 3, padding=1)
        self.pool = nn.Conv3d(4, 4, 3, padding=1, groups=4)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        n, c, t, h, w = x.shape
        x = self.pool(x.reshape(n * self.heads, c // self.heads, t, h, w)).reshape(n, c, t, h, w)
        return self.fc(x.mean(dim=(2, 3, 4)))


class PooledBatch(nn.Module):
    """A layer that sees the batch averaged away: its output has one row whatever the number of videos."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.mean(dim=0, keepdim=True)).mean(dim=(2, 3, 4))


def _live(module: nn.Module) -> LoadedModel:
    return LoadedModel.from_module(module.eval(), SPEC)


def _export(tmp: Path, module: nn.Module, name: str, dynamic_batch: bool) -> LoadedModel:
    path = tmp / f"{name}.pt2"
    export_pt2(module.eval(), path, torch.zeros((1, *SPEC.shape)), dynamic_batch=dynamic_batch)
    return load_model(path, "TORCH_EXPORT", HEADER)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    """The grating model exported at batch 1 (every size fixed) and with a dynamic batch (sizes fixed)."""
    tmp = tmp_path_factory.mktemp("exports")
    torch.set_num_threads(1)
    return {
        "batch1": _export(tmp, Grating(), "grating_b1", dynamic_batch=False),
        "dynamic_batch": _export(tmp, Grating(), "grating_dyn", dynamic_batch=True),
    }


def _close(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, rel: float = REL) -> bool:
    a, b = torch.as_tensor(a).detach(), torch.as_tensor(b).detach()
    scale = float(b.abs().max()) if b.numel() else 0.0
    return a.shape == b.shape and float((a.double() - b.double()).abs().max()) <= rel * max(scale, 1e-6)


def _inputs(n: int, size: tuple[int, ...] = SPEC.spatial, seed: int = 0) -> torch.Tensor:
    raw = torch.rand((n, SPEC.channels, *size), generator=torch.Generator().manual_seed(seed))
    return SPEC.normalize(raw)


@pytest.mark.parametrize("export", ["batch1", "dynamic_batch"])
def test_forward_to_takes_any_batch_and_canvas_with_the_live_models_numbers(exports: dict[str, LoadedModel], export: str) -> None:
    loaded, live = exports[export], _live(Grating())
    assert loaded.shapes.batch is None and {"conv1", "conv2", "conv3"} <= loaded.shapes.free_layers
    for layer in ("conv1", "conv2", "conv3", "fc"):
        x = _inputs(3, seed=1)
        assert _close(loaded.forward_to(layer, x), live.forward_to(layer, x)), layer
    for layer in ("conv1", "conv2"):
        for size in ((5, 14, 18), (8, 12, 12), (3, 9, 7)):
            x = _inputs(2, size, seed=2)
            assert loaded.placement(layer, size) is None  # the canvas itself runs, not a full input
            assert _close(loaded.forward_to(layer, x), live.forward_to(layer, x)), (layer, size)
    x = _inputs(5, seed=3)
    with torch.no_grad():
        assert _close(loaded.module(x), live.module(x))  # type: ignore[misc]


def test_class_filters_reads_a_batch1_export_like_the_live_model(exports: dict[str, LoadedModel]) -> None:
    loaded, live = exports["batch1"], _live(Grating())
    rng = np.random.default_rng(0)
    x = rng.random((20, *SPEC.shape), dtype=np.float32)
    y = np.arange(20) % CLASSES
    fit = np.arange(0, 20, 2)
    for layer in ("", "conv3"):  # the head's input (exact split) and an inner layer (gradient × activation)
        a = collect(loaded, x, y, fit, layer=layer, batch_size=8)
        b = collect(live, x, y, fit, layer=layer, batch_size=8)
        assert a.attribution == b.attribution
        for field in ("features", "contributions", "logits"):
            assert _close(getattr(a, field), getattr(b, field)), (layer, field)


def test_class_filters_runs_end_to_end_on_a_batch1_export(exports: dict[str, LoadedModel], tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.random((12 * CLASSES, *SPEC.shape), dtype=np.float32)
    y = np.repeat(np.arange(CLASSES), 12)
    ctx = TaskContext(model=exports["batch1"], out_dir=tmp_path, dataset=Dataset(x, y, ["a", "b", "c"]))
    summary = perform("class_filters", ctx, {"bootstrap": 0})
    assert summary and (tmp_path / "class_filters").exists()


def test_kernel_viz_on_a_small_canvas_gives_the_live_models_numbers(exports: dict[str, LoadedModel]) -> None:
    for export in ("batch1", "dynamic_batch"):
        ours = LayerTarget(exports[export], "conv2", torch.device("cpu"))
        live = LayerTarget(_live(Grating()), "conv2", torch.device("cpu"))
        plan, live_plan = plan_canvas(ours), plan_canvas(live)
        assert plan == live_plan and plan.offset is None and plan.size != ours.input_size
        kwargs = dict(steps=6, seed=0, jitter=Jitter(plan.jitter, 0.05))
        a, b = render(ours, [0, 3, 5], plan.size, **kwargs), render(live, [0, 3, 5], plan.size, **kwargs)
        assert a.activations == pytest.approx(b.activations, rel=REL, abs=1e-6), export
        assert _close(a.videos, b.videos)


def test_an_export_whose_batch_cannot_be_generalised_runs_in_pieces_and_embeds_canvases(tmp_path: Path) -> None:
    loaded, live = _export(tmp_path, ZerosChannel(), "zeros", dynamic_batch=False), _live(ZerosChannel())
    assert loaded.shapes.batch == 1 and "conv" not in (loaded.shapes.free_layers or ())
    assert "batch" in loaded.info["batch_note"] or "fails" in loaded.info["batch_note"]
    x = _inputs(3, seed=4)
    assert _close(loaded.forward_to("conv", x), live.forward_to("conv", x))
    with torch.no_grad():
        assert _close(loaded.module(x), live.module(x))  # type: ignore[misc]
    # A canvas goes into a full-size grey input; units that see only the canvas match the canvas run.
    size = (6, 14, 12)
    canvas = _inputs(2, size, seed=5)
    assert loaded.placement("conv", size) is not None
    ours, theirs = loaded.forward_to("conv", canvas), live.forward_to("conv", canvas)
    assert ours.shape == theirs.shape
    inside = (slice(None), slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    assert _close(ours[inside], theirs[inside])
    # Layers read over a batch it cannot take are refused clearly, not crashed or mixed up.
    data = np.random.default_rng(2).random((6, *SPEC.shape), dtype=np.float32)
    with pytest.raises(ModelUnusable) as refused:
        collect(loaded, data, np.arange(6) % CLASSES, np.arange(3), batch_size=4)
    assert refused.value.reason == "FIXED_BATCH_EXPORT"


def test_objective_drives_each_videos_channel_over_the_heads_folded_into_the_batch() -> None:
    target = LayerTarget(_live(FoldedHeads()), "pool", torch.device("cpu"))
    videos = torch.rand((2, 3, 5, 9, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = target(videos)  # (2 videos × 2 heads, 4, 5, 9, 9)
        assert out.shape[0] == 4
        got = channel_activations(out, torch.tensor([1, 3]), Objective.NEURON)
        centre = out[:, :, 2, 4, 4].reshape(2, 2, 4)
        assert torch.allclose(got, torch.stack([centre[0, :, 1].mean(), centre[1, :, 3].mean()]))
        one = channel_activations(target(videos[:1]), torch.tensor([2]), Objective.CHANNEL)
        assert one.shape == (1,) and torch.allclose(one, target(videos[:1])[:, 2].mean())
    rendering = render(target, [0, 1, 2], (5, 9, 9), steps=8, jitter=Jitter((1, 1, 1)))
    assert len(rendering.activations) == 3 and all(np.isfinite(rendering.activations))


def test_a_layer_that_does_not_keep_the_videos_apart_is_refused_by_name() -> None:
    target = LayerTarget(LoadedModel.from_module(PooledBatch().eval(), SPEC), "conv", torch.device("cpu"))
    with pytest.raises(ModelUnusable) as refused, torch.no_grad():
        target(torch.rand((2, 3, 8, 24, 24)))
    assert refused.value.reason == "LAYER_BATCH_NOT_VIDEOS" and "'conv'" in refused.value.message


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "batch"), [("x3d", 1), ("mvit", 1), ("swin3d", 1), ("swin3d", 2)])
def test_zoo_exports_with_a_fixed_batch_run_at_any_batch(arch: str, batch: int) -> None:
    """Architectures whose graphs carry the batch in literals: a head's view (X3D), a class token's expand and
    heads folded into the batch (MViT), windows folded into the batch and a mask built from sizes (Swin3D)."""
    from workers import export_graph
    from workers.samples.zoo import build, example

    model = build(arch)
    program = torch.export.export(model, (example(arch, batch),))
    shapes = export_graph.generalise(program)
    assert shapes.batch is None and shapes.rewritten > 0, shapes.note
    module = torch.export.unflatten(program)
    export_graph.unguard(module)
    x = example(arch, 3, seed=1)
    with torch.no_grad():
        assert _close(module(x), model(x))
