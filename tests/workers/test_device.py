"""What a GPU run needs that a CPU run does not, checked without a GPU: full float32 on CUDA, a torch.export
graph's created tensors moved with the program, and canvas trials that cannot poison a CUDA context.

Each was found by running the zoo matrix on a lent H200 (bench/gpu.sh); the GPU itself checks them there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from workers.context import TaskContext
from workers.loader import load_model
from workers.model import LoadedModel, _takes_on_cpu
from workers.input_spec import InputSpec


class _SlowPathway(nn.Module):
    """SlowFast's pathway split inside the model: the frame index is made at the clip's own T and device."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, kernel_size=(1, 3, 3), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = torch.linspace(0, x.shape[2] - 1, x.shape[2] // 2, device=x.device).long()
        return self.conv(torch.index_select(x, 2, index))


class _FixedIndex(nn.Module):
    """An index computed at the export's T = 8: any shorter clip is out of range (an IndexError on the CPU; a
    device-side assert on CUDA)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, kernel_size=(1, 3, 3), padding=(0, 1, 1))
        self.register_buffer("index", torch.tensor([0, 3, 7]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.index_select(x, 2, self.index))


@pytest.fixture
def tf32_on() -> object:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_a_task_on_cuda_computes_in_full_float32(tf32_on: object, tmp_path: Path) -> None:
    # cuDNN's TF32 default made the 1 x 1 x 1 conv head of S3D miss class_filters' exactness check (1e-4) on CUDA.
    TaskContext(model=None, out_dir=tmp_path, device=torch.device("cpu"))  # type: ignore[arg-type]
    assert torch.backends.cudnn.allow_tf32  # the CPU leaves the process's settings alone
    TaskContext(model=None, out_dir=tmp_path, device=torch.device("cuda"))  # type: ignore[arg-type]
    assert not torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32


def test_a_torch_export_program_is_moved_to_the_device_with_the_tensors_its_graph_creates(tmp_path: Path) -> None:
    # Exported on the CPU, the graph records linspace(..., device=cpu): moved only with .to(), the GPU run
    # fails with "index is on cpu, different from other tensors on cuda:0".
    x = torch.rand(1, 3, 8, 6, 6)
    torch.export.save(torch.export.export(_SlowPathway().eval(), (x,)), tmp_path / "m.pt2")

    def created_on(model: LoadedModel) -> set[str]:
        devices = set()
        for sub in model.module.modules():  # type: ignore[union-attr]
            graph = getattr(sub, "graph", None)
            for node in getattr(graph, "nodes", ()):
                if "device" in node.kwargs:
                    devices.add(str(node.kwargs["device"]))
        return devices

    on_cpu = load_model(tmp_path / "m.pt2", "TORCH_EXPORT", {}, device="cpu")
    assert created_on(on_cpu) == {"cpu"}
    elsewhere = load_model(tmp_path / "m.pt2", "TORCH_EXPORT", {}, device="meta")
    assert created_on(elsewhere) == {"meta"}
    assert {p.device.type for p in elsewhere.module.parameters()} == {"meta"}  # type: ignore[union-attr]
    assert {t.device.type for t in elsewhere.state_dict.values()} == {"meta"}


def test_a_canvas_trial_on_the_cpu_tells_a_canvas_the_graph_cannot_index() -> None:
    module, spec = _FixedIndex().eval(), InputSpec(shape=(3, 8, 6, 6))
    model = LoadedModel.from_module(module, spec)
    conv = model.submodule("conv")
    assert _takes_on_cpu(module, conv, "conv", torch.rand(1, 3, 8, 6, 6))
    assert not _takes_on_cpu(module, conv, "conv", torch.rand(1, 3, 5, 6, 6))  # index 7 of 5 frames
    out = model.forward_to("conv", torch.rand(2, 3, 5, 6, 6))  # the wrapper embeds what the network refuses
    assert out.shape[0] == 2


class _TwoPathways(nn.Module):
    """SlowFast's order of work: the slow pathway's frame index runs first, the fast pathway's conv after it."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = nn.Conv3d(3, 4, kernel_size=(1, 3, 3), padding=(0, 1, 1))
        self.fast = nn.Conv3d(3, 4, kernel_size=(3, 3, 3), padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = torch.linspace(0, x.shape[2] - 1, x.shape[2] // 4).long()
        slow = self.slow(torch.index_select(x, 2, index))
        return slow.mean(dim=(2, 3, 4)) + self.fast(x).mean(dim=(2, 3, 4))


def test_a_layer_that_runs_after_an_index_computed_at_the_export_size_takes_its_canvas_embedded(tmp_path: Path) -> None:
    # The fast conv's own inputs are size-free, but a shorter canvas would first index frame 7 of fewer: on CUDA a
    # device-side assert (the zoo's SlowFast .pt2 on an H200), not an exception the wrapper could fall back from.
    torch.export.save(torch.export.export(_TwoPathways().eval(), (torch.rand(1, 3, 8, 6, 6),)), tmp_path / "m.pt2")
    model = load_model(tmp_path / "m.pt2", "TORCH_EXPORT", {})
    assert model.shapes.free_layers is not None
    assert "fast" not in model.shapes.free_layers
    assert model.placement("fast", (5, 6, 6)) is not None  # embedded in the full input, never run at T = 5
    assert model.forward_to("fast", torch.rand(2, 3, 5, 6, 6)).shape[0] == 2
