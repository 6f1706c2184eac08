"""The layer inventory (task `describe`): planted receptive fields, shapes and kinds, the same in every format."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from workers.context import TaskContext
from workers.input_spec import InputSpec
from workers.inventory import describe
from workers.job import perform
from workers.loader import load_model
from workers.model import LoadedModel
from workers.tconv.layer import TConv3d

torch.set_num_threads(1)

SPEC = InputSpec(shape=(2, 12, 48, 48))


class Chain(nn.Module):
    """No nonlinearity, average pooling: the centre unit's input support is exactly the analytic receptive field.

    conv1 k(3,5,5) s(1,2,2):  field (3, 5, 5), jump (1, 2, 2)
    pool  k2 s2:              field (4, 7, 7), jump (2, 4, 4)
    conv2 k3 dilation (1,2,2): field (4 + 2·1·2, 7 + 2·2·4) = (8, 23, 23)
    head  Linear on the mean: the whole input (12, 48, 48)
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(2, 4, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2))
        self.pool = nn.AvgPool3d(2)
        self.conv2 = nn.Conv3d(4, 6, 3, dilation=(1, 2, 2), padding=(1, 2, 2))
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(self.pool(self.conv1(x))).mean(dim=(2, 3, 4)))


EXPECTED = [
    {"name": "conv1", "kind": "Conv3d", "kernel_shape": [4, 2, 3, 5, 5], "stride": [1, 2, 2], "receptive_field": [3, 5, 5],
     "output_shape": [4, 12, 24, 24], "parameters": 4 * 2 * 75 + 4, "groups": 1},
    {"name": "conv2", "kind": "Conv3d", "kernel_shape": [6, 4, 3, 3, 3], "stride": [1, 1, 1], "receptive_field": [8, 23, 23],
     "output_shape": [6, 6, 12, 12], "parameters": 6 * 4 * 27 + 6, "groups": 1},
    {"name": "head", "kind": "Linear", "kernel_shape": [3, 6], "stride": [], "receptive_field": [12, 48, 48],
     "output_shape": [3], "parameters": 6 * 3 + 3, "groups": 1},
]


@pytest.fixture(scope="module")
def chain() -> Chain:
    torch.manual_seed(0)
    return Chain().eval()


def test_planted_receptive_fields_shapes_and_kinds_on_a_module(chain: Chain) -> None:
    summary = describe(LoadedModel.from_module(chain, SPEC))
    assert summary["layers"] == EXPECTED
    assert summary["input_spec"] == SPEC.to_dict()
    assert summary["supported_tasks"] == ["describe", "tconv_stats", "kernel_viz", "class_filters"]


def test_the_same_inventory_from_torch_export_and_onnx(tmp_path: Path, chain: Chain) -> None:
    example = torch.zeros(1, *SPEC.shape)
    torch.export.save(torch.export.export(chain, (example,)), tmp_path / "chain.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(chain, (example,), tmp_path / "chain.onnx", dynamo=False, opset_version=20, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    for path, fmt in ((tmp_path / "chain.pt2", "TORCH_EXPORT"), (tmp_path / "chain.onnx", "ONNX")):
        summary = describe(load_model(path, fmt, {}))
        assert summary["layers"] == EXPECTED, fmt
        assert summary["input_spec"]["shape"] == list(SPEC.shape)


class TNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = TConv3d(3, 4, (3, 3, 3), padding=1)
        self.conv2 = nn.Conv3d(4, 5, 3, stride=2)
        self.fc = nn.Linear(5, 2)
        with torch.no_grad():  # away from identity (the exporter drops transform tensors that are all zero)
            for p in (self.conv1.rotate, self.conv1.translate_x, self.conv1.translate_y):
                p.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(torch.relu(self.conv1(x))).mean(dim=(2, 3, 4)))


def test_3tconv_layers_are_reported_as_tconv3d_in_every_format(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = TNet().eval()
    spec = InputSpec(shape=(3, 7, 9, 9))
    example = torch.zeros(1, *spec.shape)
    tconv_params = sum(p.numel() for p in net.conv1.parameters())
    torch.export.save(torch.export.export(net, (example,)), tmp_path / "t.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), tmp_path / "t.onnx", dynamo=False, opset_version=20, input_names=["x"],
                          do_constant_folding=False)
    torch.save(net.state_dict(), tmp_path / "t_sd.pt")
    models = {
        "module": LoadedModel.from_module(net, spec),
        "pt2": load_model(tmp_path / "t.pt2", "TORCH_EXPORT", {}),
        "onnx": load_model(tmp_path / "t.onnx", "ONNX", {}),
        "weights": load_model(tmp_path / "t_sd.pt", "STATE_DICT", {}),
    }
    for label, model in models.items():
        layers = {layer["name"]: layer for layer in describe(model)["layers"]}
        assert layers["conv1"]["kind"] == "TConv3d", label
        assert layers["conv1"]["kernel_shape"] == [4, 3, 3, 3, 3], label
        assert layers["conv1"]["parameters"] == tconv_params, label
        assert layers["conv2"]["kind"] == "Conv3d" and layers["conv2"]["kernel_shape"] == [5, 4, 3, 3, 3], label
        if label != "weights":
            assert layers["conv1"]["receptive_field"] == [3, 3, 3], label
            assert layers["conv2"]["receptive_field"] == [5, 5, 5] and layers["conv2"]["stride"] == [2, 2, 2], label
            assert layers["conv2"]["output_shape"] == [5, 3, 4, 4], label


def test_weights_only_inventory_reads_the_authors_3tconv_names() -> None:
    state = {
        "features.0.first_weight": torch.zeros(8, 3, 1, 5, 5),
        "features.0.scale": torch.ones(4, 8),
        "features.0.rotate": torch.zeros(4, 8),
        "features.0.translate_x": torch.zeros(4, 8),
        "features.0.translate_y": torch.zeros(4, 8),
        "features.0.bias": torch.zeros(8),
        "features.1.weight": torch.zeros(8),  # a BatchNorm: not a layer of interest
        "features.2.weight": torch.zeros(16, 8, 3, 3, 3),
        "classifier.weight": torch.zeros(10, 16),
        "classifier.bias": torch.zeros(10),
    }
    summary = describe(LoadedModel(input_spec=InputSpec(shape=()), state_dict=state, module=None, format="STATE_DICT"))
    assert summary["layers"] == [
        {"name": "features.0", "kind": "TConv3d", "kernel_shape": [8, 3, 5, 5, 5], "stride": [], "receptive_field": [],
         "output_shape": [], "parameters": 8 * 75 + 4 * 4 * 8 + 8, "groups": 1},
        {"name": "features.2", "kind": "Conv3d", "kernel_shape": [16, 8, 3, 3, 3], "stride": [], "receptive_field": [],
         "output_shape": [], "parameters": 16 * 8 * 27, "groups": 1},
        {"name": "classifier", "kind": "Linear", "kernel_shape": [10, 16], "stride": [], "receptive_field": [],
         "output_shape": [], "parameters": 170, "groups": 1},
    ]
    assert summary["supported_tasks"] == ["describe", "tconv_stats"]


def test_describe_is_a_registered_task_with_a_plain_json_summary(tmp_path: Path, chain: Chain) -> None:
    seen: list[tuple[str, float]] = []
    ctx = TaskContext(model=LoadedModel.from_module(chain, SPEC), out_dir=tmp_path,
                      progress=lambda stage, fraction: seen.append((stage, fraction)))
    summary = perform("describe", ctx, {})
    assert set(summary) == {"input_spec", "layers", "supported_tasks"}
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert seen and all(0.0 <= f <= 1.0 for _, f in seen) and seen[-1][1] == 1.0


def test_image_model_without_3d_kernels_offers_no_tconv_stats() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    summary = describe(LoadedModel.from_module(net, InputSpec(shape=(3, 16, 16))))
    assert summary["supported_tasks"] == ["describe", "kernel_viz", "class_filters"]
    assert [(l["name"], l["kind"], l["receptive_field"]) for l in summary["layers"]] == [("0", "Conv2d", [3, 3]), ("4", "Linear", [16, 16])]


@pytest.mark.parametrize("fmt", ["pt2_dynamic", "pt2_batch1", "onnx_legacy"])
def test_describe_lists_every_conv_of_a_torchvision_video_resnet_by_its_module_path(tmp_path: Path, fmt: str) -> None:
    """torchvision's Conv3DSimple subclasses nn.Conv3d and unflattened .pt2 modules are InterpreterModules:
    the kind comes from what each layer computes, so all 20 convs of R3D-18 and its head are listed, named as in torch."""
    from workers.samples.zoo import ZOO, build
    from workers.samples.zoo.export import export_model

    entry = ZOO["r3d_18"]
    net = build("r3d_18")
    theirs = [name for name, m in net.named_modules() if isinstance(m, nn.Conv3d)]
    assert len(theirs) == 20  # stem, 16 in the blocks, 3 downsamples (21 layers with fc)
    files = export_model(net, fmt, tmp_path / ("model.onnx" if fmt.startswith("onnx") else "model.pt2"), torch.rand(1, *entry.input_shape))
    model = load_model(files[0], "ONNX" if fmt.startswith("onnx") else "TORCH_EXPORT", entry.header)
    layers = {layer["name"]: layer for layer in describe(model)["layers"]}
    assert sorted(name for name in layers if layers[name]["kind"] == "Conv3d") == sorted(theirs)  # ONNX lists in graph order
    assert layers["fc"]["kind"] == "Linear"
    assert layers["layer1.0.conv1.0"]["kernel_shape"] == list(net.layer1[0].conv1[0].weight.shape)
