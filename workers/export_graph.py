"""A torch.export program's graph, made to run at any batch and, as far as each layer, at any canvas.

Why: users export at batch 1 or with every size fixed (torch.export's default), while the analyses batch
samples (class_filters: 8, then 64) and optimise canvases smaller than the input (kernel_viz). An exported
program records its example sizes in two places:

- guards on the input, checked before anything runs (`UnflattenedModule.check_input_constraints`,
  torch/export/unflatten.py, via torch._export.utils._check_input_constraints_for_graph); they say what
  the tracer saw, not what the operators need, and `unguard` turns them off (`generalise` also drops the
  graph's `_assert_tensor_metadata` nodes, which pin the example's device);
- integer literals in the graph: `x.view(x.size(0), -1)` traced at batch 1 is `view(x, [1, -1])`,
  `token.expand(x.size(0), -1, -1)` is `expand(token, [1, -1, -1])`, a window partition's
  `reshape(B * windows, ...)` is `reshape([8, ...])`.

`generalise` rewrites those literals the way a dynamic export would have recorded them: a view's or
reshape's leading sizes that repeat its input's sizes become `sym_size` reads of that input, an expand of a
weight to the batch becomes `sym_size` of the model's input, a leading size that folds the batch into
another axis becomes -1. Then it checks the result numerically: the rewritten graph at another batch must
give, sample for sample, what the original graph gives at its own batch, in its outputs and in every
layer's output. If it does not, the program keeps its original graph and its fixed batch, and the model
wrapper (workers/model.py) splits batches into runs of that size.

Canvases: a layer takes any (T, H, W) when every operator between the input and the layer's output is
size-free: it computes the same thing at any size (convolutions, pooling, norms, elementwise maths,
permutes, views whose every size is read from a tensor or inferred). Any other operator (a slice, an
index, a pad, a view with a literal size) may encode the export's sizes, so for layers that depend on it
the wrapper embeds canvases in a full-size input instead. Nothing is guessed: a layer is either proven
size-free this way or embedded.
"""

from __future__ import annotations

import copy
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import fx

aten = torch.ops.aten

# Relative tolerance of the per-sample check (batched and single-sample convolutions round differently).
VERIFY_TOLERANCE = 1e-4
# Seed of the random inputs the rewritten graph is checked on.
VERIFY_SEED = 0

# Operators that compute the same function at any input size: no argument of theirs is a size that the
# export could have copied from its example (kernel sizes, strides, dims and paddings are the layer's own).
_SIZE_FREE = frozenset(
    """
    convolution _convolution conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d
    batch_norm _native_batch_norm_legit _native_batch_norm_legit_no_training _native_batch_norm_legit_functional
    native_batch_norm instance_norm layer_norm native_layer_norm group_norm rms_norm
    relu relu_ relu6 leaky_relu leaky_relu_ gelu gelu_ silu silu_ sigmoid sigmoid_ tanh tanh_ hardtanh hardtanh_
    hardswish hardswish_ hardsigmoid hardsigmoid_ elu elu_ selu celu mish softplus prelu glu logsigmoid
    threshold threshold_ clamp clamp_ clamp_min clamp_max clip
    add add_ sub sub_ rsub mul mul_ div div_ true_divide neg abs sqrt rsqrt exp log reciprocal square erf pow pow_
    maximum minimum where eq ne lt le gt ge
    max_pool1d max_pool2d max_pool3d max_pool2d_with_indices max_pool3d_with_indices
    avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
    _adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d
    sum mean amax amin var std softmax _softmax log_softmax _log_softmax _safe_softmax
    cat stack permute transpose t unsqueeze squeeze flatten contiguous clone alias detach lift_fresh_copy
    dropout dropout_ feature_dropout feature_dropout_ native_dropout
    linear matmul mm bmm addmm einsum
    _to_copy to type_as _assert_tensor_metadata sym_size copy_
    """.split()
)
_VIEWS = frozenset({"view", "reshape", "_unsafe_view", "view_copy"})
_CREATE = frozenset({"zeros", "ones", "full", "empty", "arange", "linspace", "scalar_tensor", "rand", "randn", "eye"})
_EXPAND = frozenset({"expand", "expand_copy"})
# Operators that read a tensor at indices held in another tensor: on CUDA, an index past the end is a
# device-side assert, which poisons the process's CUDA context instead of raising.
_INDEXING = frozenset({"index_select", "index", "gather", "take", "take_along_dim", "embedding", "index_put", "scatter", "scatter_add"})


@dataclass(frozen=True)
class GraphShapes:
    """What the (possibly rewritten) graph takes. batch: None = any batch; n = exactly n samples per run.
    free_layers: module paths that any canvas reaches through size-free operators only."""

    batch: int | None
    free_layers: frozenset[str]
    rewritten: int = 0
    note: str = ""


def generalise(program: Any) -> GraphShapes:
    """Rewrite `program`'s graph in place to run at any batch (kept only if verified) and report its shapes."""
    graph = program.graph_module.graph
    user = _user_input(program)
    value = user.meta.get("val")
    batch = value.shape[0] if value is not None and value.dim() else None
    fixed = batch if isinstance(batch, int) else None
    count, note = 0, ""
    _drop_metadata_asserts(program)
    try:
        candidate = copy.deepcopy(graph)
        count = _rewrite(candidate, _user_input_in(candidate, user.name), fixed)
        ok, note = _verify(program, candidate, fixed) if count or fixed is not None else (True, "")
    except Exception as exc:  # noqa: BLE001 - a graph this pass does not understand keeps its own sizes
        ok, note = False, f"the graph could not be rewritten: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    if ok:
        if count:
            program.graph_module.graph = candidate
            program.graph_module.recompile()
        fixed = None
    else:
        count = 0
    return GraphShapes(batch=fixed, free_layers=_free_layers(program.graph_module.graph), rewritten=count, note=note)


def unguard(module: torch.nn.Module) -> None:
    """Turn off an unflattened program's input-shape guards, and run its graphs as generated code.

    The guards only repeat the example's sizes (generalise decides what really runs); generated code
    calls the same submodules (so hooks fire) without torch.fx.Interpreter's per-node Python dispatch.
    """
    if hasattr(module, "check_input_constraints"):
        module.check_input_constraints = False
    for sub in module.modules():
        if hasattr(sub, "_run_with_interpreter"):
            sub._run_with_interpreter = False


# ---------------------------------------------------------------- rewriting

def _drop_metadata_asserts(program: Any) -> None:
    """Remove `_assert_tensor_metadata` checks: they assert the example's device and dtype on intermediate
    tensors (device=cpu for a CPU export), compute nothing, and would refuse the same graph on a GPU."""
    graph = program.graph_module.graph
    dropped = [n for n in graph.nodes if _packet(n) == "_assert_tensor_metadata" and not n.users]
    for node in dropped:
        graph.erase_node(node)
    if dropped:
        graph.lint()
        program.graph_module.recompile()


def _rewrite(graph: fx.Graph, user: fx.Node, batch: int | None) -> int:
    """Replace export-size literals in view/reshape/expand sizes; returns how many were replaced."""
    axes = _batch_axes(graph, user) if batch is not None else {}
    count = 0
    for node in list(graph.nodes):
        kind = _packet(node)
        if kind not in _VIEWS and kind not in _EXPAND:
            continue
        src, sizes = (node.args + (None, None))[:2]
        if not isinstance(src, fx.Node) or not isinstance(sizes, (list, tuple)):
            continue
        shape = _shape(src)
        new: list[Any] = list(sizes)
        out = _shape(node)
        carrier = _carrier(shape, list(out) if None not in out else list(sizes), axes.get(src)) if kind in _VIEWS else None
        if carrier is None and kind in _EXPAND and batch is not None and src not in axes and sizes and sizes[0] == batch:
            carrier = 0  # a weight broadcast to the batch (a class token)
        if carrier is not None and batch is not None and isinstance(sizes[carrier], int) and sizes[carrier] > 0 and sizes[carrier] % batch == 0:
            new[carrier] = _batch_size(graph, node, user, sizes[carrier] // batch)
        for i, size in enumerate(sizes):
            if i == carrier or isinstance(size, fx.Node):
                continue  # the batch, or already symbolic (a dynamic export)
            if not isinstance(size, int) or size == -1 or i >= len(shape) or shape[i] != size:
                break
            new[i] = -1 if kind in _EXPAND else _size_of(graph, node, src, i)
        changed = sum(1 for a, b in zip(new, sizes) if a is not b)
        if changed:
            count += changed
            node.args = (src, type(sizes)(new), *node.args[2:])
    graph.eliminate_dead_code()
    graph.lint()
    return count


def _carrier(shape: list[int | None], sizes: list[Any], axis: int | None) -> int | None:
    """The axis of a view's output that holds the batch, when the input holds it at `axis` (outermost
    factor): the output axis that starts at the same flat stride as the input's batch axis."""
    if axis is None or axis >= len(shape) or any(s is None for s in shape[: axis + 1]):
        return None
    if not all(isinstance(s, int) and s >= 0 for s in sizes):
        return None
    before = 1
    for s in shape[:axis]:
        before *= int(s)  # type: ignore[arg-type]
    product = 1
    for j, size in enumerate(sizes):
        if product == before:
            return j
        if product > before:
            return j - 1 if j else None  # the batch merged into an inner factor of the axis before
        product *= size
    return None


def _batch_size(graph: fx.Graph, user_node: fx.Node, user: fx.Node, factor: int) -> fx.Node:
    """The model input's batch (times `factor`), computed at run time, placed before `user_node`."""
    size = _size_of(graph, user_node, user, 0)
    if factor == 1:
        return size
    with graph.inserting_before(user_node):
        scaled = graph.call_function(operator.mul, (size, factor))
    scaled.meta = {k: v for k, v in size.meta.items() if k != "val"}
    scaled.meta["val"] = int(size.meta["val"]) * factor
    return scaled


def _size_of(graph: fx.Graph, user_node: fx.Node, src: fx.Node, dim: int) -> fx.Node:
    """A sym_size(src, dim) node placed before `user_node`, in the same module (for unflatten)."""
    with graph.inserting_before(user_node):
        size = graph.call_function(aten.sym_size.int, (src, dim))
    size.meta = {k: v for k, v in user_node.meta.items() if k in ("nn_module_stack", "stack_trace", "source_fn_stack")}
    size.meta["val"] = _shape(src)[dim]
    return size


def _batch_axes(graph: fx.Graph, user: fx.Node) -> dict[fx.Node, int | None]:
    """{node: the axis that holds the batch (its outermost factor), or None where it is lost} for every
    node that depends on the model's input. Followed through the operators that move axes; any other
    operator keeps the axis when the output has the input's rank and the same size there."""
    axes: dict[fx.Node, int | None] = {user: 0}
    for node in graph.nodes:
        if node.op != "call_function" or not any(a in axes for a in node.all_input_nodes):
            continue
        first = next((a for a in _tensor_args(node) if a in axes), None)
        axis = axes.get(first) if first is not None else None
        axes[node] = _moved_axis(node, first, axis, axes) if axis is not None else None
    return axes


def _moved_axis(node: fx.Node, src: fx.Node, axis: int, axes: dict[fx.Node, int | None]) -> int | None:
    kind = _packet(node)
    args = list(node.args)
    rank_in = len(_shape(src))
    out = _shape(node)
    if node.target is operator.getitem:
        parent = args[0]
        if isinstance(parent, fx.Node) and _packet(parent) == "unbind":
            dim = _dim(parent.args[1] if len(parent.args) > 1 else 0, len(_shape(parent.args[0])))
            return None if dim == axis else axis - (dim < axis)
        return axis
    if kind.startswith("new_") or kind in _CREATE:
        return None  # a fresh tensor: its sizes are its arguments, not its source's
    if isinstance(node.meta.get("val"), (list, tuple)):
        return axis  # several outputs (split, unbind, pooling with indices): getitem decides
    if kind == "permute":
        dims = [_dim(d, rank_in) for d in args[1]]
        return dims.index(axis) if axis in dims else None
    if kind == "transpose":
        a, b = _dim(args[1], rank_in), _dim(args[2], rank_in)
        return b if axis == a else a if axis == b else axis
    if kind == "t":
        return 1 - axis if rank_in == 2 else axis
    if kind == "unsqueeze":
        dim = _dim(args[1], rank_in + 1)
        return axis + (dim <= axis)
    if kind == "squeeze":
        dims = args[1] if len(args) > 1 else [i for i, s in enumerate(_shape(src)) if s == 1]
        dims = [_dim(d, rank_in) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        removed = [d for d in dims if _shape(src)[d] == 1]
        return None if axis in removed else axis - sum(d < axis for d in removed)
    if kind in ("select", "unbind"):
        dim = _dim(args[1] if len(args) > 1 else 0, rank_in)
        return None if dim == axis else axis - (dim < axis)
    if kind == "flatten":
        start = _dim(args[1] if len(args) > 1 else 0, rank_in)
        end = _dim(args[2] if len(args) > 2 else -1, rank_in)
        return axis if axis <= start else start if axis <= end else axis - (end - start)
    if kind == "stack":
        dim = _dim(args[1] if len(args) > 1 else 0, rank_in + 1)
        return axis + (dim <= axis)
    if kind in _VIEWS:
        sizes = args[1] if len(args) > 1 else []
        literal = [int(s) if isinstance(s, int) else -2 for s in sizes]
        known = out if all(s is not None for s in out) else literal
        return _carrier(_shape(src), list(known), axis)
    if kind in ("matmul", "bmm", "mm"):
        if len(out) != rank_in:
            return None
        if src is args[0]:
            return axis if axis != rank_in - 1 else None  # rows stay rows; the contracted axis goes
        return axis if axis < rank_in - 2 or axis == rank_in - 1 else None
    if kind == "einsum":
        return _einsum_axis(str(args[0]), list(args[1]), src, axis)
    if len(out) == rank_in and axis < len(out) and out[axis] == _shape(src)[axis]:
        return axis
    return None


def _einsum_axis(equation: str, operands: list[Any], src: fx.Node, axis: int) -> int | None:
    """Where einsum puts operand `src`'s axis `axis` ("bhwc,hkc->bhwk": b stays 0)."""
    if "..." in equation or "->" not in equation:
        return None
    inputs, output = equation.replace(" ", "").split("->")
    terms = inputs.split(",")
    index = next((i for i, o in enumerate(operands) if o is src), None)
    if index is None or index >= len(terms) or axis >= len(terms[index]):
        return None
    letter = terms[index][axis]
    return output.index(letter) if letter in output else None


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    for a in node.args:
        if isinstance(a, fx.Node):
            found.append(a)
        elif isinstance(a, (list, tuple)):
            found.extend(x for x in a if isinstance(x, fx.Node))
    return found


def _dim(d: Any, rank: int) -> int:
    d = int(d)
    return d + rank if d < 0 else d


# ---------------------------------------------------------------- verification

def _verify(program: Any, candidate: fx.Graph, batch: int | None) -> tuple[bool, str]:
    """Whether `candidate` at batch+1 gives, per sample, what the original gives at its batch."""
    user = _user_input(program)
    shape = list(user.meta["val"].shape)
    spatial = shape[1:]
    if not all(isinstance(s, int) for s in spatial):
        return False, "the input's sizes past the batch are symbolic; nothing to verify against"
    n = (batch or 1) + 1
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    x = torch.randn((n, *spatial), generator=generator, dtype=user.meta["val"].dtype)
    watched = _layer_outputs(candidate)
    original = _runner(program, program.graph_module.graph, watched)
    rewritten = _runner(program, candidate, watched)
    total = n
    try:
        with torch.no_grad():
            got = rewritten(x)
            if batch is None:
                want = original(x)
            else:
                pad = (-n) % batch
                xs = torch.cat([x, torch.randn((pad, *spatial), generator=generator, dtype=x.dtype)]) if pad else x
                total = len(xs)
                runs = [original(xs[i : i + batch]) for i in range(0, total, batch)]
                want = {k: torch.cat([r[k] for r in runs]) for k in runs[0] if all(k in r for r in runs)}
    except Exception as exc:  # noqa: BLE001 - a rewrite the operators refuse is simply not used
        return False, f"the rewritten graph fails at batch {n}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    for name, value in got.items():
        expected = want.get(name)
        if expected is None:
            continue
        rows = value.shape[0] if value.dim() else 0
        per_sample, rest = divmod(expected.shape[0] if expected.dim() else 0, total)
        if rest or rows != per_sample * n or tuple(value.shape[1:]) != tuple(expected.shape[1:]):
            if name == "output":
                return False, f"the rewritten graph's output has shape {tuple(value.shape)} at batch {n}"
            continue  # the batch is not the leading axis here: nothing to line up
        expected = expected[:rows]
        if not value.is_floating_point():
            if not torch.equal(value, expected):
                return False, f"{name} differs"
            continue
        scale = float(expected.abs().max()) if expected.numel() else 0.0
        if expected.numel() and float((value - expected).abs().max()) > VERIFY_TOLERANCE * max(scale, 1e-6):
            return False, f"{name} differs between batched and single-sample runs"
    return True, ""


def _runner(program: Any, graph: fx.Graph, watched: dict[str, str]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """x -> {watched layer or "output": tensor}, running `graph` with the program's weights."""
    gm = fx.GraphModule(program.graph_module, graph)
    values: list[Any] = []
    for spec in program.graph_signature.input_specs:
        kind = spec.kind.name
        if kind == "USER_INPUT":
            values.append(None)
        elif kind in ("PARAMETER", "BUFFER"):
            values.append(program.state_dict[spec.target] if spec.target in program.state_dict else program.constants[spec.target])
        elif kind in ("CONSTANT_TENSOR", "CUSTOM_OBJ"):
            values.append(program.constants[spec.target])
        else:
            values.append(None)
    slot = next(i for i, s in enumerate(program.graph_signature.input_specs) if s.kind.name == "USER_INPUT")

    class _Recorder(fx.Interpreter):
        def __init__(self) -> None:
            super().__init__(gm)
            self.seen: dict[str, torch.Tensor] = {}

        def run_node(self, n: fx.Node) -> Any:
            result = super().run_node(n)
            layer = watched.get(n.name)
            if layer is not None and isinstance(result, torch.Tensor):
                self.seen[layer] = result
            return result

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        args = list(values)
        args[slot] = x
        recorder = _Recorder()
        out = recorder.run(*args, enable_io_processing=False)
        leaves = [v for v in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(v, torch.Tensor)]
        user_outputs = [s for s in program.graph_signature.output_specs if s.kind.name == "USER_OUTPUT"]
        first = len(leaves) - len(user_outputs) if len(leaves) >= len(user_outputs) else 0
        result = dict(recorder.seen)
        if leaves[first:]:
            result["output"] = leaves[first]
        return result

    return run


def _layer_outputs(graph: fx.Graph) -> dict[str, str]:
    """{node name: layer path} for the last node of every module that holds weights (its output)."""
    last: dict[str, str] = {}
    weighted: set[str] = set()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        paths = _module_paths(node)
        if paths and any(_is_weight(a) for a in node.all_input_nodes):
            weighted.add(paths[-1])
        for path in paths:
            last[path] = node.name
    return {name: path for path, name in last.items() if path in weighted}


def _is_weight(node: fx.Node) -> bool:
    return node.op == "placeholder" and node.name.startswith(("p_", "b_", "c_")) or node.op == "get_attr"


# ---------------------------------------------------------------- canvases

def _free_layers(graph: fx.Graph) -> frozenset[str]:
    """Module paths whose every node depends on the input through size-free operators only, and that no
    indexing operator runs before.

    Only a layer's ancestors decide its output; an operator elsewhere that refuses a canvas makes the run fail
    (and the wrapper embed the canvas), it cannot change the layer's numbers. But an index computed at the
    export's size (SlowFast's slow pathway: index_select of frames 0 and 7, run before the fast pathway's
    layers) fails on a shorter canvas as a CUDA device-side assert, which no wrapper can catch: layers that
    run after one are embedded from the start.
    """
    tainted: set[fx.Node] = set()
    seen: set[str] = set()
    bad: set[str] = set()
    indexed = False
    for node in graph.nodes:
        if node.op == "call_function" and (not _size_free(node) or any(a in tainted for a in node.all_input_nodes)):
            tainted.add(node)
        if node.op != "call_function":
            continue
        indexed = indexed or (_packet(node) in _INDEXING and node in tainted)
        for path in _module_paths(node):
            seen.add(path)
            if node in tainted or indexed:
                bad.add(path)
    return frozenset(seen - bad)


def _size_free(node: fx.Node) -> bool:
    if node.target is operator.getitem:
        return True
    kind = _packet(node)
    if kind in _SIZE_FREE:
        return True
    if kind in _VIEWS or kind in _EXPAND:
        sizes = node.args[1] if len(node.args) > 1 else None
        return isinstance(sizes, (list, tuple)) and all(isinstance(s, fx.Node) or s == -1 for s in sizes)
    return False


# ---------------------------------------------------------------- graph facts

def _packet(node: fx.Node) -> str:
    """"view" for aten.view.default; "" for anything that is not an aten operator call."""
    if node.op != "call_function":
        return ""
    name = getattr(node.target, "__name__", "")
    overload = getattr(node.target, "_overloadpacket", None)
    if overload is not None:
        return str(getattr(overload, "__name__", name)).split(".")[-1]
    return ""


def _shape(node: fx.Node) -> list[int | None]:
    value = node.meta.get("val")
    shape = getattr(value, "shape", None)
    if shape is None:
        return []
    return [int(s) if isinstance(s, int) else None for s in shape]


def _module_paths(node: fx.Node) -> list[str]:
    """The module paths a node runs inside, outermost first ("layer1", "layer1.0", "layer1.0.conv1")."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = []
    for value in stack.values():
        path = value[0] if isinstance(value, (tuple, list)) else ""
        path = re.sub(r"^L__self__[._]?", "", str(path))
        path = re.sub(r"@\d+$", "", path)
        if path:
            paths.append(path)
    return paths


def _user_input(program: Any) -> fx.Node:
    name = next(s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT")
    return _user_input_in(program.graph_module.graph, name)


def _user_input_in(graph: fx.Graph, name: str) -> fx.Node:
    return next(n for n in graph.nodes if n.op == "placeholder" and n.name == name)
