"""What a layer computes: the one rule that says which modules are layers, and of what kind, for every task.

A layer's kind comes from the operation it runs on its own weight, never from its class name: user
subclasses (torchvision's Conv3DSimple and Conv3DNoTemporal are nn.Conv3d), torch.export's unflattened
modules (all InterpreterModule), TorchScript modules (RecursiveScriptModule, named by `original_name`)
and the ONNX interpreter's modules all name their classes differently, yet describe lists the layers a
user then names in kernel_viz, tconv_stats and class_filters, so every one of them must agree.

    kind(module)     "Conv3d", "Conv2d", "Conv1d", "ConvTranspose3d", ..., "TConv3d", "Linear", or ""
    groups(module)   the convolution's groups (its input channels for a depthwise conv), 1 otherwise
    node_kind(node)  the same for one node of a torch.export graph
    weight_kind(w)   a guess from a weight alone (weights-only uploads): 5-D Conv3d, 4-D Conv2d, 3-D Conv1d, 2-D Linear
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

CONV_KINDS = frozenset(
    {"Conv1d", "Conv2d", "Conv3d", "TConv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"}
)
KINDS = CONV_KINDS | {"Linear"}
# The kinds kernel_viz renders an input for (a 2D or 3D convolution of the input's own layout).
VISUAL_KINDS = frozenset({"Conv2d", "Conv3d", "TConv3d"})

_FX_CONV = re.compile(r"^aten\.(convolution|conv[123]d|conv_transpose[123]d)\b")
_SCRIPT_CONV = re.compile(r"^aten::(_?convolution|conv[123]d|conv_transpose[123]d)$")


def kind(module: nn.Module) -> str:
    """What `module` computes with its own weight: a convolution of its rank (transposed or not), a 3TConv, a linear; "" if none."""
    script = module if isinstance(module, torch.jit.ScriptModule) else getattr(module, "_script", None)
    if not isinstance(script, torch.jit.ScriptModule):
        script = None
    if isinstance(getattr(script or module, "first_weight", None), torch.Tensor):
        return "TConv3d"  # a 3TConv: its kernel is built from first_weight (eager, torch.export, TorchScript)
    if isinstance(module, nn.modules.conv._ConvNd):
        return _conv_name(len(module.kernel_size), bool(module.transposed))
    if isinstance(module, nn.Linear):
        return "Linear"
    if script is not None:
        return _script_kind(script)
    own = getattr(module, "kind", None)
    if isinstance(own, str) and own in KINDS:
        return own  # the ONNX interpreter's ComputedConv says what its computed weight is
    graph = getattr(module, "graph", None)
    if isinstance(graph, torch.fx.Graph):
        return _graph_kind(module, graph)
    weight = _own_weight(module)
    if weight is not None and 3 <= weight.dim() <= 5:
        return _conv_name(weight.dim() - 2, False)  # a custom eager module convolving its own weight
    return ""


def groups(module: nn.Module) -> int:
    """The convolution's groups (C_in for a depthwise conv); 1 for anything else or where no attribute says."""
    script = getattr(module, "_script", None)
    for source in (module, script):
        value = getattr(source, "groups", None) if source is not None else None
        if isinstance(value, int) and value >= 1:
            return value
    graph = getattr(module, "graph", None)
    if isinstance(graph, torch.fx.Graph):
        for node in graph.nodes:
            if _own_op(node):
                return _fx_groups(node)
    return 1


def node_kind(node: Any) -> str:
    """The kind of one torch.export graph node: a convolution (rank from its weight's recorded value) or a linear; "" otherwise."""
    if getattr(node, "op", None) != "call_function":
        return ""
    target = str(node.target)
    if target.startswith("aten.linear"):
        return "Linear"
    if not _FX_CONV.match(target):
        return ""
    weight = node.args[1] if len(node.args) > 1 else None
    value = getattr(weight, "meta", {}).get("val")
    if value is None or not 3 <= value.dim() <= 5:
        return ""
    return _conv_name(value.dim() - 2, _fx_transposed(node))


def weight_kind(weight: torch.Tensor) -> str:
    """A weights-only guess from the rank alone: 5-D Conv3d, 4-D Conv2d, 3-D Conv1d, 2-D Linear, "" otherwise."""
    return {5: "Conv3d", 4: "Conv2d", 3: "Conv1d", 2: "Linear"}.get(weight.dim(), "")


# ---------------------------------------------------------------- the formats' own graphs


def _graph_kind(module: nn.Module, graph: torch.fx.Graph) -> str:
    """An unflattened torch.export module: the convolution or linear its own graph applies to its own `weight`."""
    weight = _own_weight(module)
    for node in graph.nodes:
        if not _own_op(node):
            continue
        if str(node.target).startswith("aten.linear"):
            return "Linear"
        rank = weight.dim() - 2 if weight is not None else None
        found = node_kind(node)
        if rank is not None and 1 <= rank <= 3:
            return _conv_name(rank, _fx_transposed(node))
        if found:
            return found
    return ""


def _own_op(node: Any) -> bool:
    """A conv or linear node whose weight is the module's own `weight` attribute (not a child's, not computed)."""
    if node.op != "call_function" or not (_FX_CONV.match(str(node.target)) or str(node.target).startswith("aten.linear")):
        return False
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    return getattr(weight, "op", None) == "get_attr" and weight.target == "weight"


def _fx_transposed(node: Any) -> bool:
    target = str(node.target)
    if "transpose" in target:
        return True
    if target.startswith("aten.convolution"):
        flag = node.args[6] if len(node.args) > 6 else node.kwargs.get("transposed", False)
        return bool(flag)
    return False


def _fx_groups(node: Any) -> int:
    target = str(node.target)
    if target.startswith("aten.linear"):
        return 1
    position = 8 if target.startswith("aten.convolution") else 7 if "transpose" in target else 6
    value = node.args[position] if len(node.args) > position else node.kwargs.get("groups", 1)
    return int(value) if isinstance(value, int) else 1


def _script_kind(script: Any) -> str:
    """A TorchScript module: the convolution or linear its code applies to its own `weight` (child modules excluded)."""
    try:
        graph = script.inlined_graph
    except (AttributeError, RuntimeError):
        return ""
    self_value = next(iter(graph.inputs()), None)
    weight = getattr(script, "weight", None)
    for node in graph.nodes():
        op = node.kind()
        if not (_SCRIPT_CONV.match(op) or op == "aten::linear"):
            continue
        inputs = list(node.inputs())
        if len(inputs) < 2 or not _is_self_weight(inputs[1], self_value):
            continue
        if op == "aten::linear":
            return "Linear"
        if not isinstance(weight, torch.Tensor) or not 3 <= weight.dim() <= 5:
            return ""
        transposed = "transpose" in op
        if op in ("aten::_convolution", "aten::convolution") and len(inputs) > 6:
            flag = inputs[6].toIValue() if inputs[6].node().kind() == "prim::Constant" else None
            transposed = bool(flag)
        return _conv_name(weight.dim() - 2, transposed)
    return ""


def _is_self_weight(value: Any, self_value: Any) -> bool:
    node = value.node()
    if node.kind() != "prim::GetAttr" or node.s("name") != "weight":
        return False
    return self_value is not None and next(iter(node.inputs())).unique() == self_value.unique()


# ---------------------------------------------------------------- helpers


def _own_weight(module: nn.Module) -> torch.Tensor | None:
    params = getattr(module, "_parameters", None)
    weight = params.get("weight") if isinstance(params, dict) else None
    return weight if isinstance(weight, torch.Tensor) else None


def _conv_name(rank: int, transposed: bool) -> str:
    return f"{'ConvTranspose' if transposed else 'Conv'}{rank}d"


__all__ = ["CONV_KINDS", "KINDS", "VISUAL_KINDS", "groups", "kind", "node_kind", "weight_kind"]
