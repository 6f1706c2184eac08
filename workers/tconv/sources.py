"""Where tconv_stats finds its layers, named as describe names them (the module path), in every format.

A runnable model is read from its module tree: every module whose kind (workers.layers.kind, the rule
describe and kernel_viz use) is Conv3d or TConv3d, under its module path, in module order. A Conv3d's
weight is the one it convolves with (for ONNX, the BatchNorm-folded initializer; for a weight the graph
computes, the one a forward pass applies). A 3TConv's parameters are its own first_weight, scale, rotate,
translate_x and translate_y (eager, torch.export, TorchScript), or, inside an ONNX graph (which computes
the kernel from initializers), the initializers the interpreter's record of that layer names.
Weights-only formats have no tree: layers are read off the state_dict keys, as describe reads them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from workers import layers as layer_kinds
from workers.model import LoadedModel
from workers.tconv.parameters import TRANSFORM_NAMES, Conv3dWeight, TConvGroup, find_layers, group_from

_TCONV_NAMES = ("first_weight", *TRANSFORM_NAMES)


def find_model_layers(model: LoadedModel) -> tuple[list[TConvGroup], list[Conv3dWeight], list[str]]:
    """(3TConv layers, Conv3d layers, notes) of `model`, named by module path when it has a module tree."""
    if model.module is None:
        groups, convs = find_layers(model.state_dict)
        return groups, convs, []
    module = model.module
    recorded: dict[str, str] = model.info.get("layer_kinds") or {}
    inner = getattr(module, "inner", module)  # a fixed-batch wrapper keeps the tree under the same names
    records = getattr(inner, "layers", None)
    records = records if isinstance(records, dict) else {}
    initializer_groups, _ = find_layers(model.state_dict)
    by_key = {key: group for group in initializer_groups for key in group.keys}
    found: list[tuple[str, nn.Module, str]] = []
    for name, m in module.named_modules():
        kind = layer_kinds.kind(m) or recorded.get(name, "")
        if kind in ("TConv3d", "Conv3d"):
            found.append((name, m, kind))
    if any(kind == "Conv3d" and _weight(m) is None for _, m, kind in found):
        _run_once(model)  # a graph-computed weight exists only once a forward pass has applied it
    groups: list[TConvGroup] = []
    convs: list[Conv3dWeight] = []
    notes: list[str] = []
    for name, m, kind in found:
        if kind == "TConv3d":
            group = _own_group(name, m)
            if group is None:
                record = records.get(name) or {}
                hits = {by_key[w].name: by_key[w] for w in record.get("weights", []) if w in by_key}
                group = dataclasses.replace(next(iter(hits.values())), name=name) if len(hits) == 1 else None
            if group is None:
                notes.append(f"3TConv layer {name!r}: its first_weight/scale/rotate/translate parameters could not be read; skipped")
                continue
            groups.append(group)
            continue
        weight = _weight(m)
        if weight is None or weight.dim() != 5 or not weight.is_floating_point():
            notes.append(f"Conv3d layer {name!r}: its weight could not be read (computed by the graph and not applied on zeros); skipped")
            continue
        convs.append(Conv3dWeight(name=name, key=name, weight=weight.detach().cpu()))
    return groups, convs, notes


def _sources(m: nn.Module) -> list[Any]:
    script = getattr(m, "_script", None)  # a TorchScript leaf wrapped to take hooks
    return [m] if script is None else [m, script]


def _own_group(name: str, m: nn.Module) -> TConvGroup | None:
    for source in _sources(m):
        tensors = {n: getattr(source, n, None) for n in _TCONV_NAMES}
        if all(isinstance(t, torch.Tensor) for t in tensors.values()):
            return group_from(name, {n: t.detach().cpu() for n, t in tensors.items()})  # type: ignore[union-attr]
    return None


def _weight(m: nn.Module) -> torch.Tensor | None:
    for source in _sources(m):
        try:
            weight = getattr(source, "weight", None)
        except Exception:  # noqa: BLE001 - a computed weight property may fail before a forward pass
            weight = None
        if isinstance(weight, torch.Tensor):
            return weight
    return None


def _run_once(model: LoadedModel) -> None:
    module = model.module
    assert module is not None
    if not model.input_spec.shape:
        return
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        with torch.no_grad():
            module(torch.zeros((1, *model.input_spec.shape), device=device))
    except Exception:  # noqa: BLE001 - the layers whose weight stays unknown are reported as such
        pass
