"""Module names for ONNX nodes: the names a user hooks and DescribeModel lists.

One rule for every format: a weighted layer is named by the PyTorch module path it was exported
from (what `named_modules()` of the original says, and what a `.pt2` of it is named by), taken
from the first of these the file records:
  1. the weight initializer's name ("layer1.0.conv1.0.weight" -> "layer1.0.conv1.0"); both exporters
     keep parameter names, the dynamo exporter even after folding a BatchNorm into the conv. Only
     a weight read by this node alone counts: exporters merge equal initializers (zero biases, ones
     of LayerNorms, identical weights) under one of their names, which then names the wrong module;
  2. the bias initializer's name (read by this node alone) where the weight was rewritten but the
     bias was not: an nn.Linear applied to inputs of rank > 2 becomes MatMul by a transposed copy
     ("onnx::MatMul_25", "val_8") + Add of "proj.bias"; a module calling F.linear(x, self.qkv.weight,
     self.qkv.bias) (Swin's attention) is scoped as the caller ("attn") though the layer is "attn.qkv";
  3. the dynamo exporter's module stack: node metadata "pkg.torch.onnx.name_scopes"
     (['', 'layer1', 'layer1.0', 'layer1.0.conv1', 'conv3d']: the innermost module), else "namespace"
     (": __main__.Net/layer1: torch.nn...Sequential/.../conv3d: aten.conv3d.default");
  4. the legacy exporter's node name ("/layer1/layer1.0/conv1/conv1.0/Conv" -> "layer1.0.conv1.0"),
     whose scopes are module names relative to an ancestor; weights folded with a BatchNorm are
     then named "onnx::Conv_192", which is why the node name, not the initializer, is read.
Other nodes are named after their first output tensor. Everything is sanitised to what nn.Module
accepts: dotted paths of [A-Za-z0-9_] segments.
"""

from __future__ import annotations

import ast
import re
from typing import Any

_SEGMENT = re.compile(r"^[A-Za-z0-9_]+$")
_BAD = re.compile(r"[^A-Za-z0-9_]+")
_WEIGHT_SUFFIXES = (".weight", ".first_weight")
_BIAS_SUFFIXES = (".bias",)


def sanitize(name: str) -> str:
    """Any string -> a single module-name segment ("/relu/Relu_output_0" -> "relu_Relu_output_0")."""
    clean = _BAD.sub("_", name).strip("_")
    if not clean:
        return "node"
    return clean


def dotted(path: str) -> str | None:
    """A dotted module path if every segment is already clean, else None."""
    parts = path.split(".")
    if path and all(_SEGMENT.match(p) for p in parts):
        return path
    return None


class LayerNamer:
    """Names the weighted nodes of one graph: the module path each was exported from (see the module doc).

    `consumers` maps a tensor name to the nodes reading it; the namer learns from the whole graph which
    parameter names are shared and which module paths exist, so one node's name can use the others'.
    """

    def __init__(self, nodes: list[Any], initializers: list[str], consumers: dict[str, list[Any]]) -> None:
        self.consumers = consumers
        self._nodes = nodes
        owners = {name: _parameter_owner(name, _WEIGHT_SUFFIXES + _BIAS_SUFFIXES) for name in initializers}
        self._owners = {o for o in owners.values() if o}
        self._known: dict[str, str] | None = None
        # A parameter a module uses functionally (F.linear(x, self.qkv.weight, self.qkv.bias) in "attn") is
        # scoped as its caller: remember its name relative to the caller ("attn" -> "qkv"), so that other
        # callers of the same kind that exporters made share it (equal zero biases are merged) get theirs.
        self.tails: dict[str, tuple[str, str]] = {}
        for name, owner in owners.items():
            for node in consumers.get(name, []) if owner else []:
                scope = scope_path(node)
                if scope and owner.startswith(scope + "."):  # type: ignore[union-attr]
                    self.tails[name] = (scope.rsplit(".", 1)[-1], owner[len(scope) + 1 :])  # type: ignore[index]
                    break

    def path(self, node: Any, weight: str | None, bias: str | None = None) -> str:
        """`weight` and `bias` are the initializer names the node reads (after Identity chains), if any."""
        for name, suffixes in ((weight, _WEIGHT_SUFFIXES), (bias, _BIAS_SUFFIXES)):
            if name and len(self.consumers.get(name, [])) == 1:
                owner = _parameter_owner(name, suffixes)
                if owner:
                    return owner
        scope = scope_path(node)
        traced = self._traced_parameter(node, scope)
        if traced:
            return traced
        if scope:
            for name in (weight, bias):
                if name in self.tails and self.tails[name][0] == scope.rsplit(".", 1)[-1]:
                    return f"{scope}.{self.tails[name][1]}"
            return scope
        return sanitize(node.name or (node.output[0] if node.output else node.op_type))

    @property
    def known(self) -> dict[str, str]:
        """Every module path the graph records, by its flattened name ("layer1_0_conv1" -> "layer1.0.conv1")."""
        if self._known is None:
            paths = set(self._owners)
            for node in self._nodes:
                paths.update(_scopes(node))
            self._known = {k.replace(".", "_"): k for k in paths}
        return self._known

    def _traced_parameter(self, node: Any, scope: str | None) -> str | None:
        """The dynamo exporter's FX node: aten.linear(x, %p_features_0_0_attn_qkv_weight, ...) names the parameter."""
        fx = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.fx_node"), "")
        call = _FX_CALL.search(fx)
        if not call:
            return None
        args = re.findall(r"%(\w+)", call.group(1))
        if len(args) < 2 or not args[1].startswith("p_") or not args[1].endswith("_weight"):
            return None
        flat = args[1][2 : -len("_weight")]
        if flat in self.known:
            return self.known[flat]
        if scope and flat.startswith(scope.replace(".", "_") + "_"):
            return dotted(f"{scope}.{flat[len(scope) + 1:]}")
        return None


def layer_path(node: Any, weight_name: str | None, bias_name: str | None = None) -> str:
    """The module path of a weighted node read on its own (no other node of its graph known)."""
    consumers = {name: [node] for name in (weight_name, bias_name) if name}
    return LayerNamer([node], [], consumers).path(node, weight_name, bias_name)


def scope_path(node: Any) -> str | None:
    """The module a node was exported from: the dynamo exporter's module stack, else the legacy node name."""
    scopes = _scopes(node)
    return scopes[-1] if scopes else None


def tensor_module_name(tensor: str) -> str:
    """Name of the module that produces `tensor` (one segment: dots would nest modules)."""
    return sanitize(tensor)


def _parameter_owner(name: str | None, suffixes: tuple[str, ...]) -> str | None:
    """"layer1.0.conv1.0.weight" -> "layer1.0.conv1.0"; None for names an exporter made up ("onnx::Conv_192", "val_8")."""
    if not name or name.startswith("onnx::"):
        return None
    for suffix in suffixes:
        if name.endswith(suffix):
            return dotted(name[: -len(suffix)])
    return None


_FX_CALL = re.compile(r"target=torch\.ops\.aten\.(?:linear|conv\w*|convolution)\.\w+\]\(args = \((.*?)\), kwargs")


def _scopes(node: Any) -> list[str]:
    """Every module (outermost first) a node sits in, from exporter metadata or the legacy node name."""
    props = {prop.key: prop.value for prop in node.metadata_props}
    scopes: list[Any] = []
    if "pkg.torch.onnx.name_scopes" in props:
        # ['', 'layer1', 'layer1.0', 'layer1.0.conv1', 'conv3d']: module paths, then the op
        try:
            parsed = ast.literal_eval(props["pkg.torch.onnx.name_scopes"])
        except (ValueError, SyntaxError):
            parsed = []
        scopes = list(parsed) if isinstance(parsed, (list, tuple)) else []
    elif "namespace" in props:
        # ": __main__.Net/layer1: torch.nn.modules.container.Sequential/.../conv3d: aten.conv3d.default"
        scopes = [part.split(":", 1)[0].strip() for part in props["namespace"].split("/")]
    modules = [m for m in (dotted(s) for s in scopes[:-1] if isinstance(s, str) and s) if m]
    if modules:
        return modules
    legacy = _legacy_path(getattr(node, "name", ""))
    if not legacy:
        return []
    parts = legacy.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _legacy_path(name: str) -> str | None:
    """torch.onnx (TorchScript exporter) names nodes '/layer1/layer1.0/conv1/conv1.0/Conv' for 'layer1.0.conv1.0'.

    Each scope is a module's name relative to an ancestor: one that extends the scope before it
    ('conv1' -> 'conv1.0') adds only its tail; any other is a child's attribute name, appended whole.
    """
    if not name.startswith("/"):
        return None
    segments = [s for s in name.split("/") if s][:-1]
    path = ""
    previous = ""
    for seg in segments:
        if previous and seg.startswith(previous + "."):
            path += seg[len(previous):]
        else:
            path = f"{path}.{seg}" if path else seg
        previous = seg
    return dotted(path) if path else None
