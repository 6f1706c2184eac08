"""Which modules are layers, and of what kind, by what they compute (workers.layers): describe lists every
conv and linear under its module path in every format, and kernel_viz takes exactly the 2D/3D convolutions
describe lists, so a layer a user picks from describe is one every task finds."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernelscope.v1 import models_pb2
from sdk.model_source import prepare
from workers.input_spec import InputSpec
from workers.inventory import describe
from workers.analyses.kernel_viz import conv_layers
from workers.loader import ALLOW_TORCHSCRIPT_ENV, load_model
from workers.model import LoadedModel
from workers.samples.zoo import ZOO, build, example
from workers.samples.zoo.export import export_model
from workers.tconv.layer import TConv3d

torch.set_num_threads(1)

FORMATS = ["module", "pt2_dynamic", "pt2_batch1", "onnx_legacy", "onnx_dynamo", "torchscript", "state_dict"]
VISUAL = {"Conv2d", "Conv3d", "TConv3d"}


def _load(net: nn.Module, spec: InputSpec, header: dict, fmt: str, x: torch.Tensor, tmp_path: Path) -> LoadedModel:
    """`net` as the worker loads it when a user uploads it in `fmt` with the SDK (format told from the content)."""
    if fmt == "module":
        return LoadedModel.from_module(net, spec)
    if fmt == "torchscript":
        path = tmp_path / "net.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.trace(net, x), str(path))
        return load_model(path, "TORCHSCRIPT", header)
    if fmt == "state_dict":
        path = tmp_path / "net.pth"
        torch.save(net.state_dict(), path)
        return load_model(path, "STATE_DICT", header)
    path = tmp_path / ("net.onnx" if fmt.startswith("onnx") else "net.pt2")
    export_model(net, fmt, path, x)
    source = prepare(path, input_spec=header)
    if source.data is not None:  # an .onnx with its data file: one ONNX bundle
        path = tmp_path / "net.upload"
        path.write_bytes(source.data)
    return load_model(source.path or path, models_pb2.ModelFormat.Name(source.format), header)


@pytest.fixture(scope="module")
def mc3() -> nn.Module:
    """torchvision's MC3-18 layout (reduced): Conv3DSimple and Conv3DNoTemporal (nn.Conv3d subclasses) in nested Sequentials."""
    return build("mc3_18")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_conv_of_a_torchvision_video_resnet_is_listed_by_its_module_path(
    mc3: nn.Module, fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ALLOW_TORCHSCRIPT_ENV, "1")
    entry = ZOO["mc3_18"]
    convs = [name for name, m in mc3.named_modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 20 and {type(mc3.get_submodule(n)).__name__ for n in convs} == {"Conv3DSimple", "Conv3DNoTemporal", "Conv3d"}
    model = _load(mc3, entry.input_spec, entry.header, fmt, example("mc3_18", 1), tmp_path)
    layers = describe(model)["layers"]
    kinds = {layer["name"]: layer["kind"] for layer in layers}
    assert kinds == {**dict.fromkeys(convs, "Conv3d"), "fc": "Linear"}, fmt
    shapes = {layer["name"]: layer["kernel_shape"] for layer in layers}
    assert shapes["layer2.0.conv2.0"] == list(mc3.get_submodule("layer2.0.conv2.0").weight.shape)  # a Conv3DNoTemporal: (1, 3, 3)
    if model.module is not None:
        assert conv_layers(model.module) == [layer["name"] for layer in layers if layer["kind"] in VISUAL], fmt


class Sub(nn.Conv3d):
    """A user's subclass (as torchvision's Conv3DSimple)."""


class OwnConv(nn.Module):
    """A module that convolves its own weight in its forward (no nn.Conv3d anywhere)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 1, 3, 3) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv3d(x, self.weight, padding=(0, 1, 1))


class Mixed(nn.Module):
    """A subclassed conv, a depthwise conv, a 3TConv, a transposed conv, a hand-written conv and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Sub(3, 4, 3, padding=1)
        self.dw = nn.Conv3d(4, 4, 3, padding=1, groups=4)
        self.t = TConv3d(4, 4, (3, 3, 3), padding=1)
        self.up = nn.ConvTranspose3d(4, 2, (1, 2, 2), stride=(1, 2, 2))
        self.own = OwnConv(2, 3)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():  # away from identity (the exporter drops transform tensors that are all zero)
            for p in (self.t.rotate, self.t.translate_x, self.t.translate_y):
                p.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.own(self.up(torch.relu(self.t(self.dw(self.stem(x))))))
        return self.fc(y.mean(dim=(2, 3, 4)))


MIXED = {"stem": ("Conv3d", 1), "dw": ("Conv3d", 4), "t": ("TConv3d", 1), "up": ("ConvTranspose3d", 1), "own": ("Conv3d", 1), "fc": ("Linear", 1)}


@pytest.mark.parametrize("fmt", ["module", "pt2_dynamic", "onnx_legacy"])
def test_transposed_depthwise_3tconv_and_hand_written_convs_agree_between_describe_and_kernel_viz(fmt: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Mixed().eval()
    spec = InputSpec(shape=(3, 4, 8, 8))
    x = torch.rand(1, *spec.shape)
    if fmt == "onnx_legacy":  # constant folding would bake the 3TConv's kernel into a plain Conv
        path = tmp_path / "mixed.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), path, dynamo=False, opset_version=20, input_names=["x"], do_constant_folding=False,
                              dynamic_axes={"x": {0: "batch"}})
        model = load_model(path, "ONNX", {})
    else:
        model = _load(net, spec, {}, fmt, x, tmp_path)
    layers = describe(model)["layers"]
    assert {layer["name"]: (layer["kind"], layer["groups"]) for layer in layers} == MIXED, fmt
    assert conv_layers(model.require_module("kernel_viz")) == [layer["name"] for layer in layers if layer["kind"] in VISUAL], fmt
