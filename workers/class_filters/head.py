"""The classifier head: the last affine layer the forward pass runs, how its input is laid out, and what the
model makes of its output.

The heads users have, all read the same way:
- torchvision's nn.Linear on pooled (N, D) features;
- pytorchvideo's ResNetBasicHead: a Linear applied channels-last to (N, T, H, W, D) between two permutes,
  its outputs averaged over (T, H, W) by `output_pool` (X3D's head puts a Softmax before that average);
- torchvision's S3D: a 1 × 1 × 1 Conv3d on (N, D, T, H, W), then a mean over (T, H, W).

In each, the logits are an affine map of the mean of the head's input over its positions: z = W·ā + b, so the
split z_c = Σ_i w[c,i]·ā_i + b_c is exact. W and b are read by probing the head module itself (whatever it
stores: a transposed ONNX Gemm, an unflattened export), and checked on every batch.

What the model returns after the head decides which logits are attributed (`source`):
- "model_output": the model returns the head's logits, up to a constant per class added after it (an ONNX
  MatMul whose bias is a separate Add);
- "pre_softmax" / "pre_log_softmax": the model returns softmax(z) or log_softmax(z); z, the logits before it,
  are attributed, never the probabilities;
- "head_output": the model transforms the head's output some other way; the head's own output is attributed
  (only when the head sees one position, so that its output is the logits of the whole input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers.errors import ModelUnusable

LINEAR = "linear"
POINTWISE_CONV = "pointwise_conv"
CHANNELS_LAST = "channels_last"
CHANNELS_FIRST = "channels_first"

MODEL_OUTPUT = "model_output"
PRE_SOFTMAX = "pre_softmax"
PRE_LOG_SOFTMAX = "pre_log_softmax"
HEAD_OUTPUT = "head_output"

# Relative tolerance of "equal" between float32 network outputs.
RELATIVE_TOLERANCE = 1e-4
# Probabilities below this are left out when the logits are read back from a softmax (log loses them).
_SMALLEST_PROBABILITY = 1e-30


def is_linear(module: nn.Module) -> bool:
    """nn.Linear, or anything with a 2-D weight (torch.export unflattened modules, ONNX Gemm / MatMul)."""
    if isinstance(module, nn.Linear):
        return True
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2


def is_pointwise_conv(module: nn.Module) -> bool:
    """A convolution whose kernel is 1 in every spatial axis, ungrouped and not transposed (S3D's classifier)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 3 or any(int(s) != 1 for s in weight.shape[2:]):
        return False
    return not getattr(module, "transposed", False) and int(getattr(module, "groups", 1)) == 1


def kind_of(module: nn.Module) -> str | None:
    if is_linear(module):
        return LINEAR
    if is_pointwise_conv(module):
        return POINTWISE_CONV
    return None


@dataclass(frozen=True)
class Head:
    """The last affine layer: `kind` says where its features sit (a Linear's last axis, a conv's axis 1)."""

    name: str
    module: nn.Module
    kind: str

    @property
    def layout(self) -> str:
        return CHANNELS_LAST if self.kind == LINEAR else CHANNELS_FIRST

    def pooled(self, t: torch.Tensor) -> torch.Tensor:
        """(N, D): the input (or output) averaged over its positions, whichever axis holds the features."""
        if t.dim() <= 2:
            return t
        axes = tuple(range(1, t.dim() - 1)) if self.kind == LINEAR else tuple(range(2, t.dim()))
        return t.mean(dim=axes)

    def positions(self, t: torch.Tensor) -> int:
        """How many positions the head's input has (1 for pooled features)."""
        if t.dim() <= 2:
            return 1
        spatial = t.shape[1:-1] if self.kind == LINEAR else t.shape[2:]
        return int(math.prod(int(s) for s in spatial))

    def describe(self, head_input: torch.Tensor) -> dict[str, Any]:
        return {"module": self.name, "kind": self.kind, "layout": self.layout, "positions": self.positions(head_input)}


def find_head(module: nn.Module, probe: torch.Tensor) -> tuple[str, nn.Module] | None:
    """The Linear-like or pointwise-conv module that runs LAST in a forward pass on `probe` (execution order,
    not registration order, so a model that registers `fc` before its convolutions is still read right)."""
    order: list[str] = []
    handles = []
    for name, sub in module.named_modules():
        if name and kind_of(sub) is not None:
            handles.append(sub.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name)))
    try:
        with torch.no_grad():
            module(probe)
    finally:
        for handle in handles:
            handle.remove()
    if not order:
        return None
    modules = dict(module.named_modules())
    return order[-1], modules[order[-1]]


def head_of(module: nn.Module, probe: torch.Tensor) -> Head | None:
    found = find_head(module, probe)
    if found is None:
        return None
    kind = kind_of(found[1])
    assert kind is not None
    return Head(found[0], found[1], kind)


def affine_map(head: Head, head_input: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(W (C, D), b (C,)) of the head read by probing it with 0 and the unit vectors laid out like its real
    input (rank and feature axis), or None when it does not take `width` features or is not affine."""
    device, dtype = head_input.device, head_input.dtype
    rows = torch.cat([torch.zeros(1, width, device=device, dtype=dtype), torch.eye(width, device=device, dtype=dtype)])
    extra = max(head_input.dim() - 2, 0)
    if head.kind == LINEAR:
        probe = rows.reshape(width + 1, *([1] * extra), width)
    else:
        probe = rows.reshape(width + 1, width, *([1] * extra))
    try:
        with torch.no_grad():
            out = first_tensor(head.module(probe))
    except (RuntimeError, ValueError, ModelUnusable):
        return None
    out = head.pooled(out)
    if out.dim() != 2 or out.shape[0] != width + 1:
        return None
    bias = out[0]
    return (out[1:] - bias).T.contiguous(), bias.clone()


def reproduces(features: torch.Tensor, head_output: torch.Tensor | None, weight: torch.Tensor | None, bias: torch.Tensor | None) -> bool:
    """Whether W·features + b is the head's (pooled) output: then the split of the logits is exact."""
    if head_output is None or weight is None or bias is None or features.dim() != 2 or features.shape[1] != weight.shape[1]:
        return False
    predicted = features @ weight.T + bias
    if predicted.shape != head_output.shape:
        return False
    return _close(predicted, head_output)


@dataclass(frozen=True)
class Logits:
    """How the attributed logits follow from the head's pooled output z: logits = z + shift; `source` says what
    the model returns (see the module doc). shift is None when the logits are the model's own output (no head)."""

    source: str
    shift: torch.Tensor | None = None

    def of(self, head_output: torch.Tensor | None, model_output: torch.Tensor) -> torch.Tensor:
        if self.shift is None or head_output is None:
            return model_output
        return head_output + self.shift.to(head_output.dtype)

    def explains(self, logits: torch.Tensor, model_output: torch.Tensor) -> bool:
        """Whether the model's output still follows from these logits as found on the first batch."""
        if self.source == MODEL_OUTPUT:
            return _close(logits, model_output)
        if self.source == PRE_SOFTMAX:
            return _close(torch.softmax(logits, dim=1), model_output, absolute=1e-6)
        if self.source == PRE_LOG_SOFTMAX:
            return _close(torch.log_softmax(logits, dim=1), model_output)
        return True

    def describe(self) -> str:
        return self.source


def logits_relation(head_output: torch.Tensor, model_output: torch.Tensor, positions: int) -> Logits:
    """What the model's output is in terms of the head's pooled output z (N, C): z + β, softmax(z + β),
    log_softmax(z + β), or something else. β (C,) is a constant per class added after the head."""
    z, out = head_output.detach(), model_output.detach()
    if out.dim() != 2 or out.shape != z.shape:
        return _other(z, positions)
    difference = out - z
    shift = difference.mean(dim=0)
    if _close(z + shift, out):
        return Logits(MODEL_OUTPUT, shift)
    rows = out.sum(dim=1)
    if bool((out >= 0).all()) and bool(((rows - 1).abs() <= 1e-3).all()) and bool((out > _SMALLEST_PROBABILITY).all()):
        shift = _centred_shift(torch.log(out.double()) - z.double()).to(z.dtype)
        if _close(torch.softmax(z + shift, dim=1), out, absolute=1e-6):
            return Logits(PRE_SOFTMAX, shift)
    if bool((out <= 1e-6).all()) and bool((torch.logsumexp(out.double(), dim=1).abs() <= 1e-3).all()):
        shift = _centred_shift(out.double() - z.double()).to(z.dtype)
        if _close(torch.log_softmax(z + shift, dim=1), out):
            return Logits(PRE_LOG_SOFTMAX, shift)
    return _other(z, positions)


def _other(z: torch.Tensor, positions: int) -> Logits:
    if positions > 1:
        raise ModelUnusable(
            f"the head sees {positions} positions and the model's output is neither the mean of its outputs over them "
            "nor their softmax: class_filters cannot tell which logits decide; give inputs of the size the head's "
            "pooling covers, or name a layer",
            reason="HEAD_OUTPUT_NOT_LOGITS",
        )
    return Logits(HEAD_OUTPUT, torch.zeros(z.shape[1], dtype=z.dtype, device=z.device))


def _centred_shift(g: torch.Tensor) -> torch.Tensor:
    """β from g[i, c] = β_c − s_i (a per-sample constant s_i): the mean over samples of g centred per row."""
    return (g - g.mean(dim=1, keepdim=True)).mean(dim=0)


def _close(a: torch.Tensor, b: torch.Tensor, absolute: float = 0.0) -> bool:
    scale = float(torch.maximum(a.abs().max(), b.abs().max())) + 1e-6 if a.numel() else 1.0
    return bool((a - b).abs().max() <= RELATIVE_TOLERANCE * scale + absolute) if a.numel() else True


def first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise ModelUnusable(f"expected a tensor, got {type(value).__name__}", reason="LAYER_OUTPUT_NOT_TENSOR")
