"""workers.loader on every upload format: what each loads, which module it gives, and that it computes
what the original PyTorch network computes (outputs, hooked activations, input gradients)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from workers.errors import BadOptions, ModelRejected, ModelUnusable
from workers.loader import ONNX_TOLERANCE, load_model
from workers.onnx_interpreter import ops as onnx_ops
from workers.samples.models import INPUT_SPEC, C3DSmall, export_pt2

torch.set_num_threads(1)

HEADER = {"value_min": 0.0, "value_max": 1.0, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


class ResNetish(nn.Module):
    """2D, residual connection and BatchNorm with non-trivial running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)
        with torch.no_grad():
            self.bn1.running_mean.uniform_(-0.2, 0.2)
            self.bn1.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.bn1(self.conv1(x)))
        return self.fc(x.mean(dim=(2, 3)))


class Branchy(nn.Module):
    """A custom forward TorchScript cannot expose to Python hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv3d(3, 4, 3, padding=1)
        self.b = nn.Conv3d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.a(x) + self.b(x)).mean(dim=(2, 3, 4))


@pytest.fixture(scope="module")
def c3d() -> C3DSmall:
    """The registered "c3d_small" architecture, seeded."""
    torch.manual_seed(0)
    return C3DSmall().eval()


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    raw = torch.rand(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    return INPUT_SPEC.normalize(raw)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, c3d: C3DSmall) -> dict[str, Path]:
    """One file per format, written once for the module."""
    root = tmp_path_factory.mktemp("formats")
    out = {"pt2": root / "c3d.pt2", "onnx": root / "resnet.onnx", "sd": root / "c3d_sd.pt", "st": root / "c3d.safetensors"}
    export_pt2(c3d, out["pt2"])
    torch.manual_seed(1)
    resnet = ResNetish().eval()
    torch.save(resnet.state_dict(), root / "resnet_sd.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(resnet, (torch.zeros(1, 3, 12, 12),), out["onnx"], dynamo=False, opset_version=20,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    out["resnet"] = root / "resnet_sd.pt"
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in c3d.state_dict().items()}}, out["sd"])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in c3d.state_dict().items()}, str(out["st"]))
    return out


def _activation(module: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = dict(module.named_modules())[layer].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        module(x)
    handle.remove()
    return seen[0]


def _input_grad(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    xi = x.clone().requires_grad_(True)
    module(xi).square().sum().backward()
    assert xi.grad is not None
    return xi.grad


# ---------------------------------------------------------------- torch.export

def test_torch_export_unflattens_to_named_hookable_modules_with_gradients(files, c3d, clips) -> None:
    model = load_model(files["pt2"], "TORCH_EXPORT", HEADER, name="c3d")
    assert model.format == "TORCH_EXPORT" and model.name == "c3d"
    # Shape and dtype from the export's example input, value range and normalisation from the header.
    assert model.input_spec.shape == (3, 8, 32, 32) and model.input_spec.dtype == "float32"
    assert model.input_spec.mean == (0.5, 0.5, 0.5) and model.input_spec.std == (0.25, 0.25, 0.25)
    assert set(model.state_dict) == set(c3d.state_dict())
    assert model.info["layer_kinds"]["conv2"] == "Conv3d" and model.info["layer_kinds"]["fc"] == "Linear"
    names = {n for n, _ in model.module.named_modules()}
    assert {"conv1", "conv2", "conv3", "fc"} <= names
    # Hooks on unflattened submodules fire and see what the original module computes.
    torch.testing.assert_close(_activation(model.module, "conv2", clips), _activation(c3d, "conv2", clips))
    torch.testing.assert_close(model.forward_to("conv3", clips), _activation(c3d, "conv3", clips))
    # Gradients reach the input and equal torch's on the original module.
    torch.testing.assert_close(_input_grad(model.module, clips), _input_grad(c3d, clips))


def test_torch_export_header_shape_must_agree_with_the_export(files) -> None:
    with pytest.raises(ModelRejected) as err:
        load_model(files["pt2"], "TORCH_EXPORT", {"shape": [3, 8, 16, 16]})
    assert err.value.reason == "INPUT_SPEC_MISMATCH"


def test_torch_export_with_dynamic_batch(tmp_path) -> None:
    torch.manual_seed(2)
    net = ResNetish().eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (torch.zeros(2, 3, 12, 12),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, tmp_path / "r.pt2")
    model = load_model(tmp_path / "r.pt2", "TORCH_EXPORT", {})
    assert model.info["fixed_batch"] is None and model.input_spec.shape == (3, 12, 12)
    x = torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), net(x))
    torch.testing.assert_close(_input_grad(model.module, x), _input_grad(net, x))


# ---------------------------------------------------------------- ONNX

def test_onnx_loads_through_the_interpreter_and_agrees_with_torch(files) -> None:
    torch.manual_seed(1)
    net = ResNetish().eval()
    net.load_state_dict(torch.load(files["resnet"], weights_only=True))
    model = load_model(files["onnx"], "ONNX", {"mean": [0.1, 0.2, 0.3], "std": [1.0, 2.0, 3.0]})
    assert model.input_spec.shape == (3, 12, 12) and model.input_spec.std == (1.0, 2.0, 3.0)
    assert model.info["onnx_max_abs_diff"] <= model.info["onnx_tolerance"] == pytest.approx(ONNX_TOLERANCE, rel=0, abs=1e-3)
    assert model.info["fixed_batch"] is None
    assert "stem.weight" in model.state_dict and model.state_dict["stem.weight"].shape == (6, 3, 3, 3)
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), net(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.forward_to("stem", x), _activation(net, "stem", x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_input_grad(model.module, x), _input_grad(net, x), atol=1e-5, rtol=1e-4)


def test_onnx_disagreeing_with_onnxruntime_is_refused_with_the_difference(files, monkeypatch) -> None:
    # Plant a wrong Relu in the interpreter: the load-time comparison must catch it.
    monkeypatch.setitem(onnx_ops.OPS, "Relu", lambda node, x: torch.nn.functional.leaky_relu(x, 0.3))
    with pytest.raises(ModelRejected) as err:
        load_model(files["onnx"], "ONNX", {})
    assert err.value.reason == "ONNX_MISMATCH" and err.value.code == "FAILED_PRECONDITION"
    assert "differ by up to" in err.value.message


def test_onnx_symbolic_spatial_dims_need_the_header_shape(tmp_path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, "h", "w"])
    w = numpy_helper.from_array(np.ones((3, 2, 3, 3), np.float32), "conv.weight")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "conv.weight"], ["y"], name="conv")], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "h2", "w2"])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "sym.onnx"
    onnx.save(model, str(path))
    with pytest.raises(BadOptions) as err:
        load_model(path, "ONNX", {})
    assert err.value.reason == "INPUT_SPEC_INVALID" and err.value.code == "INVALID_ARGUMENT"
    loaded = load_model(path, "ONNX", {"shape": [2, 9, 7]})
    assert loaded.input_spec.shape == (2, 9, 7)
    assert list(loaded.forward_to("conv", torch.zeros(1, 2, 9, 7)).shape) == [1, 3, 7, 5]


# ---------------------------------------------------------------- TorchScript

def test_torchscript_sequential_tree_is_hookable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KERNELSCOPE_ALLOW_TORCHSCRIPT", "1")  # TorchScript is off by default
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv3d(4, 2, 1), nn.ReLU()),
                        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 2)).eval()
    torch.jit.script(net).save(str(tmp_path / "seq.pt"))
    model = load_model(tmp_path / "seq.pt", "TORCHSCRIPT", {"shape": [3, 4, 8, 8]})
    assert set(model.state_dict) == set(net.state_dict())
    x = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(model.forward_to("2.0", x), _activation(net, "2.0", x))
    torch.testing.assert_close(_input_grad(model.module, x), _input_grad(net, x))
    assert model.module(x).shape == (2, 2)
    # The tree exposes the scripted weights (tasks read parameters to find the device) and moves them.
    assert sum(p.numel() for p in model.module.parameters()) == sum(p.numel() for p in net.parameters())
    model.module.to(torch.float64)
    assert next(model.module.parameters()).dtype == torch.float64
    assert model.module(x.double()).dtype == torch.float64


def test_torchscript_custom_forward_allows_weight_tasks_only(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KERNELSCOPE_ALLOW_TORCHSCRIPT", "1")  # TorchScript is off by default
    torch.manual_seed(4)
    net = Branchy().eval()
    torch.jit.script(net).save(str(tmp_path / "branchy.pt"))
    model = load_model(tmp_path / "branchy.pt", "TORCHSCRIPT", {"shape": [3, 4, 8, 8]})
    assert model.module is None and "hooks" in model.info["module_unavailable"]
    torch.testing.assert_close(model.state_dict["a.weight"], net.a.weight.detach())
    with pytest.raises(ModelUnusable) as err:
        model.require_module("kernel_viz")
    assert err.value.code == "FAILED_PRECONDITION"


# ---------------------------------------------------------------- weights only

def test_state_dict_unwrapped_and_loaded_into_the_registered_architecture(files, c3d, clips) -> None:
    model = load_model(files["sd"], "STATE_DICT", {}, architecture="c3d_small")
    assert model.input_spec == INPUT_SPEC  # the architecture's default when the header gives none
    assert set(model.state_dict) == set(c3d.state_dict())  # {"state_dict": ...} and "module." unwrapped
    with torch.no_grad():
        torch.testing.assert_close(model.module(clips), c3d(clips))


def test_weights_without_architecture_are_weights_only(files, c3d) -> None:
    model = load_model(files["st"], "SAFETENSORS", {"shape": [3, 8, 32, 32]})
    assert model.module is None and model.format == "SAFETENSORS"
    for key, value in c3d.state_dict().items():
        torch.testing.assert_close(model.state_dict[key], value)
    with pytest.raises(ModelUnusable):
        model.require_module("class_filters")


def test_safetensors_into_architecture(files, c3d, clips) -> None:
    model = load_model(files["st"], "SAFETENSORS", HEADER, architecture="c3d_small")
    with torch.no_grad():
        torch.testing.assert_close(model.module(clips), c3d(clips))


def test_weights_that_do_not_fit_the_architecture(files) -> None:
    with pytest.raises(ModelRejected) as err:
        load_model(files["resnet"], "STATE_DICT", {}, architecture="c3d_small")
    assert err.value.reason == "ARCHITECTURE_MISMATCH" and "stem.weight" in err.value.message
    with pytest.raises(ModelRejected) as err:
        load_model(files["resnet"], "STATE_DICT", {}, architecture="no_such_net")
    assert err.value.reason == "UNKNOWN_ARCHITECTURE" and "c3d_small" in err.value.message


def test_registering_an_architecture(files, tmp_path) -> None:
    from workers.architectures import register_architecture

    register_architecture("resnetish_test", ResNetish)
    model = load_model(files["resnet"], "STATE_DICT", {"shape": [3, 12, 12]}, architecture="resnetish_test")
    assert isinstance(model.module, ResNetish) and model.input_spec.shape == (3, 12, 12)


# ---------------------------------------------------------------- arguments

def test_format_names_and_header_validation(files) -> None:
    assert load_model(files["onnx"], 2, {}).format == "ONNX"
    assert load_model(files["onnx"], "ModelFormat.ONNX", {}).format == "ONNX"
    with pytest.raises(ModelRejected) as err:
        load_model(files["onnx"], "KERAS", {})
    assert err.value.reason == "WRONG_FORMAT"
    with pytest.raises(BadOptions) as bad:
        load_model(files["onnx"], "ONNX", {"shape": [3, 12, 12], "mean": [0.5, 0.5]})
    assert bad.value.reason == "INPUT_SPEC_INVALID"
    with pytest.raises(BadOptions):
        load_model(files["onnx"], "ONNX", {"std": [1.0, 0.0, 1.0]})


# ---------------------------------------------------------------- ONNX with external data, as PyTorch exports it by default

def test_the_default_onnx_export_loads_from_the_sdks_bundle(tmp_path) -> None:
    """torch.onnx.export's default (dynamo) writes model.onnx + model.onnx.data; the SDK bundles the pair."""
    from sdk.model_source import prepare

    torch.manual_seed(5)
    net = ResNetish().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 12, 12),), str(tmp_path / "model.onnx"))
    assert (tmp_path / "model.onnx.data").is_file()
    with pytest.raises(ModelRejected) as bare:
        load_model(tmp_path / "model.onnx", "ONNX", {})
    assert bare.value.reason == "EXTERNAL_DATA"
    bundle = tmp_path / "upload.bin"
    bundle.write_bytes(prepare(tmp_path / "model.onnx").data)
    model = load_model(bundle, "ONNX", {})
    assert model.format == "ONNX" and model.input_spec.shape == (3, 12, 12)
    assert model.state_dict["stem.weight"].shape == (6, 3, 3, 3)
    torch.testing.assert_close(model.state_dict["stem.weight"], net.stem.weight.detach())
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), net(x), atol=1e-5, rtol=1e-5)


def test_a_torchscript_archive_of_a_torchvision_model_is_told_apart(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KERNELSCOPE_ALLOW_TORCHSCRIPT", "1")  # TorchScript is off by default
    class VideoResNet(Branchy):
        pass

    VideoResNet.__module__ = "torchvision.models.video.resnet"
    path = tmp_path / "r3d.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(VideoResNet().eval(), torch.zeros(1, 3, 4, 8, 8)).save(str(path))
    with pytest.raises(ModelRejected) as err:
        load_model(path, "TORCH_EXPORT", {})
    assert err.value.reason == "WRONG_FORMAT" and "TorchScript" in err.value.message
    assert load_model(path, "TORCHSCRIPT", {"shape": [3, 4, 8, 8]}).format == "TORCHSCRIPT"
