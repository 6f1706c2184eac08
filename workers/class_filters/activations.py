"""One hooked, batched forward pass: each filter's activation per sample and its share of the logit.

Only per-sample vectors (N × D) are kept: every layer output is reduced over space and time by
mean inside the hook, so memory grows with samples × filters, never with the feature-map size.

Two attribution modes, decided by the network itself:
- exact logit split: the layer feeds the last Linear directly (the default layer is that Linear's
  input; a named layer qualifies when its space/time mean times the head's weights reproduces the
  head's output). Then z_c = Σ_i w[c,i]·a_i + b_c is an exact decomposition and no gradient is needed.
- gradient × activation otherwise: the hook swaps the layer output for a leaf tensor, one backward
  per batch gives ∂z_y/∂A for each sample's own class y, and Σ_over_positions (grad·A) is stored.
  (For a layer behind global pooling this reduces to the exact split.)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from workers.errors import DatasetUnusable, ModelUnusable
from workers.model import LoadedModel, frozen

EXACT = "exact_logit_split"
GRADIENT = "gradient_x_activation"

# Samples per forward pass: bounds activation memory to batch × the layer's largest map.
BATCH_SIZE = 64
# Samples of the first forward pass that finds the head and decides the attribution mode.
_PROBE_SAMPLES = 8

FractionFn = Callable[[float], None]


@dataclass
class LayerActivations:
    """What the analysis needs from the network, all per sample (rows follow the dataset order).

    features: (N, D) activations reduced by mean over space/time.
    contributions: (N, D) each sample's per-filter share of its OWN class logit.
    logits: (N, C) the full model's logits.
    head_weight, head_bias: (C, D), (C,) of the last Linear, set only for the exact split.
    mean_map: (D, *spatial) mean layer output over the fit samples, set only for gradient mode
        (mean ablation replaces a filter's map by it).
    """

    layer: str
    attribution: str
    features: np.ndarray
    contributions: np.ndarray
    logits: np.ndarray
    head_weight: np.ndarray | None = None
    head_bias: np.ndarray | None = None
    mean_map: torch.Tensor | None = None

    @property
    def num_filters(self) -> int:
        return int(self.features.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])

    @property
    def exact(self) -> bool:
        return self.attribution == EXACT


def is_linear(module: nn.Module) -> bool:
    """nn.Linear, or anything with a 2-D weight (torch.export unflattened modules, ONNX Gemm)."""
    if isinstance(module, nn.Linear):
        return True
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2


def find_head(module: nn.Module, probe: torch.Tensor) -> tuple[str, nn.Module] | None:
    """The Linear-like module that runs LAST in a forward pass on `probe` (execution order, not
    registration order, so a model that registers `fc` before its convolutions is still read right)."""
    order: list[str] = []
    handles = []
    for name, sub in module.named_modules():
        if name and is_linear(sub):
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


def output_width(model: LoadedModel, x: np.ndarray, device: torch.device | str = "cpu") -> int:
    """How many logits the model returns, from one sample (so label problems surface before the long pass)."""
    device = torch.device(device)
    module = model.require_module("class_filters").to(device)
    module.eval()
    _, probe = next(model_batches(model, x, np.arange(1), device))
    with torch.no_grad():
        out = _first_tensor(module(probe))
    if out.dim() != 2:
        raise ModelUnusable(f"the model returns shape {tuple(out.shape)}; class_filters needs logits (N, classes)", reason="OUTPUT_NOT_LOGITS")
    return int(out.shape[1])


def affine_map(head: nn.Module, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (C, D), b (C,)) of an affine module, read by probing it with 0 and the unit vectors.

    Works whatever the module stores (transposed Gemm weights, no bias, an unflattened graph).
    """
    probe = torch.cat([torch.zeros(1, width, device=device), torch.eye(width, device=device)])
    with torch.no_grad():
        out = _first_tensor(head(probe))
    if out.dim() != 2:
        raise ModelUnusable(f"the last Linear layer returns shape {tuple(out.shape)}; expected (N, classes)", reason="HEAD_NOT_2D")
    bias = out[0]
    return (out[1:] - bias).T.contiguous(), bias.clone()


def reduce_space_time(t: torch.Tensor) -> torch.Tensor:
    """(N, D, *spatial) -> (N, D) by mean; (N, D) unchanged."""
    return t.mean(dim=tuple(range(2, t.dim()))) if t.dim() > 2 else t


def model_batches(model: LoadedModel, x: np.ndarray, rows: np.ndarray, device: torch.device, batch_size: int = BATCH_SIZE) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(row indices, normalised input batch on `device`) over the given rows, in order."""
    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        raw = torch.as_tensor(np.ascontiguousarray(x[idx]), dtype=torch.float32, device=device)
        yield idx, model.input_spec.normalize(raw)


def collect(
    model: LoadedModel,
    x: np.ndarray,
    y: np.ndarray,
    fit_rows: np.ndarray,
    layer: str = "",
    device: torch.device | str = "cpu",
    batch_size: int = BATCH_SIZE,
    on_fraction: FractionFn | None = None,
    num_classes: int | None = None,
) -> LayerActivations:
    """Run the network once over every sample and keep what the analysis needs (see the module doc).

    layer: a module name; empty means the input of the last Linear layer.
    fit_rows: the samples whose mean layer output defines mean ablation.
    num_classes: when given, the logits must have exactly this many columns (checked before the pass).
    """
    device = torch.device(device)
    module = model.require_module("class_filters").to(device)
    module.eval()
    n = len(x)
    rows = np.arange(n)
    _, probe = next(model_batches(model, x, rows[:_PROBE_SAMPLES], device))
    head = find_head(module, probe)
    if not layer and head is None:
        raise ModelUnusable(
            "class_filters ranks the filters that feed the last Linear layer, and none ran in the forward pass; "
            "name a layer in the options instead",
            reason="NO_LINEAR_HEAD",
        )
    target = model.submodule(layer) if layer else head[1]
    layer_name = layer or f"{head[0]}:input"
    recorder = _Recorder(module, target, head[1] if head else None, read_input=not layer)
    fit_mask = np.zeros(n, dtype=bool)
    fit_mask[fit_rows] = True

    features: list[np.ndarray] = []
    contributions: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    map_sum: torch.Tensor | None = None
    with recorder, frozen(module):
        with torch.no_grad():
            probe_out = recorder.run(probe, as_leaf=False)
        probe_act, probe_head = recorder.activation(), recorder.head_output()
        with recorder.paused():
            affine = _head_affine(head[1], reduce_space_time(probe_act).shape[1], device) if head else None
        exact = affine is not None and _feeds_head(probe_act, probe_head, *affine)
        if not layer and not exact:
            raise ModelUnusable(
                f"the last Linear layer ({head[0]}) is not an affine map of its input; name a layer to use gradient×activation",
                reason="HEAD_NOT_AFFINE",
            )
        _check_outputs(probe_head if exact else probe_out, num_classes)
        for idx, xb in model_batches(model, x, rows, device, batch_size):
            yb = torch.as_tensor(y[idx], device=device)
            if exact:
                weight, bias = affine
                with torch.no_grad():
                    recorder.run(xb, as_leaf=False)
                a = reduce_space_time(recorder.activation())
                z = recorder.head_output()
                if z is None or not _feeds_head(a, z, weight, bias):
                    raise ModelUnusable(
                        f"the last Linear layer stopped being an affine map of the {layer_name} features on some samples",
                        reason="HEAD_NOT_AFFINE",
                    )
                _check_batch_labels(yb, z)
                contrib = a * weight[yb]
            else:
                a, contrib, z, act = _gradient_batch(recorder, xb, yb)
                batch_fit = torch.as_tensor(fit_mask[idx], device=device)
                if bool(batch_fit.any()):
                    part = act[batch_fit].sum(0)
                    map_sum = part if map_sum is None else map_sum + part
            features.append(a.double().cpu().numpy())
            contributions.append(contrib.double().cpu().numpy())
            logits.append(z.detach().double().cpu().numpy())
            if on_fraction is not None:
                on_fraction(float(idx[-1] + 1) / n)

    acts = LayerActivations(
        layer=layer_name,
        attribution=EXACT if exact else GRADIENT,
        features=np.concatenate(features),
        contributions=np.concatenate(contributions),
        logits=np.concatenate(logits),
    )
    if exact:
        acts.head_weight = affine[0].double().cpu().numpy()
        acts.head_bias = affine[1].double().cpu().numpy()
    else:
        acts.mean_map = map_sum / max(int(fit_mask.sum()), 1)
    return acts


def _head_affine(head: nn.Module, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The head's (W, b) when it takes `width` features, else None (the layer does not feed it)."""
    try:
        return affine_map(head, width, device)
    except (RuntimeError, ModelUnusable):
        return None


def _feeds_head(act: torch.Tensor, head_out: torch.Tensor | None, weight: torch.Tensor | None, bias: torch.Tensor | None) -> bool:
    """Whether the layer's space/time mean alone reproduces the head's output (then the split is exact)."""
    if head_out is None or weight is None or bias is None:
        return False
    a = reduce_space_time(act)
    predicted = a @ weight.T + bias
    if predicted.shape != head_out.shape:
        return False
    scale = float(head_out.abs().max()) + 1e-6
    return bool((predicted - head_out).abs().max() <= 1e-4 * scale)


def _gradient_batch(recorder: "_Recorder", xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, own-class grad×act, logits, full layer output) for one batch."""
    with torch.enable_grad():
        z = recorder.run(xb, as_leaf=True)
        if z.dim() != 2:
            raise ModelUnusable(f"the model returns shape {tuple(z.shape)}; class_filters needs logits (N, classes)", reason="OUTPUT_NOT_LOGITS")
        _check_batch_labels(yb, z)
        leaf = recorder.activation()
        own = z.gather(1, yb[:, None]).sum()
        grad = torch.autograd.grad(own, leaf, allow_unused=True)[0] if own.requires_grad else None
    if grad is None:
        raise ModelUnusable("the logits do not depend on the chosen layer's output", reason="LAYER_NOT_ON_PATH")
    leaf = leaf.detach()
    spatial = tuple(range(2, leaf.dim()))
    contrib = (grad * leaf).sum(dim=spatial) if spatial else grad * leaf
    return reduce_space_time(leaf), contrib, z.detach(), leaf


def _check_outputs(logits: torch.Tensor | None, num_classes: int | None) -> None:
    """The dataset's classes must be exactly the model's outputs: a class without samples has no subset."""
    if logits is None or logits.dim() != 2:
        raise ModelUnusable("the model does not return logits (N, classes)", reason="OUTPUT_NOT_LOGITS")
    if num_classes is not None and logits.shape[1] != num_classes:
        last = logits.shape[1] - 1
        raise DatasetUnusable(
            f"the model has {logits.shape[1]} outputs but the dataset's labels cover {num_classes} classes; "
            f"give every output class (0..{last}) at least 2 samples",
            reason="CLASSES_DO_NOT_MATCH_OUTPUTS",
        )


def _check_batch_labels(yb: torch.Tensor, z: torch.Tensor) -> None:
    if int(yb.max()) >= z.shape[1]:
        raise DatasetUnusable(f"labels go up to {int(yb.max())} but the model has {z.shape[1]} outputs", reason="LABELS_EXCEED_OUTPUTS")


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise ModelUnusable(f"expected a tensor, got {type(value).__name__}", reason="LAYER_OUTPUT_NOT_TENSOR")


class _Recorder:
    """Hooks that capture the layer's activation (and, in gradient mode, make it a leaf) and the head output."""

    def __init__(self, module: nn.Module, target: nn.Module, head: nn.Module | None, read_input: bool) -> None:
        self.module = module
        self.target = target
        self.head = head
        self.read_input = read_input
        self.as_leaf = False
        self._paused = False
        self._acts: list[torch.Tensor] = []
        self._head_out: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "_Recorder":
        if self.read_input:
            self._handles.append(self.target.register_forward_pre_hook(self._on_input))
        else:
            self._handles.append(self.target.register_forward_hook(self._on_output))
        if self.head is not None:
            self._handles.append(self.head.register_forward_hook(self._on_head))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def run(self, xb: torch.Tensor, as_leaf: bool) -> torch.Tensor:
        self._acts.clear()
        self._head_out.clear()
        self.as_leaf = as_leaf
        return _first_tensor(self.module(xb))

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hooks stay registered but record nothing (for calling the head on its own)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def activation(self) -> torch.Tensor:
        if not self._acts:
            raise ModelUnusable("the chosen layer did not run in the forward pass", reason="LAYER_NOT_REACHED")
        if len(self._acts) > 1:
            raise ModelUnusable("the chosen layer runs more than once per forward pass; pick a layer that runs once", reason="LAYER_REUSED")
        return self._acts[0]

    def head_output(self) -> torch.Tensor | None:
        return self._head_out[-1] if self._head_out else None

    def _on_input(self, _m: nn.Module, inputs: tuple[Any, ...]) -> None:
        if self._paused:
            return
        a = _first_tensor(inputs)
        if a.dim() != 2:
            raise ModelUnusable(
                f"the last Linear layer takes shape {tuple(a.shape)}, not pooled features (N, D); name a layer instead",
                reason="HEAD_INPUT_NOT_POOLED",
            )
        self._acts.append(a)

    def _on_output(self, _m: nn.Module, _inputs: Any, output: Any) -> Any:
        if self._paused:
            return None
        out = _first_tensor(output)
        if out.dim() < 2:
            raise ModelUnusable(f"layer output has shape {tuple(out.shape)}; expected (N, filters, ...)", reason="LAYER_NOT_CHANNELS")
        if self.as_leaf:
            out = out.detach().requires_grad_(True)
            self._acts.append(out)
            if isinstance(output, tuple):
                return (out, *output[1:])
            if isinstance(output, list):
                return [out, *output[1:]]
            return out
        self._acts.append(out)
        return None

    def _on_head(self, _m: nn.Module, _inputs: Any, output: Any) -> None:
        if self._paused:
            return
        self._head_out.append(_first_tensor(output))
