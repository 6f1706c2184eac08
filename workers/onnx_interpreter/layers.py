"""The ONNX nodes that carry weights, as real torch layers users can hook by name.

A Conv / ConvTranspose whose weight is an initializer becomes an nn.ConvNd / nn.ConvTransposeNd
(subclassed under the same class name, only to accept ONNX's asymmetric and automatic padding, so
that type names read as in torch), a Gemm / MatMul with an
initializer weight becomes an nn.Linear, so that analyses see the same module types (and the
same `weight`) as they would on the PyTorch original. A Conv whose weight is computed inside the
graph (a 3TConv layer builds its kernel with AffineGrid/GridSample) becomes a `ComputedConv`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workers.onnx_interpreter.padding import auto_pads, pad_pairs, split_pads

Tensor = torch.Tensor


class _OnnxPadding:
    """Pads the input explicitly when ONNX asks for padding torch's symmetric `padding` cannot express."""

    onnx_auto_pad: str = "NOTSET"
    onnx_pads: tuple[list[int], list[int]] | None = None

    def _pre_pad(self, x: Tensor) -> Tensor:
        if self.onnx_auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            k = list(self.kernel_size)  # type: ignore[attr-defined]
            begin, end = auto_pads(list(x.shape[2:]), k, list(self.stride), list(self.dilation), self.onnx_auto_pad)  # type: ignore[attr-defined]
            return F.pad(x, pad_pairs(begin, end))
        if self.onnx_pads is not None:
            return F.pad(x, pad_pairs(*self.onnx_pads))
        return x


class Conv1d(_OnnxPadding, nn.Conv1d):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self._pre_pad(x))


class Conv2d(_OnnxPadding, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self._pre_pad(x))


class Conv3d(_OnnxPadding, nn.Conv3d):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self._pre_pad(x))


_CONV = {1: Conv1d, 2: Conv2d, 3: Conv3d}
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _geometry(attrs: dict[str, Any], rank: int) -> tuple[list[int], list[int], int, str, list[int], list[int]]:
    strides = [int(s) for s in attrs.get("strides", [1] * rank)]
    dilations = [int(d) for d in attrs.get("dilations", [1] * rank)]
    group = int(attrs.get("group", 1))
    auto_pad = str(attrs.get("auto_pad", "NOTSET"))
    begin, end = split_pads(attrs.get("pads"), rank)
    if auto_pad == "VALID":
        begin, end = [0] * rank, [0] * rank
    return strides, dilations, group, auto_pad, begin, end


def _hold(layer: nn.Module, weight: Tensor, bias: Tensor | None) -> None:
    """Put the ONNX tensors in place of the `meta` parameters the layer was built with (no copy, no init)."""
    layer.weight = nn.Parameter(weight)
    if bias is not None:
        layer.bias = nn.Parameter(bias)


def _check_rank(rank: int, op: str) -> None:
    if rank not in (1, 2, 3):
        raise ValueError(f"{op} with {rank} spatial axes is not supported (1 to 3 are)")


def make_conv(weight: Tensor, bias: Tensor | None, attrs: dict[str, Any]) -> nn.Module:
    """nn.Conv{1,2,3}d holding `weight` (C_out, C_in/groups, k...) as its Parameter."""
    rank = weight.dim() - 2
    _check_rank(rank, "Conv")
    strides, dilations, group, auto_pad, begin, end = _geometry(attrs, rank)
    symmetric = auto_pad in ("NOTSET", "VALID") and begin == end
    conv = _CONV[rank](
        in_channels=int(weight.shape[1]) * group,
        out_channels=int(weight.shape[0]),
        kernel_size=tuple(int(k) for k in weight.shape[2:]),
        stride=tuple(strides),
        padding=tuple(begin) if symmetric else 0,
        dilation=tuple(dilations),
        groups=group,
        bias=bias is not None,
        device="meta",
    )
    _hold(conv, weight, bias)
    conv.onnx_auto_pad = auto_pad if auto_pad.startswith("SAME") else "NOTSET"
    conv.onnx_pads = None if symmetric or auto_pad.startswith("SAME") else (begin, end)
    return conv


class _OnnxTransposePadding:
    """ONNX ConvTranspose: full transposed convolution, then output_padding added and pads cropped."""

    onnx_attrs: dict[str, Any]

    def _onnx_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        rank = x.dim() - 2
        strides, dilations, group, auto_pad, begin, end = _geometry(self.onnx_attrs, rank)
        out_pad = [int(p) for p in self.onnx_attrs.get("output_padding", [0] * rank)]
        kernel = list(weight.shape[2:])
        output_shape = self.onnx_attrs.get("output_shape")
        if output_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            output_shape = [int(s) * st for s, st in zip(x.shape[2:], strides)]
        if output_shape is not None:
            output_shape = [int(v) for v in output_shape][-rank:]
            begin, end = [], []
            for size, s, k, d, op, want in zip(x.shape[2:], strides, kernel, dilations, out_pad, output_shape):
                total = s * (int(size) - 1) + op + (k - 1) * d + 1 - want
                small, large = total // 2, total - total // 2
                upper = auto_pad == "SAME_UPPER"
                begin.append(small if upper else large)
                end.append(large if upper else small)
        y = _CONV_T_FN[rank](x, weight, None, tuple(strides), 0, 0, group, tuple(dilations))
        y = F.pad(y, pad_pairs([-b for b in begin], [op - e for op, e in zip(out_pad, end)]))
        if bias is not None:
            y = y + bias.view(1, -1, *([1] * rank))
        return y


class ConvTranspose1d(_OnnxTransposePadding, nn.ConvTranspose1d):
    def forward(self, x: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        return self._onnx_forward(x, self.weight, self.bias)


class ConvTranspose2d(_OnnxTransposePadding, nn.ConvTranspose2d):
    def forward(self, x: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        return self._onnx_forward(x, self.weight, self.bias)


class ConvTranspose3d(_OnnxTransposePadding, nn.ConvTranspose3d):
    def forward(self, x: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        return self._onnx_forward(x, self.weight, self.bias)


_CONV_T = {1: ConvTranspose1d, 2: ConvTranspose2d, 3: ConvTranspose3d}


def make_conv_transpose(weight: Tensor, bias: Tensor | None, attrs: dict[str, Any]) -> nn.Module:
    """nn.ConvTranspose{1,2,3}d holding `weight` (C_in, C_out/groups, k...)."""
    rank = weight.dim() - 2
    _check_rank(rank, "ConvTranspose")
    strides, dilations, group, _, _, _ = _geometry(attrs, rank)
    conv = _CONV_T[rank](
        in_channels=int(weight.shape[0]),
        out_channels=int(weight.shape[1]) * group,
        kernel_size=tuple(int(k) for k in weight.shape[2:]),
        stride=tuple(strides),
        dilation=tuple(dilations),
        groups=group,
        bias=bias is not None,
        device="meta",
    )
    _hold(conv, weight, bias)
    conv.onnx_attrs = dict(attrs)
    return conv


def make_linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """nn.Linear holding `weight` (out, in), the layout torch uses (ONNX's Gemm B with transB=1)."""
    linear = nn.Linear(int(weight.shape[1]), int(weight.shape[0]), bias=bias is not None, device="meta")
    _hold(linear, weight, bias)
    return linear


class ComputedConv(_OnnxPadding, nn.Module):
    """A Conv whose weight is an input computed by the graph (e.g. a 3TConv kernel built from its parameters).

    `kind` says what the weight was built from ("TConv3d" when from a `first_weight` initializer);
    `weight` is the kernel of the latest forward pass (None before the first), so code that reads a
    layer's weight sees what was applied. The rank comes from the weight when the graph does not say.
    """

    def __init__(self, attrs: dict[str, Any], kind: str, rank: int | None) -> None:
        super().__init__()
        self.onnx_attrs = dict(attrs)
        self.kind = kind
        self.rank: int | None = None
        self._last_weight: Tensor | None = None
        if rank is not None:
            self._set_rank(rank)

    def _set_rank(self, rank: int) -> None:
        _check_rank(rank, "Conv")
        strides, dilations, group, auto_pad, begin, end = _geometry(self.onnx_attrs, rank)
        self.rank = rank
        self.stride = tuple(strides)
        self.dilation = tuple(dilations)
        self.groups = group
        self.kernel_size: tuple[int, ...] = tuple(int(k) for k in self.onnx_attrs.get("kernel_shape", ()))
        self.onnx_auto_pad = auto_pad if auto_pad.startswith("SAME") else "NOTSET"
        self.onnx_pads = None if self.onnx_auto_pad != "NOTSET" else (begin, end)
        if self.kind == "Conv":
            self.kind = f"Conv{rank}d"

    @property
    def weight(self) -> Tensor | None:
        return self._last_weight

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if self.rank is None:
            self._set_rank(weight.dim() - 2)
        self._last_weight = weight.detach()
        if not self.kernel_size:
            self.kernel_size = tuple(int(k) for k in weight.shape[2:])
        return _CONV_FN[self.rank](self._pre_pad(x), weight, bias, self.stride, 0, self.dilation, self.groups)  # type: ignore[index]

    def extra_repr(self) -> str:
        return f"kind={self.kind}, rank={self.rank}"
