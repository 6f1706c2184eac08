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
from dataclasses import dataclass
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
        # Exporters merge equal initializers (zero biases, the zero weights of convs folded with a zero-gamma
        # BatchNorm) under the name of one of them. Where one reader of such a name sits next to its owner, the
        # owner's place relative to that reader (Swin's "attn" applying "attn.qkv" functionally; the dynamo
        # exporter's conv folded into "conv2.1", the BatchNorm after "conv2.0") names the other readers' layers.
        self.relations: dict[str, _Relation] = {}
        for name, owner in owners.items():
            relation = _Relation.between(owner, [scope_path(node) for node in consumers.get(name, [])]) if owner else None
            if relation is not None:
                self.relations[name] = relation

    def path(self, node: Any, weights: list[str], biases: list[str] | None = None) -> str:
        """`weights` and `biases`: the names of the node's constant weight and bias (as read, then the initializer)."""
        for names, suffixes in ((weights, _WEIGHT_SUFFIXES), (biases or [], _BIAS_SUFFIXES)):
            for name in names:
                owner = _parameter_owner(name, suffixes) if len(self.consumers.get(name, [])) == 1 else None
                if owner:
                    return owner
        scope = scope_path(node)
        traced = self._traced_parameter(node, scope)
        if traced:
            return traced
        if scope:
            for name in [*weights, *(biases or [])]:
                related = self.relations[name].apply(scope) if name in self.relations else None
                if related:
                    return related
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


@dataclass(frozen=True)
class _Relation:
    """Where a parameter's owner sits relative to the module of a node reading it: the reader's scope ends
    with `anchor` (the common ancestor's last segment, with its container's name when that is an index,
    then the reader's own segments below it); the owner is that ancestor, then `tail`."""

    anchor: tuple[str, ...]
    shared: int  # how many leading segments of `anchor` belong to the common ancestor
    tail: tuple[str, ...]

    @staticmethod
    def between(owner: str, scopes: list[str | None]) -> "_Relation | None":
        """From the reader whose scope shares the longest prefix with `owner` (None when none shares any)."""
        target = owner.split(".")
        best: tuple[int, list[str]] = (0, [])
        for scope in scopes:
            parts = scope.split(".") if scope else []
            common = next((i for i, (a, b) in enumerate(zip(parts, target)) if a != b), min(len(parts), len(target)))
            if common > best[0]:
                best = (common, parts)
        common, parts = best
        if common == 0 or len(parts) - common > 2 or len(target) - common > 3:
            return None
        shared = 2 if target[common - 1].isdigit() and common >= 2 else 1
        return _Relation(anchor=(*target[common - shared : common], *parts[common:]), shared=shared, tail=tuple(target[common:]))

    def apply(self, scope: str) -> str | None:
        """The owner's counterpart for a reader in `scope`, which must end like the reference reader's scope,
        a container index standing for any index (blocks.0 and blocks.1 of a ModuleList are alike)."""
        parts = scope.split(".")
        cut = len(parts) - len(self.anchor)
        if cut < 0 or any(a != b and not (a.isdigit() and b.isdigit()) for a, b in zip(parts[cut:], self.anchor)):
            return None
        return ".".join([*parts[: cut + self.shared], *self.tail])


def layer_path(node: Any, weight_name: str | None, bias_name: str | None = None) -> str:
    """The module path of a weighted node read on its own (no other node of its graph known)."""
    consumers = {name: [node] for name in (weight_name, bias_name) if name}
    return LayerNamer([node], [], consumers).path(node, [weight_name] if weight_name else [], [bias_name] if bias_name else [])


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
