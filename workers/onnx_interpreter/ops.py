"""ONNX operators without weights of their own, as torch functions.

Each function takes the node (attributes in `node.attrs`, the opset in `node.opset`, constant
tensors as its buffers) and the node's inputs as tensors (None for an omitted optional input),
and returns a tensor or a tuple of tensors, one per node output. Only differentiable torch ops
are used on float data, so gradients reach the model's input. Shape arithmetic (Shape, Gather
on shapes, Reshape targets) runs on int64 tensors and is read with `.tolist()`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from workers.onnx_interpreter.padding import auto_pads, pad_pairs, split_pads

Tensor = torch.Tensor
OpFn = Callable[..., Any]

# ONNX TensorProto.DataType -> torch dtype.
DTYPES: dict[int, torch.dtype] = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    4: torch.uint16,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    12: torch.uint32,
    13: torch.uint64,
    16: torch.bfloat16,
}


def _ints(t: Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axes(node: Any, axes_input: Tensor | None, name: str = "axes") -> list[int] | None:
    """Axes from the input (newer opsets) or the attribute (older ones); None when neither is given."""
    if axes_input is not None:
        return _ints(axes_input)
    value = node.attrs.get(name)
    return None if value is None else [int(v) for v in value]


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ---------------------------------------------------------------- elementwise

def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    return lambda node, a, b: fn(a, b)


def _unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    return lambda node, x: fn(x)


def _div(node: Any, a: Tensor, b: Tensor) -> Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _pow(node: Any, a: Tensor, b: Tensor) -> Tensor:
    return torch.pow(a, b).to(a.dtype)


def _mod(node: Any, a: Tensor, b: Tensor) -> Tensor:
    return torch.fmod(a, b) if node.attrs.get("fmod", 0) else torch.remainder(a, b)


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def run(node: Any, *xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out

    return run


def _mean(node: Any, *xs: Tensor) -> Tensor:
    return _variadic(torch.add)(node, *xs) / len(xs)


def _where(node: Any, cond: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(cond.bool(), a, b)


def _cast(node: Any, x: Tensor) -> Tensor:
    return x.to(DTYPES[int(node.attrs["to"])])


def _cast_like(node: Any, x: Tensor, like: Tensor) -> Tensor:
    return x.to(like.dtype)


# ---------------------------------------------------------------- activations

def _leaky_relu(node: Any, x: Tensor) -> Tensor:
    return F.leaky_relu(x, float(node.attrs.get("alpha", 0.01)))


def _elu(node: Any, x: Tensor) -> Tensor:
    return F.elu(x, float(node.attrs.get("alpha", 1.0)))


def _prelu(node: Any, x: Tensor, slope: Tensor) -> Tensor:
    return torch.where(x < 0, x * slope, x)


def _clip(node: Any, x: Tensor, lo: Tensor | None = None, hi: Tensor | None = None) -> Tensor:
    if node.opset < 11:
        return torch.clamp(x, min=float(node.attrs.get("min", -math.inf)), max=float(node.attrs.get("max", math.inf)))
    lo_v = -math.inf if lo is None or lo.numel() == 0 else lo.item()
    hi_v = math.inf if hi is None or hi.numel() == 0 else hi.item()
    return torch.clamp(x, min=lo_v, max=hi_v)


def _hard_sigmoid(node: Any, x: Tensor) -> Tensor:
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


def _gelu(node: Any, x: Tensor) -> Tensor:
    return F.gelu(x, approximate=str(node.attrs.get("approximate", "none")))


def _softmax_like(fn: Callable[..., Tensor]) -> OpFn:
    def run(node: Any, x: Tensor) -> Tensor:
        if node.opset >= 13:
            return fn(x, dim=int(node.attrs.get("axis", -1)))
        # Before opset 13 the input is flattened to 2D at `axis` and normalised over the second part.
        axis = _norm_axis(int(node.attrs.get("axis", 1)), x.dim())
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return fn(flat, dim=1).reshape(x.shape)

    return run


# ---------------------------------------------------------------- shape and layout

def _flatten(node: Any, x: Tensor) -> Tensor:
    axis = _norm_axis(int(node.attrs.get("axis", 1)), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _reshape(node: Any, x: Tensor, shape: Tensor | None = None) -> Tensor:
    target = _ints(shape) if shape is not None else [int(v) for v in node.attrs["shape"]]
    if not node.attrs.get("allowzero", 0):
        target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
    return x.reshape(target)


def _transpose(node: Any, x: Tensor) -> Tensor:
    perm = node.attrs.get("perm")
    return x.permute(*(perm if perm is not None else reversed(range(x.dim()))))


def _squeeze(node: Any, x: Tensor, axes: Tensor | None = None) -> Tensor:
    dims = _axes(node, axes)
    if dims is None:
        return x.squeeze()
    return x.squeeze(tuple(_norm_axis(a, x.dim()) for a in dims)) if dims else x


def _unsqueeze(node: Any, x: Tensor, axes: Tensor | None = None) -> Tensor:
    dims = _axes(node, axes) or []
    rank = x.dim() + len(dims)
    for axis in sorted(_norm_axis(a, rank) for a in dims):
        x = x.unsqueeze(axis)
    return x


def _concat(node: Any, *xs: Tensor) -> Tensor:
    return torch.cat(xs, dim=int(node.attrs["axis"]))


def _split(node: Any, x: Tensor, split: Tensor | None = None) -> tuple[Tensor, ...]:
    axis = _norm_axis(int(node.attrs.get("axis", 0)), x.dim())
    sizes = _ints(split) if split is not None else node.attrs.get("split")
    if sizes:
        return tuple(torch.split(x, [int(s) for s in sizes], dim=axis))
    parts = int(node.attrs.get("num_outputs", node.num_outputs))
    return tuple(torch.split(x, math.ceil(x.shape[axis] / parts), dim=axis))


def _slice(
    node: Any,
    x: Tensor,
    starts: Tensor | None = None,
    ends: Tensor | None = None,
    axes: Tensor | None = None,
    steps: Tensor | None = None,
) -> Tensor:
    if node.opset < 10:
        begin, end = list(node.attrs["starts"]), list(node.attrs["ends"])
        dims = list(node.attrs.get("axes", range(len(begin))))
        stride = [1] * len(begin)
    else:
        begin, end = _ints(starts), _ints(ends)
        dims = _ints(axes) if axes is not None else list(range(len(begin)))
        stride = _ints(steps) if steps is not None else [1] * len(begin)
    for axis, b, e, s in zip(dims, begin, end, stride):
        axis = _norm_axis(int(axis), x.dim())
        # Python's slice clamping is ONNX's: starts/ends beyond the axis clamp, negatives count from the end.
        lo, hi, step = slice(b, e, s).indices(x.shape[axis])
        if step > 0:
            x = x.narrow(axis, lo, max(0, hi - lo)) if step == 1 else x[(slice(None),) * axis + (slice(lo, hi, step),)]
        else:
            x = x.index_select(axis, torch.arange(lo, hi, step, device=x.device))
    return x


def _shape(node: Any, x: Tensor) -> Tensor:
    dims = list(x.shape)
    start, end = node.attrs.get("start", 0), node.attrs.get("end")
    return torch.tensor(dims[start:end] if end is not None else dims[start:], dtype=torch.int64, device=x.device)


def _size(node: Any, x: Tensor) -> Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


def _gather(node: Any, x: Tensor, indices: Tensor) -> Tensor:
    axis = _norm_axis(int(node.attrs.get("axis", 0)), x.dim())
    idx = indices.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    picked = x.index_select(axis, idx.reshape(-1))
    return picked.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))  # a tuple: a 0-d index on a 1-d x gives shape ()


def _expand(node: Any, x: Tensor, shape: Tensor) -> Tensor:
    return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(shape))))


def _tile(node: Any, x: Tensor, repeats: Tensor) -> Tensor:
    return x.repeat(*_ints(repeats))


def _constant_of_shape(node: Any, shape: Tensor) -> Tensor:
    value = getattr(node, "value", None)
    if value is None:
        return torch.zeros(_ints(shape), dtype=torch.float32, device=shape.device)
    return value.reshape(()).expand(_ints(shape)).clone()


def _range(node: Any, start: Tensor, limit: Tensor, delta: Tensor) -> Tensor:
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


def _identity(node: Any, x: Tensor) -> Tensor:
    return x


def _dropout(node: Any, x: Tensor, *rest: Tensor | None) -> Any:
    if node.num_outputs > 1:
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


def _constant(node: Any) -> Tensor:
    return node.value


def _pad(
    node: Any,
    x: Tensor,
    pads: Tensor | None = None,
    constant_value: Tensor | None = None,
    axes: Tensor | None = None,
) -> Tensor:
    mode = str(node.attrs.get("mode", "constant"))
    if node.opset < 11:
        flat, value = [int(v) for v in node.attrs["pads"]], float(node.attrs.get("value", 0.0))
    else:
        flat = _ints(pads)
        value = 0.0 if constant_value is None or constant_value.numel() == 0 else constant_value.item()
    dims = [_norm_axis(a, x.dim()) for a in _ints(axes)] if axes is not None else list(range(x.dim()))
    begins, ends = flat[: len(dims)], flat[len(dims) :]
    full_begin, full_end = [0] * x.dim(), [0] * x.dim()
    for axis, b, e in zip(dims, begins, ends):
        full_begin[axis], full_end[axis] = b, e
    pairs = pad_pairs(full_begin, full_end)
    if mode == "constant":
        return F.pad(x, pairs, mode="constant", value=value)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if torch_mode is None:
        raise ValueError(f"Pad mode {mode!r} is not supported")
    # torch pads the trailing dims of a (N, C, ...) tensor in these modes: drop untouched leading pairs.
    while len(pairs) > 2 and pairs[-1] == 0 and pairs[-2] == 0:
        pairs = pairs[:-2]
    if len(pairs) // 2 > x.dim() - 2:
        raise ValueError(f"Pad mode {mode!r} on the batch or channel axis is not supported")
    return F.pad(x, pairs, mode=torch_mode)


# ---------------------------------------------------------------- reductions

def _reduce(fn: Callable[[Tensor, tuple[int, ...], bool], Tensor], axes_input_since: int) -> OpFn:
    def run(node: Any, x: Tensor, axes: Tensor | None = None) -> Tensor:
        keep = bool(node.attrs.get("keepdims", 1))
        dims = _axes(node, axes if node.opset >= axes_input_since else None)
        if not dims:
            if node.attrs.get("noop_with_empty_axes", 0):
                return x
            dims = list(range(x.dim()))
        return fn(x, tuple(_norm_axis(a, x.dim()) for a in dims), keep)

    return run


_REDUCE_MEAN = _reduce(lambda x, d, k: torch.mean(x, dim=d, keepdim=k), 18)
_REDUCE_SUM = _reduce(lambda x, d, k: torch.sum(x, dim=d, keepdim=k), 13)
_REDUCE_MAX = _reduce(lambda x, d, k: torch.amax(x, dim=d, keepdim=k), 18)
_REDUCE_MIN = _reduce(lambda x, d, k: torch.amin(x, dim=d, keepdim=k), 18)
_REDUCE_PROD = _reduce(lambda x, d, k: _prod(x, d, k), 18)


def _prod(x: Tensor, dims: Sequence[int], keep: bool) -> Tensor:
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keep)
    return x


# ---------------------------------------------------------------- pooling

def _pool_geometry(node: Any, x: Tensor) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    kernel = [int(k) for k in node.attrs["kernel_shape"]]
    rank = len(kernel)
    strides = [int(s) for s in node.attrs.get("strides", [1] * rank)]
    dilations = [int(d) for d in node.attrs.get("dilations", [1] * rank)]
    auto_pad = str(node.attrs.get("auto_pad", "NOTSET"))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = auto_pads(list(x.shape[2:]), kernel, strides, dilations, auto_pad)
    elif auto_pad == "VALID":
        begin, end = [0] * rank, [0] * rank
    else:
        begin, end = split_pads(node.attrs.get("pads"), rank)
    return kernel, strides, dilations, begin, end


def _max_pool(node: Any, x: Tensor) -> Any:
    kernel, strides, dilations, begin, end = _pool_geometry(node, x)
    rank, ceil = len(kernel), bool(node.attrs.get("ceil_mode", 0))
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1]
    symmetric = begin == end and all(b * 2 <= k for b, k in zip(begin, kernel))
    if not symmetric:
        x = F.pad(x, pad_pairs(begin, end), value=-math.inf)
        begin = [0] * rank
    out = fn(x, kernel, strides, begin, dilations, ceil_mode=ceil)
    if node.num_outputs > 1:
        raise ValueError("MaxPool with an Indices output is not supported")
    return out


def _average_pool(node: Any, x: Tensor) -> Tensor:
    kernel, strides, dilations, begin, end = _pool_geometry(node, x)
    if any(d != 1 for d in dilations):
        raise ValueError("AveragePool with dilations is not supported")
    rank, ceil = len(kernel), bool(node.attrs.get("ceil_mode", 0))
    include_pad = bool(node.attrs.get("count_include_pad", 0))
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]
    if begin == end and all(b * 2 <= k for b, k in zip(begin, kernel)):
        return fn(x, kernel, strides, begin, ceil_mode=ceil, count_include_pad=include_pad)
    # Asymmetric padding: pad explicitly and divide window sums by the count of the cells that count.
    pairs = pad_pairs(begin, end)
    sums = fn(F.pad(x, pairs), kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    if include_pad:
        return sums
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    counts = fn(F.pad(ones, pairs), kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    return sums / counts


def _global_average_pool(node: Any, x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def _global_max_pool(node: Any, x: Tensor) -> Tensor:
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# ---------------------------------------------------------------- normalisation and dense

def _batch_norm(node: Any, x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    if node.attrs.get("training_mode", 0):
        raise ValueError("BatchNormalization in training mode is not supported; export the model in eval mode")
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=float(node.attrs.get("epsilon", 1e-5)))


def _instance_norm(node: Any, x: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=float(node.attrs.get("epsilon", 1e-5)))


def _layer_norm(node: Any, x: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    axis = _norm_axis(int(node.attrs.get("axis", -1)), x.dim())
    shape = tuple(x.shape[axis:])
    eps = float(node.attrs.get("epsilon", 1e-5))
    return F.layer_norm(x, shape, scale.expand(shape), None if bias is None else bias.expand(shape), eps)


def _gemm(node: Any, a: Tensor, b: Tensor, c: Tensor | None = None) -> Tensor:
    if node.attrs.get("transA", 0):
        a = a.transpose(0, 1)
    if node.attrs.get("transB", 0):
        b = b.transpose(0, 1)
    out = float(node.attrs.get("alpha", 1.0)) * (a @ b)
    if c is not None:
        out = out + float(node.attrs.get("beta", 1.0)) * c
    return out


def _matmul(node: Any, a: Tensor, b: Tensor) -> Tensor:
    return torch.matmul(a, b)


# ---------------------------------------------------------------- sampling (a 3TConv export builds its kernel with these)

def _affine_grid(node: Any, theta: Tensor, size: Tensor) -> Tensor:
    return F.affine_grid(theta, _ints(size), align_corners=bool(node.attrs.get("align_corners", 0)))


def _grid_sample(node: Any, x: Tensor, grid: Tensor) -> Tensor:
    mode = str(node.attrs.get("mode", "linear" if node.opset >= 20 else "bilinear"))
    mode = {"linear": "bilinear", "cubic": "bicubic"}.get(mode, mode)
    return F.grid_sample(
        x,
        grid,
        mode=mode,
        padding_mode=str(node.attrs.get("padding_mode", "zeros")),
        align_corners=bool(node.attrs.get("align_corners", 0)),
    )


OPS: dict[str, OpFn] = {
    # elementwise arithmetic and logic
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _div,
    "Pow": _pow,
    "Mod": _mod,
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Mean": _mean,
    "Equal": _binary(torch.eq),
    "Less": _binary(torch.lt),
    "LessOrEqual": _binary(torch.le),
    "Greater": _binary(torch.gt),
    "GreaterOrEqual": _binary(torch.ge),
    "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or),
    "Xor": _binary(torch.logical_xor),
    "Not": _unary(torch.logical_not),
    "Where": _where,
    "Cast": _cast,
    "CastLike": _cast_like,
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Sqrt": _unary(torch.sqrt),
    "Reciprocal": _unary(torch.reciprocal),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Round": _unary(torch.round),
    "Sign": _unary(torch.sign),
    "Sin": _unary(torch.sin),
    "Cos": _unary(torch.cos),
    "Tan": _unary(torch.tan),
    "Atan": _unary(torch.atan),
    "Erf": _unary(torch.erf),
    # activations
    "Relu": _unary(torch.relu),
    "LeakyRelu": _leaky_relu,
    "PRelu": _prelu,
    "Elu": _elu,
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Softplus": _unary(F.softplus),
    "Clip": _clip,
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _unary(F.hardswish),
    "Gelu": _gelu,
    "Softmax": _softmax_like(torch.softmax),
    "LogSoftmax": _softmax_like(torch.log_softmax),
    # shape and layout
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Shape": _shape,
    "Size": _size,
    "Gather": _gather,
    "Expand": _expand,
    "Tile": _tile,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Pad": _pad,
    "Identity": _identity,
    "Dropout": _dropout,
    "Constant": _constant,
    # reductions
    "ReduceMean": _REDUCE_MEAN,
    "ReduceSum": _REDUCE_SUM,
    "ReduceMax": _REDUCE_MAX,
    "ReduceMin": _REDUCE_MIN,
    "ReduceProd": _REDUCE_PROD,
    # pooling
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": _global_average_pool,
    "GlobalMaxPool": _global_max_pool,
    # normalisation and dense (Gemm / MatMul with a weight initializer become layers instead)
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm,
    "LayerNormalization": _layer_norm,
    "Gemm": _gemm,
    "MatMul": _matmul,
    # sampling
    "AffineGrid": _affine_grid,
    "GridSample": _grid_sample,
}
