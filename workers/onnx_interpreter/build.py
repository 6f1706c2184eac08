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
from workers.onnx_interpreter.control import IfNode, LoopNode, SubGraph
from workers.onnx_interpreter.layers import ComputedConv, make_conv, make_conv_transpose, make_linear
from workers.onnx_interpreter.module import OnnxModule, OpNode, Scope, Step
from workers.onnx_interpreter.ops import OPS
from workers.onnx_interpreter.static import static_outputs

Tensor = torch.Tensor

# Ops that may become layers (they also run as plain ops when their weight is not a constant).
LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
CONTROL_OPS = frozenset({"If", "Loop"})
SUPPORTED_OPS: frozenset[str] = frozenset(OPS) | LAYER_OPS | CONTROL_OPS
_DEFAULT_DOMAINS = ("", "ai.onnx")


def build_module(model: onnx.ModelProto) -> OnnxModule:
    """Translate `model` (already checked by onnx.checker) into a runnable, hookable OnnxModule.

    Raises ModelUnusable(UNSUPPORTED_OP) naming every op (and one node using it) outside the op set.
    Weighted layers are placed first, so their module paths win over any op node named alike.
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
    consumers = _consumers(graph)
    graph_outputs = set(root.output_names)
    namer = naming.LayerNamer(list(graph.node), list(inits), consumers)

    planned: list[tuple[nn.Module, tuple[str, ...], tuple[str, ...], str, onnx.NodeProto]] = []
    absorbed: set[str] = set()  # outputs of bias Adds folded into the Linear before them
    for node in order:
        if node.output and node.output[0] in absorbed:
            continue
        attrs, constants = _attributes(node)
        module, inputs, path, outputs = _layer(node, attrs, static, consumers, graph_outputs, namer)
        if module is None:
            module, inputs = _op_module(node, attrs, constants, opset)
            outputs = tuple(node.output)
            path = ""
        elif outputs != tuple(node.output):
            absorbed.update(o for o in outputs if o)
        planned.append((module, inputs, outputs, path, node))

    placed_paths: dict[int, str] = {}
    for _, _, _, path, _ in planned:  # every layer's containers first, so no layer takes a container's name
        _containers(root, path)
    for module, _, outputs, path, node in planned:  # layers before ops: their paths are the names users know
        if path:
            placed_paths[id(module)] = _place(root, path, module)
            root.layers[placed_paths[id(module)]] = _layer_record(node, module, static, producers.get(outputs[0]))
    for module, _, outputs, path, node in planned:
        if not path:
            first = outputs[0] if outputs and outputs[0] else node.name
            placed_paths[id(module)] = _place_flat(root, naming.tensor_module_name(first), module)

    steps: list[tuple[nn.Module, tuple[str, ...], tuple[str, ...]]] = []
    used: set[str] = set(root.output_names)
    for module, inputs, outputs, _, node in planned:
        for out in (*node.output, *outputs):
            if out:
                root.tensor_modules[out] = placed_paths[id(module)]
        used.update(inputs)
        steps.append((module, inputs, outputs))
    _register_initializers(root, inits, used)
    shape_only = static_outputs(
        [(node.op_type, inputs, outputs, isinstance(module, (OpNode, IfNode, LoopNode)), _graphs(node)) for module, inputs, outputs, _, node in planned],
        inits, root.input_names, _describe,
    )
    root.steps = _with_releases(steps, set(root.output_names), shape_only)
    return root


def _register_initializers(owner: nn.Module, inits: dict[str, Tensor], used: set[str]) -> None:
    """Initializers some step reads become buffers of `owner.initializers` (they follow .to())."""
    for raw in sorted(used):
        if raw in inits:
            buffer = _unique(owner.initializers, naming.sanitize(raw))
            owner.initializers.register_buffer(buffer, inits[raw])
            owner.initializer_buffers[raw] = buffer  # type: ignore[index]


def _op_module(node: onnx.NodeProto, attrs: dict[str, Any], constants: dict[str, Tensor], opset: int) -> tuple[nn.Module, tuple[str, ...]]:
    """The module running a node that is not a layer, and the inputs of its step (captured names after its own)."""
    op = node.op_type
    if op in CONTROL_OPS:
        branches = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
        captured = sorted(set().union(*(_free_names(g) for g in branches.values())) - {""})
        label = node.name or (node.output[0] if node.output else op)
        if op == "If":
            then_branch = _subgraph(branches["then_branch"], opset, f"{label}/then")
            else_branch = _subgraph(branches["else_branch"], opset, f"{label}/else")
            return IfNode(label, then_branch, else_branch, captured), (node.input[0], *captured)
        body = _subgraph(branches["body"], opset, f"{label}/body")
        explicit = tuple(node.input) + ("",) * max(0, 2 - len(node.input))
        return LoopNode(label, body, len(explicit) - 2, captured), (*explicit, *captured)
    if op == "Conv":  # inside a subgraph (no layer): the weight is whatever value reaches the node
        return ComputedConv(attrs, kind="Conv", rank=_rank_from_attributes(attrs)), tuple(node.input)
    if op not in OPS:
        raise ModelUnusable(f"ONNX node {node.name!r}: {op} inside a control-flow subgraph is not supported", reason="UNSUPPORTED_OP")
    module = OpNode(op, node.name, OPS[op], attrs, opset, len(node.output), constants)
    return module, tuple(node.input)


def _subgraph(graph: onnx.GraphProto, opset: int, label: str) -> SubGraph:
    """A branch or loop body, its nodes run as ops; names it reads from outside are captured."""
    inits = {t.name: _tensor(t) for t in graph.initializer}
    formal = [i.name for i in graph.input]
    captured = sorted(_free_names(graph))
    sub = SubGraph(label, formal, [o.name for o in graph.output], captured)
    order = _topological(graph, set(inits) | set(formal) | set(captured))
    steps: list[tuple[nn.Module, tuple[str, ...], tuple[str, ...]]] = []
    used: set[str] = {o.name for o in graph.output}
    for node in order:
        attrs, constants = _attributes(node)
        module, inputs = _op_module(node, attrs, constants, opset)
        sub.add_module(_unique(sub, naming.tensor_module_name(node.output[0] if node.output and node.output[0] else node.op_type)), module)
        used.update(inputs)
        steps.append((module, inputs, tuple(node.output)))
    _register_initializers(sub, inits, used)
    sub.steps = _with_releases(steps, set(sub.output_names))
    return sub


def _graphs(node: onnx.NodeProto) -> dict[str, onnx.GraphProto]:
    return {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}


def _describe(graph: onnx.GraphProto) -> list[tuple[str, tuple[str, ...], tuple[str, ...], bool, dict[str, onnx.GraphProto]]]:
    """A subgraph's nodes as workers/onnx_interpreter/static.py reads them (step inputs include captured names)."""
    described = []
    for node in graph.node:
        captured = sorted(_node_inputs(node) - set(node.input))
        described.append((node.op_type, (*node.input, *captured), tuple(node.output), True, _graphs(node)))
    return described


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def _free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads that it neither takes as inputs, holds as initializers, nor computes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {out for node in graph.node for out in node.output}
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(n for n in node.input if n)
        for sub in _subgraphs(node):
            used |= _free_names(sub)
    return used - defined - {""}


def _node_inputs(node: onnx.NodeProto) -> set[str]:
    """Everything a node needs computed first: its inputs and the names its subgraphs capture."""
    needed = {n for n in node.input if n}
    if node.op_type in CONTROL_OPS or node.domain not in _DEFAULT_DOMAINS:
        for sub in _subgraphs(node):
            needed |= _free_names(sub)
    return needed


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in _node_inputs(node):
            found.setdefault(name, []).append(node)
    return found


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
    consumers: dict[str, list[onnx.NodeProto]],
    graph_outputs: set[str],
    namer: naming.LayerNamer,
) -> tuple[nn.Module | None, tuple[str, ...], str, tuple[str, ...]]:
    """A layer for a weighted node: (module, its inputs, its module path, the outputs it produces).

    (None, ...) runs the node as a plain op. A MatMul by a constant matrix followed by the Add of a
    constant vector (how both exporters write nn.Linear on inputs of rank > 2) is one nn.Linear with
    its bias, producing the Add's output.
    """
    op = node.op_type
    inputs = list(node.input) + [""] * 3
    x, w, b = inputs[0], inputs[1], inputs[2]
    outputs = tuple(node.output)
    try:
        if op in ("Conv", "ConvTranspose"):
            weight = static.value(w)
            bias = static.value(b) if b else None
            if weight is not None and (not b or bias is not None):
                make = make_conv if op == "Conv" else make_conv_transpose
                module = make(weight.clone(), None if bias is None else bias.clone(), attrs)
                return module, (x,), namer.path(node, _names(w, static), _names(b, static)), outputs
            if op == "ConvTranspose":
                raise ModelUnusable(
                    f"ONNX node {node.name!r}: ConvTranspose with a computed weight is not supported; "
                    "export the model with torch.export (.pt2) instead",
                    reason="UNSUPPORTED_OP",
                )
            first = sorted(a for a in static.ancestors(w) if a.endswith("first_weight"))
            rank = _conv_rank(attrs, w, static)
            kind = f"TConv{rank or 3}d" if first else "Conv"  # ComputedConv names the rank: Conv2d, Conv3d
            module = ComputedConv(attrs, kind=kind, rank=rank)
            return module, tuple(node.input), naming.layer_path(node, first[0] if first else None), outputs
        if op == "Gemm":
            weight, bias = static.value(w), (static.value(b) if b else None)
            plain = attrs.get("transA", 0) == 0 and float(attrs.get("alpha", 1.0)) == 1.0 and float(attrs.get("beta", 1.0)) == 1.0
            if weight is not None and weight.dim() == 2 and plain and (not b or bias is not None):
                matrix = weight if attrs.get("transB", 0) else weight.t()
                out_features = matrix.shape[0]
                if bias is not None:
                    if bias.numel() not in (1, out_features):
                        return None, (), "", ()
                    bias = bias.reshape(-1).expand(out_features).clone()
                linear = make_linear(matrix.contiguous().clone(), bias)
                return linear, (x,), namer.path(node, _names(w, static), _names(b, static)), outputs
        if op == "MatMul":
            weight = static.value(w)
            if weight is not None and weight.dim() == 2 and weight.is_floating_point():
                add, bias_name = _bias_add(node, static, consumers, graph_outputs, int(weight.shape[1]))
                bias = None if add is None else static.value(bias_name).reshape(-1).to(weight.dtype).clone()  # type: ignore[union-attr]
                linear = make_linear(weight.t().contiguous().clone(), bias)
                path = namer.path(node, _names(w, static), _names(bias_name, static))
                return linear, (x,), path, outputs if add is None else tuple(add.output)
    except ValueError as exc:
        raise ModelUnusable(f"ONNX node {node.name!r} ({op}): {exc}", reason="UNSUPPORTED_OP") from exc
    return None, (), "", ()


def _names(tensor: str, static: _StaticValues) -> list[str]:
    """The names a constant input goes by: as the node reads it, then the initializer behind Identity chains (the
    legacy exporter merges equal initializers into one, read through Identity nodes named after each parameter)."""
    if not tensor:
        return []
    source = static.source(tensor)
    return [tensor] if source is None or source == tensor else [tensor, source]


def _bias_add(
    node: onnx.NodeProto,
    static: _StaticValues,
    consumers: dict[str, list[onnx.NodeProto]],
    graph_outputs: set[str],
    out_features: int,
) -> tuple[onnx.NodeProto | None, str]:
    """The Add node adding a constant (out_features,) vector to this MatMul's output, its only consumer."""
    out = node.output[0]
    users = consumers.get(out, [])
    if out in graph_outputs or len(users) != 1 or users[0].op_type != "Add" or users[0].domain not in _DEFAULT_DOMAINS:
        return None, ""
    add = users[0]
    other = [n for n in add.input if n != out]
    if len(add.input) != 2 or len(other) != 1:
        return None, ""
    bias = static.value(other[0])
    if bias is None or bias.dim() != 1 or bias.numel() != out_features or not bias.is_floating_point():
        return None, ""
    return add, other[0]


def _rank_from_attributes(attrs: dict[str, Any]) -> int | None:
    for key in ("kernel_shape", "strides", "dilations"):
        if attrs.get(key):
            return len(attrs[key])
    if attrs.get("pads"):
        return len(attrs["pads"]) // 2
    return None


def _conv_rank(attrs: dict[str, Any], weight: str, static: _StaticValues) -> int | None:
    """Spatial rank of a Conv from its attributes, else from a 5-D/4-D initializer its weight is built from."""
    rank = _rank_from_attributes(attrs)
    if rank is not None:
        return rank
    shaped = [static.inits[a] for a in static.ancestors(weight) if static.inits[a].dim() >= 3]
    return shaped[0].dim() - 2 if shaped else None


def _layer_record(node: onnx.NodeProto, module: nn.Module, static: _StaticValues, last: onnx.NodeProto | None) -> dict[str, Any]:
    """What the inventory says of a layer; `last` is the node producing its output (a folded bias Add, or `node`)."""
    bias_input = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    if last is not None and last is not node:
        bias_input = next(n for n in last.input if n != node.output[0])
    if isinstance(module, ComputedConv):
        kind = module.kind
        weight_names = sorted(static.ancestors(node.input[1]))
    else:
        kind = type(module).__name__
        weight_names = [static.source(node.input[1]) or node.input[1]]
    if bias_input:
        weight_names.append(static.source(bias_input) or bias_input)
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


def _containers(root: OnnxModule, path: str) -> None:
    """Create the Scopes on `path` above its last segment, where nothing else holds the name."""
    parent: nn.Module = root
    for part in path.split(".")[:-1] if path else []:
        child = parent._modules.get(part)
        if child is None:
            if _taken(parent, part):
                return
            child = Scope()
            parent.add_module(part, child)
        if not isinstance(child, Scope):
            return
        parent = child


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
    steps: list[tuple[nn.Module, tuple[str, ...], tuple[str, ...]]], keep: set[str], static: set[str] | None = None
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
    static = static or set()
    return [
        Step(m, i, o, tuple(releases.get(k, ())), bool(o) and all(n in static for n in o if n))
        for k, (m, i, o) in enumerate(steps)
    ]


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            return int(entry.version)
    return 1


def _check_ops(graph: onnx.GraphProto) -> None:
    unsupported: dict[str, str] = {}
    _collect_unsupported(graph, unsupported)
    if unsupported:
        listed = "; ".join(f"op {op} (node {name!r})" for op, name in sorted(unsupported.items()))
        raise ModelUnusable(
            f"the ONNX graph uses ops outside kernelscope's interpreter: {listed}. Export the model with "
            "torch.export instead (torch.export.save to a .pt2 file), which kernelscope runs without translation. "
            f"Supported ONNX ops: {', '.join(sorted(SUPPORTED_OPS))}",
            reason="UNSUPPORTED_OP",
        )


def _collect_unsupported(graph: onnx.GraphProto, unsupported: dict[str, str]) -> None:
    """Every op outside the set, in the graph and in its control-flow subgraphs."""
    for node in graph.node:
        known = node.domain in _DEFAULT_DOMAINS and node.op_type in SUPPORTED_OPS
        if not known:
            label = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
            unsupported.setdefault(label, node.name or (node.output[0] if node.output else "?"))
        for sub in _subgraphs(node):
            _collect_unsupported(sub, unsupported)


def _topological(graph: onnx.GraphProto, available_names: set[str]) -> list[onnx.NodeProto]:
    """Nodes ordered so every input (and every name a subgraph captures) is produced before use."""
    available = set(available_names) | {i.name for i in graph.input} | {""}
    waiting: dict[str, list[int]] = {}
    missing = []
    for index, node in enumerate(graph.node):
        need = {n for n in _node_inputs(node) if n not in available}
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


_RAW_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64}


def _tensor(proto: onnx.TensorProto) -> Tensor:
    dtype = _RAW_DTYPES.get(proto.data_type)
    if dtype is not None and proto.raw_data and proto.data_location != onnx.TensorProto.EXTERNAL:
        # The common case, read directly (numpy_helper.to_array's checks dominate on graphs of many constants).
        flat = np.frombuffer(proto.raw_data, dtype=np.dtype(dtype).newbyteorder("<"))
        return torch.from_numpy(flat.astype(dtype, copy=True).reshape(tuple(proto.dims)))
    array = numpy_helper.to_array(proto)
    if array.dtype == object:
        raise ModelUnusable(f"ONNX tensor {proto.name!r} holds strings, which the interpreter cannot run", reason="UNSUPPORTED_OP")
    return torch.from_numpy(np.array(array, copy=True))
