"""tconv_stats names every layer as describe does (its module path), whatever the format: a model with
BatchNorm after its convs (folded into the ONNX initializers, which then get names like `onnx::Conv_17`),
nested modules and a 3TConv, exported as .pt2 and as ONNX, loaded as users upload them."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from workers.context import TaskContext
from workers.inventory import describe
from workers.job import perform
from workers.loader import load_model
from workers.model import LoadedModel
from workers.input_spec import InputSpec
from workers.tconv import TConv3d, export_onnx

SPEC = (3, 6, 12, 12)


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(c_out)
        self.temporal = nn.Conv3d(c_out, c_out, (3, 1, 1), padding=(1, 0, 0))  # factorised: 1×1 spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal(torch.relu(self.bn(self.conv(x))))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 4, (3, 5, 5), padding=(1, 2, 2), bias=False), nn.BatchNorm3d(4), nn.ReLU())
        self.layer1 = nn.ModuleList([_Block(4, 4)])
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer1[0](self.stem(x)).mean(dim=(2, 3, 4)))


class _TNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.ReLU())
        self.tconv = TConv3d(4, 3, (3, 3, 3), padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.tconv(self.features(x)).mean(dim=(2, 3, 4)))


def _pt2(net: nn.Module, path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(net, (torch.zeros(2, *SPEC),), dynamic_shapes=({0: batch},)), path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    """_Net as a live module, .pt2 and ONNX (the legacy exporter's defaults: BatchNorm folded into the convs)."""
    torch.manual_seed(0)
    net = _Net().eval()
    with torch.no_grad():
        for bn in (net.stem[1], net.layer1[0].bn):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    tmp = tmp_path_factory.mktemp("names")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, *SPEC),), str(tmp / "m.onnx"), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    torch.set_num_threads(1)
    return {
        "module": LoadedModel.from_module(net, InputSpec(shape=SPEC)),
        "pt2": load_model(_pt2(net, tmp / "m.pt2"), "TORCH_EXPORT", {}),
        "onnx": load_model(tmp / "m.onnx", "ONNX", {}),
    }


def _tconv(model: LoadedModel, out: Path, **options: Any) -> dict[str, Any]:
    opts = {"restarts": 0, "fit_steps": 20, **options}
    return perform("tconv_stats", TaskContext(model=model, out_dir=out), opts)


EXPECTED = {"stem.0": "Conv3d-fit", "layer1.0.conv": "Conv3d-fit", "layer1.0.temporal": "temporal_only"}


@pytest.mark.slow
def test_the_same_layer_names_as_describe_in_every_format(models: dict[str, LoadedModel], tmp_path: Path) -> None:
    assert any(name.startswith("onnx::Conv") for name in models["onnx"].state_dict), "the ONNX export should fold BatchNorm"
    for label, model in models.items():
        described = [layer["name"] for layer in describe(model)["layers"]]
        summary = _tconv(model, tmp_path / label)
        found = {layer["name"]: layer["kind"] for layer in summary["layers"]}
        assert found == EXPECTED, (label, found)
        assert list(found) == [name for name in described if name in found], (label, described)
        # A name describe gave is what a user then asks for, in this format and in the others.
        chosen = _tconv(model, tmp_path / f"{label}_chosen", layers=["layer1.0.conv"])
        assert [layer["name"] for layer in chosen["layers"]] == ["layer1.0.conv"], label


@pytest.mark.slow
def test_3tconv_layers_keep_their_module_path_and_parameters_in_every_format(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = _TNet().eval()
    with torch.no_grad():
        for p in (net.tconv.rotate, net.tconv.translate_x, net.tconv.translate_y):
            p.uniform_(-0.3, 0.3)
    assert export_onnx(net, tmp_path / "t.onnx", torch.randn(1, *SPEC)) < 1e-4
    models = {
        "pt2": load_model(_pt2(net, tmp_path / "t.pt2"), "TORCH_EXPORT", {}),
        "onnx": load_model(tmp_path / "t.onnx", "ONNX", {}),
    }
    # 3×3 slices: one normalised unit is one pixel; content moves by −t per step, rotates by −r.
    want_tx = (-net.tconv.translate_x.detach().double().T).numpy()
    want_rot = (-torch.rad2deg(net.tconv.rotate.detach().double()).T).numpy()
    for label, model in models.items():
        described = {layer["name"] for layer in describe(model)["layers"]}
        summary = _tconv(model, tmp_path / label, fit_conv3d=False)
        (layer,) = summary["layers"]
        assert (layer["name"], layer["kind"]) == ("tconv", "TConv3d") and "tconv" in described, label
        learned = layer["filter_params"]["learned"]
        np.testing.assert_allclose(learned["tx_px_layer"], want_tx, atol=1e-5, err_msg=label)
        np.testing.assert_allclose(learned["rotation_deg"], want_rot, atol=1e-4, err_msg=label)
