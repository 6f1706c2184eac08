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
from workers.onnx_interpreter.recurrent import gru, lstm, rnn
from workers.onnx_interpreter.resize import resize

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


def _selu(node: Any, x: Tensor) -> Tensor:
    alpha, gamma = float(node.attrs.get("alpha", 1.67326319217681884765625)), float(node.attrs.get("gamma", 1.05070102214813232421875))
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


def _celu(node: Any, x: Tensor) -> Tensor:
    return F.celu(x, float(node.attrs.get("alpha", 1.0)))


def _thresholded_relu(node: Any, x: Tensor) -> Tensor:
    return torch.where(x > float(node.attrs.get("alpha", 1.0)), x, torch.zeros_like(x))


def _shrink(node: Any, x: Tensor) -> Tensor:
    bias, lambd = float(node.attrs.get("bias", 0.0)), float(node.attrs.get("lambd", 0.5))
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))


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
_REDUCE_L1 = _reduce(lambda x, d, k: torch.sum(torch.abs(x), dim=d, keepdim=k), 18)
_REDUCE_L2 = _reduce(lambda x, d, k: torch.sqrt(torch.sum(x * x, dim=d, keepdim=k)), 18)
_REDUCE_SUM_SQUARE = _reduce(lambda x, d, k: torch.sum(x * x, dim=d, keepdim=k), 18)
_REDUCE_LOG_SUM = _reduce(lambda x, d, k: torch.log(torch.sum(x, dim=d, keepdim=k)), 18)
_REDUCE_LOG_SUM_EXP = _reduce(lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k), 18)


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


def _group_norm(node: Any, x: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """Opset 18 gives one scale per group, opset 21 one per channel."""
    groups = int(node.attrs["num_groups"])
    channels = x.shape[1]
    if scale.numel() == groups and groups != channels:
        scale, bias = scale.repeat_interleave(channels // groups), bias.repeat_interleave(channels // groups)
    return F.group_norm(x, groups, scale, bias, float(node.attrs.get("epsilon", 1e-5)))


def _lp_norm(node: Any, x: Tensor) -> Tensor:
    axis, p = int(node.attrs.get("axis", -1)), int(node.attrs.get("p", 2))
    return x / torch.linalg.vector_norm(x, ord=p, dim=axis, keepdim=True)


def _mean_variance_norm(node: Any, x: Tensor) -> Tensor:
    dims = tuple(int(a) for a in node.attrs.get("axes", [0, 2, 3]))
    centred = x - x.mean(dim=dims, keepdim=True)
    return centred / torch.sqrt((centred * centred).mean(dim=dims, keepdim=True) + 1e-9)


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


# ---------------------------------------------------------------- indexing and scattering

def _fix_negative(idx: Tensor, sizes: Tensor | int) -> Tensor:
    return torch.where(idx < 0, idx + sizes, idx)


def _scatter_nd(node: Any, data: Tensor, indices: Tensor, updates: Tensor) -> Tensor:
    """data with data[indices[i]] = updates[i] (or combined by `reduction`): Swin3D's and MViT's slice assignments."""
    reduction = str(node.attrs.get("reduction", "none"))
    k = int(indices.shape[-1])
    sizes = torch.tensor(data.shape[:k], dtype=torch.int64, device=data.device)
    idx = _fix_negative(indices.long(), sizes)
    if reduction in ("none", "add"):
        key = tuple(idx[..., j] for j in range(k))
        return data.index_put(key, updates.to(data.dtype), accumulate=reduction == "add")
    reduce = {"mul": "prod", "max": "amax", "min": "amin"}.get(reduction)
    if reduce is None:
        raise ValueError(f"ScatterND reduction {reduction!r} is not supported")
    strides = torch.tensor([math.prod(data.shape[j + 1 : k]) for j in range(k)], dtype=torch.int64, device=data.device)
    flat_index = (idx * strides).sum(-1).reshape(-1)
    rows = data.reshape(math.prod(data.shape[:k]), *data.shape[k:])
    values = updates.to(data.dtype).reshape(-1, *data.shape[k:])
    index = flat_index.reshape(-1, *([1] * (rows.dim() - 1))).expand_as(values)
    return rows.scatter_reduce(0, index, values, reduce, include_self=True).reshape(data.shape)


def _scatter_elements(node: Any, data: Tensor, indices: Tensor, updates: Tensor) -> Tensor:
    axis = _norm_axis(int(node.attrs.get("axis", 0)), data.dim())
    idx = _fix_negative(indices.long(), data.shape[axis])
    reduction = str(node.attrs.get("reduction", "none"))
    if reduction == "none":
        return data.scatter(axis, idx, updates.to(data.dtype))
    reduce = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}.get(reduction)
    if reduce is None:
        raise ValueError(f"ScatterElements reduction {reduction!r} is not supported")
    return data.scatter_reduce(axis, idx, updates.to(data.dtype), reduce, include_self=True)


def _gather_elements(node: Any, x: Tensor, indices: Tensor) -> Tensor:
    axis = _norm_axis(int(node.attrs.get("axis", 0)), x.dim())
    return torch.gather(x, axis, _fix_negative(indices.long(), x.shape[axis]))


def _gather_nd(node: Any, data: Tensor, indices: Tensor) -> Tensor:
    b = int(node.attrs.get("batch_dims", 0))
    k = int(indices.shape[-1])
    batch = math.prod(data.shape[:b])
    rows = data.reshape(batch, *data.shape[b:])
    sizes = torch.tensor(data.shape[b : b + k], dtype=torch.int64, device=data.device)
    idx = _fix_negative(indices.long(), sizes).reshape(batch, *indices.shape[b:])
    first = torch.arange(batch, device=data.device).reshape(batch, *([1] * (idx.dim() - 2)))
    picked = rows[(first, *(idx[..., j] for j in range(k)))]
    return picked.reshape(*data.shape[:b], *indices.shape[b:-1], *data.shape[b + k :])


def _einsum(node: Any, *xs: Tensor) -> Tensor:
    return torch.einsum(str(node.attrs["equation"]).replace(" ", ""), *xs)


def _trilu(node: Any, x: Tensor, k: Tensor | None = None) -> Tensor:
    diagonal = 0 if k is None else int(k.item())
    return torch.triu(x, diagonal) if int(node.attrs.get("upper", 1)) else torch.tril(x, diagonal)


def _cumsum(node: Any, x: Tensor, axis: Tensor) -> Tensor:
    dim = _norm_axis(int(axis.item()), x.dim())
    reverse, exclusive = bool(node.attrs.get("reverse", 0)), bool(node.attrs.get("exclusive", 0))
    if reverse:
        x = x.flip(dim)
    out = torch.cumsum(x, dim)
    if exclusive:  # shift by one: the first element is 0, no subtraction (exact for every dtype)
        zero = torch.zeros_like(out.narrow(dim, 0, 1))
        out = torch.cat([zero, out.narrow(dim, 0, out.shape[dim] - 1)], dim)
    return out.flip(dim) if reverse else out


def _arg_reduce(largest: bool) -> OpFn:
    def run(node: Any, x: Tensor) -> Tensor:
        axis = _norm_axis(int(node.attrs.get("axis", 0)), x.dim())
        keep = bool(node.attrs.get("keepdims", 1))
        if node.attrs.get("select_last_index", 0):
            flipped = x.flip(axis)
            found = (flipped.argmax if largest else flipped.argmin)(axis, keepdim=keep)
            return x.shape[axis] - 1 - found
        return (x.argmax if largest else x.argmin)(axis, keepdim=keep)

    return run


def _top_k(node: Any, x: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    axis = _norm_axis(int(node.attrs.get("axis", -1)), x.dim())
    values, indices = torch.topk(
        x, int(k.reshape(-1)[0].item()), dim=axis, largest=bool(node.attrs.get("largest", 1)), sorted=True
    )
    return values, indices


def _non_zero(node: Any, x: Tensor) -> Tensor:
    return torch.nonzero(x).t().contiguous()


def _one_hot(node: Any, indices: Tensor, depth: Tensor, values: Tensor) -> Tensor:
    size = int(depth.reshape(-1)[0].item())
    idx = indices.long()
    idx = torch.where(idx < 0, idx + size, idx)
    hot = F.one_hot(idx.clamp(0, size - 1), size) * ((idx >= 0) & (idx < size)).unsqueeze(-1)
    axis = _norm_axis(int(node.attrs.get("axis", -1)), idx.dim() + 1)
    hot = hot.movedim(-1, axis).bool()
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return torch.where(hot, on, off)


def _is_inf(node: Any, x: Tensor) -> Tensor:
    neg, pos = bool(node.attrs.get("detect_negative", 1)), bool(node.attrs.get("detect_positive", 1))
    return ((x == -math.inf) & neg) | ((x == math.inf) & pos)


def _depth_to_space(node: Any, x: Tensor) -> Tensor:
    b = int(node.attrs["blocksize"])
    n, c, h, w = x.shape
    if str(node.attrs.get("mode", "DCR")) == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


def _space_to_depth(node: Any, x: Tensor) -> Tensor:
    b = int(node.attrs["blocksize"])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


# ---------------------------------------------------------------- sequences (Python lists of tensors)

def _sequence_construct(node: Any, *xs: Tensor) -> list[Tensor]:
    return list(xs)


def _sequence_empty(node: Any) -> list[Tensor]:
    return []


def _position(seq: list[Tensor], position: Tensor | None, default: int) -> int:
    return default if position is None else int(position.item())


def _sequence_insert(node: Any, seq: list[Tensor], x: Tensor, position: Tensor | None = None) -> list[Tensor]:
    out = list(seq)  # a new list: Loop bodies carry sequences, which must not change under their producers
    out.insert(_position(seq, position, len(seq)), x)  # a negative position counts from the back, as in Python
    return out


def _sequence_erase(node: Any, seq: list[Tensor], position: Tensor | None = None) -> list[Tensor]:
    out = list(seq)
    del out[_position(seq, position, -1)]
    return out


def _sequence_at(node: Any, seq: list[Tensor], position: Tensor) -> Tensor:
    return seq[_position(seq, position, 0)]


def _sequence_length(node: Any, seq: list[Tensor]) -> Tensor:
    return torch.tensor(len(seq), dtype=torch.int64, device=seq[0].device if seq else None)


def _concat_from_sequence(node: Any, seq: list[Tensor]) -> Tensor:
    axis = int(node.attrs["axis"])
    if node.attrs.get("new_axis", 0):
        return torch.stack(seq, dim=_norm_axis(axis, seq[0].dim() + 1))
    return torch.cat(seq, dim=axis)


def _split_to_sequence(node: Any, x: Tensor, split: Tensor | None = None) -> list[Tensor]:
    axis = _norm_axis(int(node.attrs.get("axis", 0)), x.dim())
    if split is None:
        parts = list(torch.split(x, 1, dim=axis))
        return [p.squeeze(axis) for p in parts] if node.attrs.get("keepdims", 1) == 0 else parts
    if split.dim() == 0:
        return list(torch.split(x, int(split.item()), dim=axis))
    return list(torch.split(x, _ints(split), dim=axis))


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
    "Asin": _unary(torch.asin),
    "Acos": _unary(torch.acos),
    "Sinh": _unary(torch.sinh),
    "Cosh": _unary(torch.cosh),
    "Asinh": _unary(torch.asinh),
    "Acosh": _unary(torch.acosh),
    "Atanh": _unary(torch.atanh),
    "IsNaN": _unary(torch.isnan),
    "IsInf": _is_inf,
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
    "Selu": _selu,
    "Celu": _celu,
    "Mish": _unary(F.mish),
    "Softsign": _unary(F.softsign),
    "ThresholdedRelu": _thresholded_relu,
    "Shrink": _shrink,
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
    "Resize": resize,
    "Identity": _identity,
    "Dropout": _dropout,
    "Constant": _constant,
    "Trilu": _trilu,
    "CumSum": _cumsum,
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
    "NonZero": _non_zero,
    "OneHot": _one_hot,
    # indexing and scattering
    "GatherElements": _gather_elements,
    "GatherND": _gather_nd,
    "ScatterND": _scatter_nd,
    "ScatterElements": _scatter_elements,
    "Scatter": _scatter_elements,
    "Einsum": _einsum,
    "ArgMax": _arg_reduce(largest=True),
    "ArgMin": _arg_reduce(largest=False),
    "TopK": _top_k,
    # sequences
    "SequenceConstruct": _sequence_construct,
    "SequenceEmpty": _sequence_empty,
    "SequenceInsert": _sequence_insert,
    "SequenceErase": _sequence_erase,
    "SequenceAt": _sequence_at,
    "SequenceLength": _sequence_length,
    "ConcatFromSequence": _concat_from_sequence,
    "SplitToSequence": _split_to_sequence,
    # reductions
    "ReduceMean": _REDUCE_MEAN,
    "ReduceSum": _REDUCE_SUM,
    "ReduceMax": _REDUCE_MAX,
    "ReduceMin": _REDUCE_MIN,
    "ReduceProd": _REDUCE_PROD,
    "ReduceL1": _REDUCE_L1,
    "ReduceL2": _REDUCE_L2,
    "ReduceSumSquare": _REDUCE_SUM_SQUARE,
    "ReduceLogSum": _REDUCE_LOG_SUM,
    "ReduceLogSumExp": _REDUCE_LOG_SUM_EXP,
    # pooling
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": _global_average_pool,
    "GlobalMaxPool": _global_max_pool,
    # normalisation and dense (Gemm / MatMul with a weight initializer become layers instead)
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm,
    "LayerNormalization": _layer_norm,
    "GroupNormalization": _group_norm,
    "LpNormalization": _lp_norm,
    "MeanVarianceNormalization": _mean_variance_norm,
    "Gemm": _gemm,
    "MatMul": _matmul,
    # recurrent layers
    "LSTM": lstm,
    "GRU": gru,
    "RNN": rnn,
    # sampling
    "AffineGrid": _affine_grid,
    "GridSample": _grid_sample,
}
