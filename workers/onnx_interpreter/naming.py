"""Module names for ONNX nodes: the names a user hooks and DescribeModel lists.

Weighted layers get the PyTorch module path they were exported from whenever the file tells it:
the weight initializer's name ("layer1.0.conv1.weight" -> "layer1.0.conv1"), the torch exporter's
name-scope metadata, or the legacy exporter's node name ("/layer1/layer1.0/conv1/Conv"). Other
nodes are named after their first output tensor. Everything is sanitised to what nn.Module
accepts: dotted paths of [A-Za-z0-9_] segments.
"""

from __future__ import annotations

import ast
import re
from typing import Any

_SEGMENT = re.compile(r"^[A-Za-z0-9_]+$")
_BAD = re.compile(r"[^A-Za-z0-9_]+")
_WEIGHT_SUFFIXES = (".weight", ".first_weight")


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


def layer_path(node: Any, weight_name: str | None) -> str:
    """The PyTorch-style path for a weighted node (Conv, ConvTranspose, Gemm, MatMul)."""
    if weight_name and not weight_name.startswith("onnx::"):
        for suffix in _WEIGHT_SUFFIXES:
            if weight_name.endswith(suffix):
                path = dotted(weight_name[: -len(suffix)])
                if path:
                    return path
    scoped = _scope_path(node)
    if scoped:
        return scoped
    legacy = _legacy_path(node.name)
    if legacy:
        return legacy
    return sanitize(node.name or (node.output[0] if node.output else node.op_type))


def tensor_module_name(tensor: str) -> str:
    """Name of the module that produces `tensor` (one segment: dots would nest modules)."""
    return sanitize(tensor)


def _scope_path(node: Any) -> str | None:
    """torch.onnx (dynamo) writes the module stack as metadata: ['', 'layer1', 'layer1.0', 'layer1.0.conv1', 'conv3d']."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            modules = [s for s in scopes[:-1] if isinstance(s, str) and s]
            if modules:
                return dotted(modules[-1])
    return None


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
