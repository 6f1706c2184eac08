"""The layer inventory (task `describe`, workers.analyses.describe, behind DescribeModel): what a user can name in a task.

For every analysable layer (every convolution and linear, workers.layers.kind: the rule every task
uses): name (the module path tasks take), kind (Conv3d, Conv2d, TConv3d, Linear, ConvTranspose3d,
...), kernel shape, stride, groups, receptive field at the model's input, output shape for one sample
of the model's input, and its parameter count.

The receptive field is the extent of the input the layer's centre unit depends on (per input axis,
clipped to the input): uploads have branches, pools, dilations and padding in any arrangement, so it
is not composed from layer attributes but followed through the ops the network actually runs, in one
forward pass for every layer at once (workers.fields). Where that pass meets an op it has no rule for,
the layers after it are measured by a gradient probe: the support of d(centre unit)/d(input), united
over a few random inputs (a ReLU or max-pool hides part of the field for any single input); one forward
pass keeps their outputs and each costs one backward pass. (A probe per layer, each with its own forward
pass, took minutes on a full-size video network.) Models that hold only weights (no runnable module)
get kernel shapes from the state_dict and empty strides, fields and output shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from workers import fields
from workers import layers as layer_kinds
from workers.layers import CONV_KINDS, KINDS
from workers.model import LoadedModel, frozen

# Random inputs united for the receptive-field probe.
PROBE_SAMPLES = 4

_CONV_TARGET = re.compile(r"aten\.(conv[123]d|convolution|conv_transpose[123]d)")


@dataclass
class Layer:
    name: str
    kind: str
    kernel_shape: list[int] = field(default_factory=list)
    stride: list[int] = field(default_factory=list)
    receptive_field: list[int] = field(default_factory=list)
    output_shape: list[int] = field(default_factory=list)
    parameters: int = 0
    groups: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "kernel_shape": list(self.kernel_shape),
            "stride": list(self.stride),
            "receptive_field": list(self.receptive_field),
            "output_shape": list(self.output_shape),
            "parameters": int(self.parameters),
            "groups": int(self.groups),
        }


def describe(
    model: LoadedModel,
    device: torch.device | str = "cpu",
    progress: Callable[[str, float], None] = lambda stage, fraction: None,
) -> dict[str, Any]:
    """{"input_spec", "layers", "supported_tasks"} for `model` (plain JSON types only)."""
    progress("listing layers", 0.0)
    found = inventory(model, device=torch.device(device), progress=progress)
    progress("done", 1.0)
    return {
        "input_spec": model.input_spec.to_dict(),
        "layers": [layer.to_dict() for layer in found],
        "supported_tasks": supported_tasks(model, found),
    }


def inventory(
    model: LoadedModel,
    device: torch.device = torch.device("cpu"),
    progress: Callable[[str, float], None] = lambda stage, fraction: None,
) -> list[Layer]:
    """Every analysable layer of `model`, in module order."""
    if model.module is None or not model.input_spec.shape:
        return _from_state_dict(model)
    module = model.module
    recorded = model.info.get("layer_kinds", {}) or {}
    named = [(name, m, layer_kinds.kind(m) or recorded.get(name, "")) for name, m in module.named_modules() if name]
    picked = [(name, m, kind) for name, m, kind in named if kind in KINDS]
    module.to(device)
    names = [name for name, _, _ in picked]
    x = _probe_input(model, device)
    progress("tracing the network", 0.0)
    found = _trace(model, names, x if model.info.get("fixed_batch") else x[:1])  # geometry needs one sample
    untraced = [name for name in names if name in found and found[name][1] is None]
    if untraced:  # an op the trace cannot map: the gradient probe measures the layers after it
        found.update(_probe(model, untraced, x, progress))
    return [
        Layer(
            name=name,
            kind=kind,
            kernel_shape=_kernel_shape(m, kind),
            stride=_stride(m, kind, len(model.input_spec.spatial)),
            receptive_field=(found[name][1] or []) if name in found else [],
            output_shape=found[name][0] if name in found else [],
            parameters=_parameters(model, name, m),
            groups=layer_kinds.groups(m),
        )
        for name, m, kind in picked
    ]


def supported_tasks(model: LoadedModel, layers: list[Layer]) -> list[str]:
    """Tasks this model can run given its format: weight-based ones always, activation ones with a module."""
    tasks = ["describe"]
    has_3d_kernels = any(v.dim() == 5 for v in model.state_dict.values()) or any(
        k.endswith("first_weight") for k in model.state_dict
    )
    if has_3d_kernels:
        tasks.append("tconv_stats")
    runnable = model.module is not None and bool(model.input_spec.shape)
    if runnable and any(layer.kind in CONV_KINDS - {"Conv1d", "ConvTranspose1d"} for layer in layers):
        tasks.append("kernel_viz")
    if runnable:
        tasks.append("class_filters")
    return tasks


# ---------------------------------------------------------------- attributes

def _kernel_shape(m: nn.Module, kind: str) -> list[int]:
    weight = _weight(m)
    if weight is not None:
        return [int(s) for s in weight.shape]
    first, scale = getattr(m, "first_weight", None), getattr(m, "scale", None)
    if kind == "TConv3d" and isinstance(first, torch.Tensor) and isinstance(scale, torch.Tensor):
        # A 3TConv whose kernel is not materialised (e.g. inside a torch.export program).
        return _tconv_kernel_shape(first, scale)
    return []


def _tconv_kernel_shape(first_weight: torch.Tensor, scale: torch.Tensor | None) -> list[int]:
    """(C_out, C_in, k_t, k_h, k_w) of a 3TConv: slice 0 is `first_weight`, one more per row of `scale`."""
    k_t = 1 + (int(scale.shape[0]) if scale is not None else 0)
    return [int(first_weight.shape[0]), int(first_weight.shape[1]), k_t, *(int(s) for s in first_weight.shape[-2:])]


def _weight(m: nn.Module) -> torch.Tensor | None:
    try:
        weight = getattr(m, "weight", None)
    except Exception:  # noqa: BLE001 - a computed weight property may fail before a forward pass
        return None
    return weight if isinstance(weight, torch.Tensor) else None


def _stride(m: nn.Module, kind: str, spatial_rank: int) -> list[int]:
    if kind == "Linear":
        return []
    stride = getattr(m, "stride", None)
    if stride is None and hasattr(m, "graph"):
        stride = _graph_stride(m)
    if stride is None and hasattr(m, "_script"):
        stride = getattr(m._script, "stride", None)
    if stride is None:
        return []
    if isinstance(stride, int):
        rank = int(kind[-2]) if kind[-2].isdigit() else spatial_rank
        return [stride] * rank
    return [int(s) for s in stride]


def _graph_stride(m: nn.Module) -> list[int] | None:
    """Stride of the convolution inside a torch.export InterpreterModule (aten.conv3d(x, w, b, stride, ...))."""
    for node in m.graph.nodes:  # type: ignore[union-attr]
        if node.op == "call_function" and _CONV_TARGET.search(str(node.target)):
            rank = None
            weight = node.args[1] if len(node.args) > 1 else None
            if weight is not None and hasattr(weight, "meta") and "val" in weight.meta:
                rank = weight.meta["val"].dim() - 2
            stride = node.args[3] if len(node.args) > 3 else node.kwargs.get("stride")
            if stride is None:
                return [1] * (rank or 0) if rank else None
            stride = list(stride)
            return [int(stride[0])] * rank if rank and len(stride) == 1 else [int(s) for s in stride]
    return None


def _parameters(model: LoadedModel, name: str, m: nn.Module) -> int:
    records = getattr(model.module, "layers", None)
    record = records.get(name) if isinstance(records, dict) else None
    if isinstance(record, dict) and record.get("kind", "").startswith("TConv"):
        # A 3TConv kernel computed inside an ONNX graph: count the initializers it is built from.
        return sum(
            int(model.state_dict[w].numel())
            for w in record.get("weights", [])
            if w in model.state_dict and model.state_dict[w].is_floating_point()
        )
    return sum(int(p.numel()) for p in m.parameters())


# ---------------------------------------------------------------- probes

def _probe_input(model: LoadedModel, device: torch.device) -> torch.Tensor:
    spec = model.input_spec
    batch = model.info.get("fixed_batch") or PROBE_SAMPLES
    generator = torch.Generator().manual_seed(0)
    return spec.normalize(spec.random(int(batch), generator=generator)).to(device)


class _Captured(Exception):
    """Raised by a hook once every layer has given its output: the rest of the network need not run."""


def _trace(model: LoadedModel, names: list[str], x: torch.Tensor) -> dict[str, tuple[list[int], list[int] | None]]:
    """Each reached layer's (output shape without the batch axis, receptive field or None where the trace lost the
    geometry), from one forward pass under workers.fields.Tracer."""
    spatial = list(model.input_spec.spatial)
    found: dict[str, tuple[list[int], list[int] | None]] = {}

    def seen(name: str, out: torch.Tensor) -> None:
        if name not in found:
            field = spatial if out.dim() <= 2 else tracer.field(out, spatial)  # a Linear on pooled features: everything
            found[name] = ([int(s) for s in out.shape[1:]], field)

    with torch.no_grad(), fields.Tracer(x, range(x.dim() - len(spatial), x.dim())) as tracer:
        _capture(model, names, x, seen)
    return found


def _probe(
    model: LoadedModel, names: list[str], x: torch.Tensor, progress: Callable[[str, float], None]
) -> dict[str, tuple[list[int], list[int] | None]]:
    """Each reached layer's (output shape without the batch axis, receptive field) by gradient: one forward pass
    keeping every layer's output, then one backward pass per layer from its centre unit to the input."""
    module = model.require_module("describe")
    outputs: dict[str, list[torch.Tensor]] = {}
    probe = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), frozen(module):
        _capture(model, names, probe, lambda name, out: outputs.setdefault(name, []).append(out))
        found: dict[str, tuple[list[int], list[int] | None]] = {}
        for index, name in enumerate(names):
            progress("receptive fields", index / max(len(names), 1))
            if name in outputs:
                found[name] = ([int(s) for s in outputs[name][0].shape[1:]], _receptive_field(model, outputs[name], probe))
    return found


def _capture(model: LoadedModel, names: list[str], x: torch.Tensor, seen: Callable[[str, torch.Tensor], None]) -> None:
    """Hand every layer's output on x to `seen` (each call's, should the model run x in pieces) from one forward
    pass, stopped once every layer has given one; a layer the forward pass never calls (a Linear whose weight the
    network uses functionally) gives none."""
    module = model.require_module("describe")
    modules = dict(module.named_modules())
    wanted, outputs = set(names), set()

    def hook(_m: nn.Module, _inp: Any, out: Any, name: str) -> None:
        value = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(value, torch.Tensor):
            seen(name, value)
            outputs.add(name)
        if wanted <= outputs:
            raise _Captured

    handles = [modules[name].register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name)) for name in names]
    try:
        module(x)
    except _Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()


def _receptive_field(model: LoadedModel, outs: list[torch.Tensor], x: torch.Tensor) -> list[int]:
    """Extent (per input axis) of the input that the layer's centre unit depends on, clipped to the input."""
    spatial = list(model.input_spec.spatial)
    if outs[0].dim() <= 2:
        return spatial  # a Linear on flattened or pooled features sees the whole input
    units = []
    for out in outs:
        centre = tuple(s // 2 for s in out.shape[2:])
        units.append(out[(slice(None), slice(None)) + centre].sum())
    if not any(unit.requires_grad for unit in units):
        return []
    (grad,) = torch.autograd.grad(torch.stack(units).sum(), x, retain_graph=True, allow_unused=True)
    if grad is None:
        return []
    support = grad.detach().abs().sum(dim=(0, 1)) > 0
    extents = []
    for axis in range(support.dim()):
        others = tuple(a for a in range(support.dim()) if a != axis)
        hit = support.any(dim=others) if others else support
        idx = torch.nonzero(hit).flatten()
        extents.append(int(idx.max() - idx.min() + 1) if idx.numel() else 0)
    return extents


# ---------------------------------------------------------------- weights only

def _from_state_dict(model: LoadedModel) -> list[Layer]:
    """Layers read off the weights: 5-D -> Conv3d, 4-D -> Conv2d, 2-D -> Linear, first_weight -> TConv3d."""
    state = model.state_dict
    recorded = model.info.get("layer_kinds", {}) or {}
    layers: list[Layer] = []
    for key, value in state.items():
        if key.endswith("first_weight"):
            prefix = key[: -len("first_weight")].rstrip(".")
            shape = _tconv_kernel_shape(value, state.get(_join(prefix, "scale")))
            names = ("first_weight", "scale", "rotate", "translate_x", "translate_y", "bias")
            count = sum(int(state[_join(prefix, n)].numel()) for n in names if _join(prefix, n) in state)
            layers.append(Layer(name=prefix, kind="TConv3d", kernel_shape=shape, parameters=count))
        elif key == "weight" or key.endswith(".weight"):
            prefix = key[: -len("weight")].rstrip(".")
            # What the loader read off the program (TorchScript code, a .pt2 graph) when it could, else the rank's guess.
            kind = recorded[prefix] if prefix in recorded else layer_kinds.weight_kind(value)
            if kind not in KINDS:
                continue
            bias = state.get(_join(prefix, "bias"))
            count = int(value.numel()) + (int(bias.numel()) if bias is not None else 0)
            layers.append(Layer(name=prefix, kind=kind, kernel_shape=[int(s) for s in value.shape], parameters=count))
    return layers


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
