"""describe's receptive fields from one traced forward pass (workers.fields): the network runs once, and the
figures are those of a gradient probe (the support of d(centre unit)/d(input), united over random inputs):
hand-computed ones through strided, transposed and subsampling branches, and the probe's own on every zoo
architecture; a layer after an op the trace has no rule for is measured by the probe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.input_spec import InputSpec
from workers.inventory import describe
from workers.loader import load_model
from workers.model import LoadedModel
from workers.samples.zoo import ZOO, build, example, names
from workers.samples.zoo.export import export_model

torch.set_num_threads(1)

PROBE_SAMPLES = 4


def probed_fields(model: LoadedModel, names: list[str]) -> dict[str, list[int]]:
    """The reference: per layer of `names`, a forward pass to it and the support of the gradient of its centre unit (summed over
    the batch and channels) with respect to PROBE_SAMPLES random inputs, per input axis."""
    spec = model.input_spec
    x = spec.normalize(spec.random(model.info.get("fixed_batch") or PROBE_SAMPLES, generator=torch.Generator().manual_seed(1)))
    found = {}
    for name in names:
        probe = x.clone().requires_grad_(True)
        try:
            out = model.forward_to(name, probe)
        except Exception:  # noqa: BLE001 - not a layer the forward pass calls
            continue
        if not isinstance(out, torch.Tensor) or out.dim() <= 2 or not out.requires_grad:
            continue
        unit = out[(slice(None), slice(None)) + tuple(s // 2 for s in out.shape[2:])]
        (grad,) = torch.autograd.grad(unit.sum(), probe)
        support = grad.abs().sum(dim=(0, 1)) > 0
        extents = []
        for axis in range(support.dim()):
            hit = support.any(dim=tuple(a for a in range(support.dim()) if a != axis))
            idx = torch.nonzero(hit).flatten()
            extents.append(int(idx.max() - idx.min() + 1) if idx.numel() else 0)
        found[name] = extents
    return found


class Counted(nn.Module):
    """Counts the forward passes of the network it wraps."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


class Geometry(nn.Module):
    """Along W (16 input columns; T = H = 1), no nonlinearity, so the probe's support is the whole field:

    down  k3 s2 p1:               unit o sees columns 2o-1 .. 2o+1
    up    transposed k4 s2 p1:    unit 8 gets down's units 3 and 4: columns 5 .. 9            -> 5
    slow  every 4th column (x[..., ::4]), then k3 p1: unit 2 sees slow units 1..3: 4 .. 12   -> 9
    fused slow's 4 units, each repeated 4 times along W (nearest upsampling, an op the trace has no rule for),
          plus up: unit 8 sees slow unit 2 and up unit 8: columns 4 .. 12                   -> 9 (by the probe)
    wide  transposed k7 p3 on columns 4 .. 11: unit 4 gets units 1 .. 7 of the 8 (the others
          would be past the edge): columns 5 .. 11                                          -> 7
    head  a Linear on the means: everything                                                  -> 16
    """

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv3d(1, 2, (1, 1, 3), stride=(1, 1, 2), padding=(0, 0, 1))
        self.up = nn.ConvTranspose3d(2, 2, (1, 1, 4), stride=(1, 1, 2), padding=(0, 0, 1))
        self.slow = nn.Conv3d(1, 2, (1, 1, 3), padding=(0, 0, 1))
        self.fused = nn.Conv3d(2, 2, 1)
        self.wide = nn.ConvTranspose3d(1, 2, (1, 1, 7), padding=(0, 0, 3))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.up(self.down(x))
        slow = self.slow(x[..., ::4])
        fused = self.fused(up + F.interpolate(slow, scale_factor=(1, 1, 4), mode="nearest"))
        wide = self.wide(x[..., 4:12])
        return self.head(torch.cat([fused.mean(dim=(2, 3, 4)), wide.mean(dim=(2, 3, 4))], dim=1))


GEOMETRY_SPEC = InputSpec(shape=(1, 1, 1, 16))
GEOMETRY_FIELDS = {"down": [1, 1, 3], "up": [1, 1, 5], "slow": [1, 1, 9], "fused": [1, 1, 9], "wide": [1, 1, 7], "head": [1, 1, 16]}


@pytest.fixture(scope="module")
def geometry() -> Geometry:
    torch.manual_seed(0)
    return Geometry().eval()


def test_the_network_runs_once_for_every_layer_it_can_trace(geometry: Geometry) -> None:
    zoo = Counted(build("x3d"))  # 40 layers: depthwise convs, squeeze-excitation, swish, a pooled head
    summary = describe(LoadedModel.from_module(zoo, ZOO["x3d"].input_spec))
    assert len(summary["layers"]) == 40 and all(layer["receptive_field"] for layer in summary["layers"])
    assert zoo.calls == 1


def test_known_fields_through_strided_transposed_and_subsampled_branches(geometry: Geometry) -> None:
    counted = Counted(geometry)
    layers = {layer["name"].removeprefix("net."): layer["receptive_field"] for layer in describe(LoadedModel.from_module(counted, GEOMETRY_SPEC))["layers"]}
    assert layers == GEOMETRY_FIELDS
    assert counted.calls == 2  # the trace, then one probe pass for `fused` (after the upsampling) and nothing else
    assert probed_fields(LoadedModel.from_module(geometry, GEOMETRY_SPEC), list(GEOMETRY_FIELDS)) == {k: v for k, v in GEOMETRY_FIELDS.items() if k != "head"}


@pytest.mark.parametrize("fmt", ["pt2_dynamic", "onnx_legacy"])
def test_known_fields_are_the_same_from_an_export(geometry: Geometry, fmt: str, tmp_path: Path) -> None:
    path = tmp_path / ("g.onnx" if fmt.startswith("onnx") else "g.pt2")
    export_model(geometry, fmt, path, torch.rand(1, *GEOMETRY_SPEC.shape))
    layers = describe(load_model(path, "ONNX" if fmt.startswith("onnx") else "TORCH_EXPORT", {}))["layers"]
    assert {layer["name"]: layer["receptive_field"] for layer in layers} == GEOMETRY_FIELDS


@pytest.mark.slow
@pytest.mark.parametrize("arch", names())
def test_the_trace_gives_the_gradient_probes_fields_on_every_zoo_architecture(arch: str) -> None:
    model = LoadedModel.from_module(build(arch), ZOO[arch].input_spec)
    traced = {layer["name"]: layer["receptive_field"] for layer in describe(model)["layers"]}
    probed = probed_fields(model, list(traced))
    assert probed and {name: traced[name] for name in probed} == probed


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "fmt"), [("slowfast_r50", "pt2_dynamic"), ("mvit", "onnx_legacy"), ("swin3d", "pt2_batch1")])
def test_the_trace_gives_the_gradient_probes_fields_on_exports(arch: str, fmt: str, tmp_path: Path) -> None:
    path = tmp_path / ("m.onnx" if fmt.startswith("onnx") else "m.pt2")
    export_model(build(arch), fmt, path, example(arch, 1))
    model = load_model(path, "ONNX" if fmt.startswith("onnx") else "TORCH_EXPORT", ZOO[arch].header)
    traced = {layer["name"]: layer["receptive_field"] for layer in describe(model)["layers"]}
    probed = probed_fields(model, list(traced))
    assert probed and {name: traced[name] for name in probed} == probed
