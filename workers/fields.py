"""Receptive fields of every layer from one forward pass: each activation's geometry, traced op by op.

describe used to measure each layer's field with a gradient probe of its own (a forward and a backward
pass per layer: minutes on a full-size video network). Here one forward pass runs under a dispatch mode
that sees every aten op the network runs, whatever the format (an eager module, a torch.export program,
the ONNX interpreter, TorchScript), and carries along, for every tensor made from the input and for each
input axis (T, H, W), the interval of that axis each of its units sees: two integer arrays `lo`, `hi`
that broadcast to the tensor's shape (a CNN's vary along one dim only, so they stay tiny).

Each op maps them the way it maps its values: a convolution or pool takes, for each output unit, the
union over its window (padding sees nothing; channels are united); elementwise ops unite their inputs'
(with torch's broadcasting); reductions, softmax and normalisations unite along their dims; matrix
products along the summed dim; shape ops (view, permute, slice, index_select, cat, roll, ...) are applied
to the arrays themselves. An op with no rule here loses the geometry (None), and the layers after it are
measured by the gradient probe instead (workers.inventory).

What this computes is the bounding box of the gradient probe's support with nothing masked: a ReLU or a
max-pool that is off for every random input, or a kernel of exact zeros, narrows the probe's figure but
not this one (the layer can still see that far).
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

_NONE = np.iinfo(np.int64).max // 4  # lo of a unit that sees nothing of the axis (its hi is -_NONE)


@dataclass(frozen=True, eq=False)
class Span:
    """For one input axis: the unit at each index of a tensor sees input indices lo[index] .. hi[index] (both
    arrays broadcast to the tensor's shape and have its number of dims)."""

    lo: np.ndarray
    hi: np.ndarray

    def map(self, fn: Callable[[np.ndarray, bool], np.ndarray]) -> "Span":
        """fn(array, is_lo) applied to both bounds, then size-1 wherever it does not vary."""
        return Span(_compact(fn(self.lo, True)), _compact(fn(self.hi, False)))


Geometry = tuple[Span, ...]  # one Span per input axis
Lookup = Callable[[Any], Any]
_ABSENT = object()  # a tensor not made from the input (a weight, a constant)


class Tracer(TorchDispatchMode):
    """Inside `with Tracer(x, dims):`, every tensor the network derives from `x` gets its geometry; `dims` are
    x's dims of the input axes (2, 3, 4 for N, C, T, H, W)."""

    def __init__(self, x: torch.Tensor, dims: Sequence[int]) -> None:
        super().__init__()
        self._known: dict[int, tuple[weakref.ref[torch.Tensor], Geometry | None]] = {}
        spans = []
        for d in dims:
            shape = [1] * x.dim()
            shape[d] = int(x.shape[d])
            index = np.arange(x.shape[d], dtype=np.int64).reshape(shape)
            spans.append(Span(index, index))
        self._set(x, tuple(spans))

    def field(self, out: torch.Tensor, full: Sequence[int]) -> list[int] | None:
        """The extent (per input axis, clipped to the input) that the centre unit of `out` sees, united over the
        batch and channels (out[:, :, centre...]); None if the trace lost the geometry on the way."""
        geometry = self._get(out)
        if not isinstance(geometry, tuple):
            return None
        extents = []
        for span, size in zip(geometry, full):
            first = max(0, int(np.min(_centre(span.lo, out))))
            last = min(int(size) - 1, int(np.max(_centre(span.hi, out))))
            extents.append(max(0, last - first + 1))
        return extents

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in _FACTORIES or name.endswith("_like") or name.startswith("new_"):
            return out  # shaped like a derived tensor (zeros_like), made of none of its values
        geometries = [g for g in (self._get(t) for t in _tensors(args, kwargs)) if g is not _ABSENT]
        if not geometries:
            return out
        outs = out if isinstance(out, (tuple, list)) else (out,)
        result: Any = None
        if all(g is not None for g in geometries):
            if all(span.lo.size == 1 and span.hi.size == 1 for g in geometries for span in g):
                # Every unit of every input sees the same intervals: so does every unit of every output.
                result = [_uniform(geometries, t.dim()) if isinstance(t, torch.Tensor) else None for t in outs]
            else:
                try:
                    result = _rule(func, name, args, kwargs, out, self._get)
                except Exception:  # noqa: BLE001 - arguments the rule does not expect: the gradient probe measures it
                    result = None
        for i, tensor in enumerate(outs):
            if isinstance(tensor, torch.Tensor):
                geometry = result[i] if isinstance(result, list) else result
                self._set(tensor, geometry if geometry is None or _fits(geometry, tensor) else None)
        return out

    def _set(self, t: torch.Tensor, geometry: Geometry | None) -> None:
        self._known[id(t)] = (weakref.ref(t), geometry)

    def _get(self, t: Any) -> Any:
        entry = self._known.get(id(t))
        if entry is None or entry[0]() is not t:
            return _ABSENT
        return entry[1]


def _fits(geometry: Geometry, t: torch.Tensor) -> bool:
    """Whether every bound broadcasts to `t` (a rule's slip loses the geometry rather than giving a wrong field)."""
    return all(
        a.ndim == t.dim() and all(n in (1, m) for n, m in zip(a.shape, t.shape)) for span in geometry for a in (span.lo, span.hi)
    )


def _centre(a: np.ndarray, out: torch.Tensor) -> np.ndarray:
    """The bounds of out[:, :, c2, c3, ...] (every batch row and channel) with c the middle of each later dim."""
    return a[tuple(slice(None) if d < 2 else (0 if a.shape[d] == 1 else int(out.shape[d]) // 2) for d in range(a.ndim))]


def _tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[torch.Tensor]:
    """The tensors among an op's arguments (aten ops take them bare or in one list)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)) and value and not isinstance(value[0], (int, float)):  # not sizes
            yield from (v for v in value if isinstance(v, torch.Tensor))


def _uniform(geometries: list[Geometry], ndim: int) -> Geometry:
    shape = (1,) * ndim
    return tuple(
        Span(np.full(shape, min(int(g[a].lo.min()) for g in geometries), dtype=np.int64),
             np.full(shape, max(int(g[a].hi.max()) for g in geometries), dtype=np.int64))
        for a in range(len(geometries[0]))
    )


def _compact(a: np.ndarray) -> np.ndarray:
    """The same bounds with every dim along which they do not vary cut to size 1."""
    for d in range(a.ndim):
        if a.shape[d] > 1:
            first = a.take([0], axis=d)
            if np.array_equal(np.broadcast_to(first, a.shape), a):
                a = first
    return np.ascontiguousarray(a)


# ---------------------------------------------------------------- op rules


def _rule(func: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Any:
    if name.endswith("_") and not name.endswith("__") and name != "copy_":
        name = name[:-1]  # in place: the geometry of the out-of-place op, kept by the same tensor
    rule = _RULES.get(name)
    if rule is None and "scaled_dot_product" in name:
        rule = _attention
    if rule is not None:
        return rule(args, kwargs, out, get)
    if torch.Tag.pointwise in func.tags or name in _SAME or _pointwise(name):
        main = out[0] if isinstance(out, (tuple, list)) else out
        return _union(list(_tensors(args, kwargs)), main, get)
    return None


@functools.lru_cache(maxsize=None)
def _pointwise(name: str) -> bool:
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return False
    overload = getattr(packet, "default", None) or next((getattr(packet, o) for o in packet.overloads()), None)
    return overload is not None and torch.Tag.pointwise in overload.tags


def _geometry(t: Any, get: Lookup) -> Geometry:
    geometry = get(t)
    if not isinstance(geometry, tuple):
        raise ValueError("no geometry")
    return geometry


def _union(tensors: list[torch.Tensor], out: torch.Tensor, get: Lookup) -> Geometry | None:
    """Elementwise over broadcast inputs: each output unit sees what its input units see, united."""
    parts = []
    for t in tensors:
        geometry = get(t)
        if geometry is None:
            return None
        if geometry is not _ABSENT:
            parts.append(tuple(Span(_lift(s.lo, out.dim()), _lift(s.hi, out.dim())) for s in geometry))
    if not parts:
        return None
    return tuple(_unite([p[a] for p in parts]) for a in range(len(parts[0])))


def _lift(a: np.ndarray, ndim: int) -> np.ndarray:
    return a.reshape((1,) * (ndim - a.ndim) + a.shape) if a.ndim < ndim else a


def _unite(spans: list[Span]) -> Span:
    lo, hi = spans[0].lo, spans[0].hi
    for span in spans[1:]:
        lo, hi = np.minimum(lo, span.lo), np.maximum(hi, span.hi)
    return Span(_compact(lo), _compact(hi))


def _reduce(a: np.ndarray, dims: Sequence[int], is_lo: bool, keepdims: bool = True) -> np.ndarray:
    dims = tuple(sorted({d % a.ndim for d in dims})) if a.ndim else ()
    return (np.min if is_lo else np.max)(a, axis=dims, keepdims=keepdims)


def _each(values: Any, rank: int, default: int) -> list[int]:
    if values is None or (isinstance(values, (list, tuple)) and len(values) == 0):
        return [default] * rank
    if isinstance(values, int):
        return [values] * rank
    values = [int(v) for v in values]
    return values * rank if len(values) == 1 else values


def _window(a: np.ndarray, is_lo: bool, d: int, m: int, k: int, s: int, p: int, dil: int) -> np.ndarray:
    """Along dim d: output unit o sees the union over input units o*s - p + j*dil (j < k) inside the input."""
    n = a.shape[d]
    if n == 1:
        return a  # every position sees the same interval
    moved = np.moveaxis(a, d, -1)
    idx = np.arange(m)[:, None] * s - p + np.arange(k)[None, :] * dil
    valid = (idx >= 0) & (idx < n)
    gathered = moved[..., np.clip(idx, 0, n - 1)]
    if is_lo:
        reduced = np.where(valid, gathered, _NONE).min(axis=-1)
    else:
        reduced = np.where(valid, gathered, -_NONE).max(axis=-1)
    return np.moveaxis(reduced, -1, d)


def _transposed_window(a: np.ndarray, is_lo: bool, d: int, m: int, k: int, s: int, p: int, dil: int) -> np.ndarray:
    """Along dim d of a transposed convolution: input unit i reaches output units i*s - p + j*dil (j < k)."""
    n = a.shape[d]
    moved = np.moveaxis(a, d, -1)
    result = np.full(moved.shape[:-1] + (m,), _NONE if is_lo else -_NONE, dtype=np.int64)
    for j in range(k):
        o = np.arange(n) * s - p + j * dil
        keep = (o >= 0) & (o < m)
        combine = np.minimum if is_lo else np.maximum
        result[..., o[keep]] = combine(result[..., o[keep]], moved[..., keep])
    return np.moveaxis(result, -1, d)


def _slide(x: torch.Tensor, out: torch.Tensor, geometry: Geometry, kernel: Sequence[int], stride: Sequence[int],
           padding: Sequence[int], dilation: Sequence[int], mix_channels: bool, transposed: bool = False) -> Geometry:
    """A window op over the last len(kernel) dims of x (a convolution also unites its input channels)."""
    rank = len(kernel)
    first = x.dim() - rank

    def fn(a: np.ndarray, is_lo: bool) -> np.ndarray:
        if mix_channels and x.dim() > rank + 1:
            a = _reduce(a, [first - 1], is_lo)
        for r in range(rank):
            d = first + r
            if transposed:
                a = np.broadcast_to(a, a.shape[:d] + (int(x.shape[d]),) + a.shape[d + 1 :])
                a = _transposed_window(a, is_lo, d, int(out.shape[d]), int(kernel[r]), int(stride[r]), int(padding[r]), int(dilation[r]))
            else:
                a = _window(a, is_lo, d, int(out.shape[d]), int(kernel[r]), int(stride[r]), int(padding[r]), int(dilation[r]))
        return a

    return tuple(span.map(fn) for span in geometry)


def _convolution(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry | None:
    x, weight = args[0], args[1]
    if get(weight) is not _ABSENT or (len(args) > 2 and isinstance(args[2], torch.Tensor) and get(args[2]) is not _ABSENT):
        return None  # a kernel computed from the input
    rank = weight.dim() - 2
    transposed = bool(args[6]) if len(args) > 6 else False
    if transposed and any(int(p) for p in _each(args[7] if len(args) > 7 else 0, rank, 0)):
        return None  # output_padding: units past the last tap, not followed
    return _slide(x, out, _geometry(x, get), list(weight.shape[2:]), _each(args[3], rank, 1), _each(args[4], rank, 0),
                  _each(args[5], rank, 1), mix_channels=True, transposed=transposed)


def _pool(rank: int, dilated: bool) -> Callable[..., Any]:
    def rule(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Any:
        x = args[0]
        main = out[0] if isinstance(out, (tuple, list)) else out
        kernel = _each(args[1], rank, 1)
        stride = [s or k for s, k in zip(_each(args[2] if len(args) > 2 else None, rank, 0), kernel)]
        padding = _each(args[3] if len(args) > 3 else 0, rank, 0)
        dilation = _each(args[4] if dilated and len(args) > 4 else 1, rank, 1)
        result = _slide(x, main, _geometry(x, get), kernel, stride, padding, dilation, mix_channels=False)
        return [result, None] if isinstance(out, (tuple, list)) else result

    return rule


def _adaptive(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Any:
    """Adaptive pools: output unit o pools input units floor(o*n/m) .. ceil((o+1)*n/m) - 1 along each pooled dim."""
    x = args[0]
    main = out[0] if isinstance(out, (tuple, list)) else out
    rank = len(args[1])

    def fn(a: np.ndarray, is_lo: bool) -> np.ndarray:
        for d in range(x.dim() - rank, x.dim()):
            n, m = a.shape[d], int(main.shape[d])
            if n == 1:
                continue
            pieces = [_reduce(np.take(a, range((o * n) // m, -((-(o + 1) * n) // m)), axis=d), [d], is_lo) for o in range(m)]
            a = np.concatenate(pieces, axis=d)
        return a

    result = tuple(span.map(fn) for span in _geometry(x, get))
    return [result, None] if isinstance(out, (tuple, list)) else result


def _reduction(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Any:
    x = args[0]
    if len(args) > 1 and isinstance(args[1], torch.Tensor):  # max(a, b), min(a, b): elementwise
        return _union([x, args[1]], out, get)
    dims: Any = args[1] if len(args) > 1 and not isinstance(args[1], bool) else kwargs.get("dim")
    keepdim = bool(kwargs.get("keepdim", False))
    for a in args[2:]:
        if isinstance(a, bool):
            keepdim = a
            break
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        reduced = list(range(x.dim()))
    else:
        reduced = [int(dims)] if isinstance(dims, int) else [int(d) for d in dims]
    result = tuple(span.map(lambda a, is_lo: _reduce(a, reduced, is_lo, keepdim)) for span in _geometry(x, get))
    return [result] * len(out) if isinstance(out, (tuple, list)) else result


def _filled(geometry: Geometry, dims: Sequence[int]) -> Geometry:
    """Every unit sees the union along `dims`, which keep their size (softmax, a normalisation)."""
    return tuple(span.map(lambda a, is_lo: _reduce(a, dims, is_lo)) for span in geometry)


def _over_dim(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry:
    """softmax / log_softmax / cumsum along one dim: each unit sees the union along it."""
    return _filled(_geometry(args[0], get), [int(args[1])])


def _layer_norm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> list[Any]:
    x = args[0]
    return [_filled(_geometry(x, get), range(x.dim() - len(args[1]), x.dim())), None, None]


def _batch_norm(training_at: int | bool) -> Callable[..., Any]:
    """training_at: the argument that says whether batch statistics are used, or whether they always (never) are."""

    def rule(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Any:
        x = args[0]
        if any(get(a) is not _ABSENT for a in args[1:] if isinstance(a, torch.Tensor)):
            return None
        training = training_at if isinstance(training_at, bool) else len(args) > training_at and bool(args[training_at])
        geometry = _geometry(x, get)
        result = _filled(geometry, [d for d in range(x.dim()) if d != 1]) if training else geometry
        return [result] + [None] * (len(out) - 1) if isinstance(out, (tuple, list)) else result

    return rule


def _group_norm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> list[Any]:
    x = args[0]
    return [_filled(_geometry(x, get), range(1, x.dim())), None, None]


def _view(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry:
    x = args[0]
    shape = tuple(int(s) for s in x.shape)
    return tuple(span.map(lambda a, is_lo: np.broadcast_to(a, shape).reshape(tuple(out.shape))) for span in _geometry(x, get))


def _permute(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry:
    order = [int(d) % args[0].dim() for d in args[1]]
    return tuple(span.map(lambda a, is_lo: np.transpose(a, order)) for span in _geometry(args[0], get))


def _transpose(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry:
    x = args[0]
    if x.dim() < 2:
        return _geometry(x, get)
    a0, a1 = (int(args[1]), int(args[2])) if len(args) > 2 else (0, 1)
    return tuple(span.map(lambda a, is_lo: np.swapaxes(a, a0, a1)) for span in _geometry(x, get))


def _unsqueeze(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry:
    at = int(args[1]) % out.dim()
    return tuple(span.map(lambda a, is_lo: np.expand_dims(a, at)) for span in _geometry(args[0], get))


def _squeeze(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry:
    x = args[0]
    if len(args) > 1:
        asked = [args[1]] if isinstance(args[1], int) else list(args[1])
        gone = tuple(sorted({int(d) % x.dim() for d in asked if x.shape[int(d) % x.dim()] == 1}))
    else:
        gone = tuple(d for d in range(x.dim()) if x.shape[d] == 1)
    return tuple(span.map(lambda a, is_lo: np.squeeze(a, axis=gone) if gone else a) for span in _geometry(x, get))


def _expand(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry:
    return tuple(span.map(lambda a, is_lo: _lift(a, out.dim())) for span in _geometry(args[0], get))


def _along(a: np.ndarray, d: int, pick: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`pick` applied to the unit indices of dim d (a dim of size 1 is the same for every unit: kept)."""
    if a.shape[d] == 1:
        return a
    return np.take(a, pick(np.arange(a.shape[d])), axis=d)


def _slice(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry:
    x = args[0]
    d = int(args[1]) % x.dim() if len(args) > 1 else 0
    start = args[2] if len(args) > 2 else None
    end = args[3] if len(args) > 3 else None
    step = int(args[4]) if len(args) > 4 else 1
    return tuple(span.map(lambda a, is_lo: _along(a, d, lambda i: i[slice(start, end, step)])) for span in _geometry(x, get))


def _select(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry:
    x = args[0]
    d = int(args[1]) % x.dim()
    index = int(args[2]) % int(x.shape[d])
    return tuple(span.map(lambda a, is_lo: np.take(a, index if a.shape[d] > 1 else 0, axis=d)) for span in _geometry(x, get))


def _index_select(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry | None:
    x, index = args[0], args[2]
    if get(index) is not _ABSENT:
        return None
    d = int(args[1]) % x.dim()
    picks = index.detach().cpu().numpy().reshape(-1).astype(np.int64)
    return tuple(span.map(lambda a, is_lo: _along(a, d, lambda i: i[picks])) for span in _geometry(x, get))


def _roll(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry:
    x = args[0]
    shifts = [int(s) for s in (args[1] if isinstance(args[1], (list, tuple)) else [args[1]])]
    dims = [int(d) for d in (args[2] if len(args) > 2 and isinstance(args[2], (list, tuple)) else [args[2]] if len(args) > 2 else [])]
    if not dims:
        return _union([x], out, get) if all(span.lo.size == 1 for span in _geometry(x, get)) else None  # type: ignore[return-value]

    def fn(a: np.ndarray, is_lo: bool) -> np.ndarray:
        for shift, d in zip(shifts, dims):
            if a.shape[d % a.ndim] > 1:
                a = np.roll(a, shift, axis=d % a.ndim)
        return a

    return tuple(span.map(fn) for span in _geometry(x, get))


def _flip(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry:
    dims = tuple(int(d) % args[0].dim() for d in args[1])
    return tuple(span.map(lambda a, is_lo: np.flip(a, axis=dims)) for span in _geometry(args[0], get))


def _cat(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry | None:
    """Joined along `dim`: the units' intervals laid end to end (a constant's units see nothing)."""
    tensors = [t for t in args[0] if isinstance(t, torch.Tensor) and t.numel() > 0]
    d = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
    geometries = [get(t) for t in tensors]
    if any(g is None for g in geometries):
        return None
    axes = len(next(g for g in geometries if g is not _ABSENT))
    result = []
    for axis in range(axes):
        bounds = []
        for is_lo in (True, False):
            pieces = []
            for t, g in zip(tensors, geometries):
                shape = [1] * out.dim()
                shape[d] = int(t.shape[d])
                if g is _ABSENT:
                    pieces.append(np.full(shape, _NONE if is_lo else -_NONE, dtype=np.int64))
                else:
                    a = g[axis].lo if is_lo else g[axis].hi
                    pieces.append(a if a.shape[d] == t.shape[d] else np.broadcast_to(a, a.shape[:d] + (shape[d],) + a.shape[d + 1 :]))
            common = [max(p.shape[i] for p in pieces) if i != d else 0 for i in range(out.dim())]
            pieces = [np.broadcast_to(p, tuple(common[i] if i != d else p.shape[d] for i in range(out.dim()))) for p in pieces]
            bounds.append(_compact(np.concatenate(pieces, axis=d)))
        result.append(Span(bounds[0], bounds[1]))
    return tuple(result)


def _split(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> list[Geometry]:
    x = args[0]
    d = int(args[2] if len(args) > 2 else kwargs.get("dim", 0)) % x.dim()
    geometry, result, start = _geometry(x, get), [], 0
    for piece in out:
        size = int(piece.shape[d])
        result.append(tuple(span.map(lambda a, is_lo, s=start, e=start + size: _along(a, d, lambda i: i[s:e])) for span in geometry))
        start += size
    return result


def _unbind(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> list[Geometry]:
    x = args[0]
    d = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % x.dim()
    return [_select((x, d, i), {}, piece, get) for i, piece in enumerate(out)]


def _indices(indices: Sequence[Any], get: Lookup) -> tuple[Any, ...] | None:
    """torch's advanced indices as numpy's (None: a whole dim), or None when an index is computed from the input."""
    if any(i is not None and get(i) is not _ABSENT for i in indices):
        return None
    return tuple(slice(None) if i is None else i.detach().cpu().numpy() for i in indices)


def _index(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry | None:
    """x[indices] (gather with constant indices): the picked units' bounds, picked the same way."""
    x = args[0]
    index = _indices(args[1], get)
    if index is None:
        return None
    shape = tuple(int(s) for s in x.shape)
    return tuple(span.map(lambda a, is_lo: np.broadcast_to(a, shape)[index]) for span in _geometry(x, get))


def _index_put(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry | None:
    """x[indices] = values (+= with accumulate): those units see what the values' units see (as well, with accumulate)."""
    x, values = args[0], args[2]
    accumulate = bool(args[3]) if len(args) > 3 else bool(kwargs.get("accumulate", False))
    index = _indices(args[1], get)
    gx, gv = get(x), get(values)
    if index is None or gx is None or gv is None:
        return None
    axes = len(gx if gx is not _ABSENT else gv)
    shape = tuple(int(s) for s in x.shape)
    result = []
    for axis in range(axes):
        bounds = []
        for is_lo in (True, False):
            empty = _NONE if is_lo else -_NONE
            a = np.array(np.broadcast_to((gx[axis].lo if is_lo else gx[axis].hi), shape)) if gx is not _ABSENT else np.full(shape, empty, dtype=np.int64)
            v = (gv[axis].lo if is_lo else gv[axis].hi) if gv is not _ABSENT else np.full((1,) * values.dim(), empty, dtype=np.int64)
            v = np.broadcast_to(_lift(v, values.dim()), tuple(int(s) for s in values.shape))
            v = np.broadcast_to(v, a[index].shape)
            if accumulate:
                (np.minimum if is_lo else np.maximum).at(a, index, v)
            else:
                a[index] = v
            bounds.append(_compact(a))
        result.append(Span(bounds[0], bounds[1]))
    return tuple(result)


def _pad(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry:
    """Constant padding (pad lists the last dim first, before and after; negative crops): padding sees nothing."""
    x = args[0]
    pad = [int(p) for p in args[1]]

    def fn(a: np.ndarray, is_lo: bool) -> np.ndarray:
        for i in range(len(pad) // 2):
            d, before, after = x.dim() - 1 - i, pad[2 * i], pad[2 * i + 1]
            if before == 0 and after == 0:
                continue
            a = np.broadcast_to(a, a.shape[:d] + (int(x.shape[d]),) + a.shape[d + 1 :])
            a = np.take(a, range(max(0, -before), a.shape[d] - max(0, -after)), axis=d)
            widths = [(0, 0)] * a.ndim
            widths[d] = (max(0, before), max(0, after))
            a = np.pad(a, widths, constant_values=_NONE if is_lo else -_NONE)
        return a

    return tuple(span.map(fn) for span in _geometry(x, get))


def _matmul(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry | None:
    """mm / bmm (addmm, baddbmm add a term): (..., A, K) @ (..., K, M) -> (..., A, M), each unit the union over K."""
    bias, left, right = (args[0], args[1], args[2]) if len(args) > 2 and isinstance(args[2], torch.Tensor) else (None, args[0], args[1])
    parts: list[Geometry] = []
    for operand, summed in ((left, -1), (right, -2)):
        geometry = get(operand)
        if geometry is None:
            return None
        if geometry is not _ABSENT:
            parts.append(tuple(span.map(lambda a, is_lo, s=summed: _lift(_reduce(a, [s], is_lo), out.dim())) for span in geometry))
    if bias is not None and get(bias) is not _ABSENT:
        geometry = _union([bias], out, get)
        if geometry is None:
            return None
        parts.append(geometry)
    return tuple(_unite([p[a] for p in parts]) for a in range(len(parts[0])))


def _attention(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Any:
    """scaled_dot_product_attention(q, k, v, mask, ...) -> (..., L, Ev): unit l sees q[l] and every key and value."""
    q, k, v = args[0], args[1], args[2]
    main = out[0] if isinstance(out, (tuple, list)) else out
    parts: list[Geometry] = []
    for operand, summed in ((q, [-1]), (k, [-2, -1]), (v, [-2, -1])):
        geometry = get(operand)
        if geometry is None:
            return None
        if geometry is not _ABSENT:
            parts.append(tuple(span.map(lambda a, is_lo, s=summed: _reduce(a, s, is_lo)) for span in geometry))
    for extra in args[3:]:
        if isinstance(extra, torch.Tensor) and get(extra) is not _ABSENT:
            return None  # a mask computed from the input
    result = tuple(_unite([p[a] for p in parts]) for a in range(len(parts[0])))
    if any(s.lo.ndim != main.dim() for s in result):
        return None
    return [result] + [None] * (len(out) - 1) if isinstance(out, (tuple, list)) else result


def _copy_into(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, get: Lookup) -> Geometry | None:
    """dst.copy_(src): dst becomes src (broadcast)."""
    return _union([args[1]], out, get)


_FACTORIES = frozenset({"empty", "zeros", "ones", "full", "arange", "rand", "randn", "scalar_tensor", "empty_strided", "fill"})

_SAME = frozenset(
    {"_to_copy", "clone", "detach", "alias", "lift_fresh", "lift_fresh_copy", "native_dropout", "dropout", "hardswish",
     "hardsigmoid", "_prelu_kernel", "contiguous", "copy", "bernoulli"}
)

_RULES: dict[str, Callable[..., Any]] = {
    "convolution": _convolution,
    **{f"max_pool{n}d_with_indices": _pool(n, dilated=True) for n in (1, 2, 3)},
    **{f"max_pool{n}d": _pool(n, dilated=True) for n in (1, 2, 3)},
    **{f"avg_pool{n}d": _pool(n, dilated=False) for n in (1, 2, 3)},
    **{name: _adaptive for name in ("_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_avg_pool1d",
                                   "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d")},
    **{name: _reduction for name in ("mean", "sum", "amax", "amin", "max", "min", "var", "std", "var_mean", "std_mean",
                                    "logsumexp", "prod", "linalg_vector_norm")},
    "_softmax": _over_dim,
    "_log_softmax": _over_dim,
    "cumsum": _over_dim,
    "native_layer_norm": _layer_norm,
    "native_batch_norm": _batch_norm(training_at=5),
    "_native_batch_norm_legit_no_training": _batch_norm(training_at=False),
    "_native_batch_norm_legit": _batch_norm(training_at=True),
    "cudnn_batch_norm": _batch_norm(training_at=5),
    "miopen_batch_norm": _batch_norm(training_at=5),
    "native_group_norm": _group_norm,
    **{name: _view for name in ("view", "_unsafe_view", "reshape", "view_copy")},
    "permute": _permute,
    "transpose": _transpose,
    "t": _transpose,
    "unsqueeze": _unsqueeze,
    "squeeze": _squeeze,
    "expand": _expand,
    "slice": _slice,
    "select": _select,
    "index_select": _index_select,
    "roll": _roll,
    "flip": _flip,
    "cat": _cat,
    "split": _split,
    "split_with_sizes": _split,
    "unbind": _unbind,
    "constant_pad_nd": _pad,
    **{name: _matmul for name in ("mm", "addmm", "bmm", "baddbmm")},
    "copy_": _copy_into,
    "index": _index,
    "index_put": _index_put,
    "_unsafe_index": _index,
    "_unsafe_index_put": _index_put,
}

__all__ = ["Span", "Tracer"]
