"""ONNX ModelProto -> OnnxModule: check every op, turn weighted nodes into layers, order the nodes."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from workers.errors import ModelUnusable
from workers.onnx_interpreter import naming
from workers.onnx_interpreter.layers import ComputedConv, make_conv, make_conv_transpose, make_linear
from workers.onnx_interpreter.module import OnnxModule, OpNode, Scope, Step
from workers.onnx_interpreter.ops import OPS

Tensor = torch.Tensor

# Ops that may become layers (they also run as plain ops when their weight is not a constant).
LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
SUPPORTED_OPS: frozenset[str] = frozenset(OPS) | LAYER_OPS
_DEFAULT_DOMAINS = ("", "ai.onnx")


def build_module(model: onnx.ModelProto) -> OnnxModule:
    """Translate `model` (already checked by onnx.checker) into a runnable, hookable OnnxModule.

    Raises ModelUnusable(UNSUPPORTED_OP) naming every op (and one node using it) outside the op set.
    """
    graph = model.graph
    opset = _opset(model)
    _check_ops(graph)
    inits = {t.name: _tensor(t) for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output if out}
    order = _topological(graph, set(inits))

    root = OnnxModule()
    root.input_names = [i.name for i in graph.input if i.name not in inits]
    root.output_names = [o.name for o in graph.output]
    static = _StaticValues(inits, producers)
    consumers_of_raw: set[str] = set(root.output_names)
    steps: list[tuple[nn.Module, tuple[str, ...], tuple[str, ...]]] = []

    for node in order:
        attrs, constants = _attributes(node)
        module, inputs, path = _layer(node, attrs, static, inits)
        if module is None:
            module = OpNode(node.op_type, node.name, OPS[node.op_type], attrs, opset, len(node.output), constants)
            inputs = tuple(node.input)
            path = naming.tensor_module_name(node.output[0] if node.output and node.output[0] else node.name)
        placed = _place(root, path, module)
        if not isinstance(module, OpNode):
            root.layers[placed] = _layer_record(node, module, static)
        for out in node.output:
            if out:
                root.tensor_modules[out] = placed
        consumers_of_raw.update(n for n in inputs if n in inits)
        steps.append((module, tuple(inputs), tuple(node.output)))

    for raw in sorted(consumers_of_raw):
        if raw in inits:
            buffer = _unique(root.initializers, naming.sanitize(raw))
            root.initializers.register_buffer(buffer, inits[raw])
            root.initializer_buffers[raw] = buffer
    root.steps = _with_releases(steps, set(root.output_names))
    return root


class _StaticValues:
    """Which tensors are constants known at load: initializers, Constant outputs, Identity of those."""

    def __init__(self, inits: dict[str, Tensor], producers: dict[str, onnx.NodeProto]) -> None:
        self.inits = inits
        self.producers = producers

    def source(self, name: str) -> str | None:
        """The initializer (or Constant output) a tensor is, following Identity chains; None if computed."""
        seen = 0
        while name and seen < 64:
            if name in self.inits:
                return name
            node = self.producers.get(name)
            if node is None:
                return None
            if node.op_type == "Identity":
                name = node.input[0]
                seen += 1
                continue
            if node.op_type == "Constant":
                return name
            return None
        return None

    def value(self, name: str) -> Tensor | None:
        src = self.source(name)
        if src is None:
            return None
        if src in self.inits:
            return self.inits[src]
        attrs, constants = _attributes(self.producers[src])
        return constants.get("value")

    def ancestors(self, name: str, limit: int = 10_000) -> set[str]:
        """Initializer names a computed tensor is built from."""
        found: set[str] = set()
        todo, seen = deque([name]), {name}
        while todo and len(seen) < limit:
            cur = todo.popleft()
            if cur in self.inits:
                found.add(cur)
                continue
            node = self.producers.get(cur)
            if node is None:
                continue
            for parent in node.input:
                if parent and parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        return found


def _layer(
    node: onnx.NodeProto,
    attrs: dict[str, Any],
    static: _StaticValues,
    inits: dict[str, Tensor],
) -> tuple[nn.Module | None, tuple[str, ...], str]:
    """A layer module for a weighted node (and the inputs it takes), or (None, ...) to run it as an op."""
    op = node.op_type
    inputs = list(node.input) + [""] * 3
    x, w, b = inputs[0], inputs[1], inputs[2]
    try:
        if op in ("Conv", "ConvTranspose"):
            weight = static.value(w)
            bias = static.value(b) if b else None
            if weight is not None and (not b or bias is not None):
                make = make_conv if op == "Conv" else make_conv_transpose
                return make(weight.clone(), None if bias is None else bias.clone(), attrs), (x,), naming.layer_path(node, static.source(w))
            if op == "ConvTranspose":
                raise ModelUnusable(
                    f"ONNX node {node.name!r}: ConvTranspose with a computed weight is not supported", reason="UNSUPPORTED_OP"
                )
            first = sorted(a for a in static.ancestors(w) if a.endswith("first_weight"))
            rank = _conv_rank(attrs, w, static, inits)
            kind = f"TConv{rank or 3}d" if first else "Conv"  # ComputedConv names the rank: Conv2d, Conv3d
            module = ComputedConv(attrs, kind=kind, rank=rank)
            return module, tuple(node.input), naming.layer_path(node, first[0] if first else None)
        if op == "Gemm":
            weight, bias = static.value(w), (static.value(b) if b else None)
            plain = attrs.get("transA", 0) == 0 and float(attrs.get("alpha", 1.0)) == 1.0 and float(attrs.get("beta", 1.0)) == 1.0
            if weight is not None and weight.dim() == 2 and plain and (not b or bias is not None):
                matrix = weight if attrs.get("transB", 0) else weight.t()
                out_features = matrix.shape[0]
                if bias is not None:
                    if bias.numel() not in (1, out_features):
                        return None, (), ""
                    bias = bias.reshape(-1).expand(out_features).clone()
                linear = make_linear(matrix.contiguous().clone(), bias)
                return linear, (x,), naming.layer_path(node, static.source(w))
        if op == "MatMul":
            weight = static.value(w)
            if weight is not None and weight.dim() == 2 and weight.is_floating_point():
                return make_linear(weight.t().contiguous().clone(), None), (x,), naming.layer_path(node, static.source(w))
    except ValueError as exc:
        raise ModelUnusable(f"ONNX node {node.name!r} ({op}): {exc}", reason="UNSUPPORTED_OP") from exc
    return None, (), ""


def _conv_rank(attrs: dict[str, Any], weight: str, static: _StaticValues, inits: dict[str, Tensor]) -> int | None:
    """Spatial rank of a Conv from its attributes, else from a 5-D/4-D initializer its weight is built from."""
    for key in ("kernel_shape", "strides", "dilations"):
        if attrs.get(key):
            return len(attrs[key])
    if attrs.get("pads"):
        return len(attrs["pads"]) // 2
    shaped = [inits[a] for a in static.ancestors(weight) if inits[a].dim() >= 3]
    return shaped[0].dim() - 2 if shaped else None


def _layer_record(node: onnx.NodeProto, module: nn.Module, static: _StaticValues) -> dict[str, Any]:
    if isinstance(module, ComputedConv):
        kind = module.kind
        weight_names = sorted(static.ancestors(node.input[1]))
        bias = static.source(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if bias is not None:
            weight_names.append(bias)
    else:
        kind = type(module).__name__
        weight_names = [static.source(node.input[1]) or node.input[1]]
    return {"op": node.op_type, "kind": kind, "onnx_node": node.name, "weights": weight_names}


def _place(root: OnnxModule, path: str, module: nn.Module) -> str:
    """Register `module` at dotted `path` under `root` (creating Scopes), renaming on any clash."""
    parts = path.split(".")
    parent: nn.Module = root
    for i, part in enumerate(parts[:-1]):
        child = parent._modules.get(part)
        if child is None and not _taken(parent, part):
            child = Scope()
            parent.add_module(part, child)
        if not isinstance(child, Scope):
            # The path runs through something that is not a container: flatten it instead.
            return _place_flat(root, "_".join(parts), module)
        parent = child
    leaf = _unique(parent, parts[-1])
    parent.add_module(leaf, module)
    return ".".join(parts[:-1] + [leaf])


def _place_flat(root: OnnxModule, name: str, module: nn.Module) -> str:
    leaf = _unique(root, name)
    root.add_module(leaf, module)
    return leaf


def _taken(parent: nn.Module, name: str) -> bool:
    return name in parent._modules or name in parent._buffers or name in parent._parameters or hasattr(parent, name)


def _unique(parent: nn.Module, name: str) -> str:
    candidate, k = name, 1
    while _taken(parent, candidate):
        candidate = f"{name}_{k}"
        k += 1
    return candidate


def _with_releases(
    steps: list[tuple[nn.Module, tuple[str, ...], tuple[str, ...]]], keep: set[str]
) -> list[Step]:
    last_use: dict[str, int] = {}
    for index, (_, inputs, _) in enumerate(steps):
        for name in inputs:
            if name:
                last_use[name] = index
    releases: dict[int, list[str]] = {}
    for name, index in last_use.items():
        if name not in keep:
            releases.setdefault(index, []).append(name)
    return [Step(m, i, o, tuple(releases.get(k, ()))) for k, (m, i, o) in enumerate(steps)]


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            return int(entry.version)
    return 1


def _check_ops(graph: onnx.GraphProto) -> None:
    unsupported: dict[str, str] = {}
    for node in graph.node:
        known = node.domain in _DEFAULT_DOMAINS and node.op_type in SUPPORTED_OPS
        if not known:
            label = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
            unsupported.setdefault(label, node.name or (node.output[0] if node.output else "?"))
    if unsupported:
        listed = "; ".join(f"op {op} (node {name!r})" for op, name in sorted(unsupported.items()))
        raise ModelUnusable(
            f"the ONNX graph uses ops outside kernelscope's interpreter: {listed}. "
            f"Supported ops: {', '.join(sorted(SUPPORTED_OPS))}",
            reason="UNSUPPORTED_OP",
        )


def _topological(graph: onnx.GraphProto, initializers: set[str]) -> list[onnx.NodeProto]:
    """Nodes ordered so every input is produced before use (ONNX files should be, but need not be, sorted)."""
    available = set(initializers) | {i.name for i in graph.input} | {""}
    waiting: dict[str, list[int]] = {}
    missing = []
    for index, node in enumerate(graph.node):
        need = {n for n in node.input if n not in available}
        missing.append(len(need))
        for n in need:
            waiting.setdefault(n, []).append(index)
    ready = deque(i for i, m in enumerate(missing) if m == 0)
    order: list[onnx.NodeProto] = []
    while ready:
        index = ready.popleft()
        node = graph.node[index]
        order.append(node)
        for out in node.output:
            for consumer in waiting.pop(out, []):
                missing[consumer] -= 1
                if missing[consumer] == 0:
                    ready.append(consumer)
    if len(order) != len(graph.node):
        stuck = [graph.node[i].name or graph.node[i].op_type for i, m in enumerate(missing) if m > 0]
        raise ModelUnusable(
            f"the ONNX graph has nodes whose inputs are never produced (or a cycle): {stuck[:5]}", reason="ONNX_INVALID"
        )
    return order


def _attributes(node: onnx.NodeProto) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Plain Python attributes, and tensor-valued ones (Constant's value) as torch tensors."""
    attrs: dict[str, Any] = {}
    constants: dict[str, Tensor] = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, onnx.TensorProto):
            constants["value" if attr.name == "value" else attr.name] = _tensor(value)
        elif isinstance(value, bytes):
            attrs[attr.name] = value.decode("utf-8", "replace")
        elif isinstance(value, list):
            attrs[attr.name] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        else:
            attrs[attr.name] = value
    if node.op_type == "Constant" and "value" not in constants:
        for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32), ("value_int", torch.int64), ("value_ints", torch.int64)):
            if key in attrs:
                constants["value"] = torch.tensor(attrs.pop(key), dtype=dtype)
                break
        else:
            raise ModelUnusable(f"ONNX Constant node {node.name!r} has a value kind that is not supported", reason="UNSUPPORTED_OP")
    return attrs, constants


def _tensor(proto: onnx.TensorProto) -> Tensor:
    array = numpy_helper.to_array(proto)
    if array.dtype == object:
        raise ModelUnusable(f"ONNX tensor {proto.name!r} holds strings, which the interpreter cannot run", reason="UNSUPPORTED_OP")
    return torch.from_numpy(np.array(array, copy=True))
