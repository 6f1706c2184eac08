"""One hooked, batched forward pass: each filter's activation per sample and its share of the logit.

Only per-sample vectors (N × D) are kept: every layer output is reduced over space and time by
mean inside the hook, so memory grows with samples × filters, never with the feature-map size.

The head (head.py) is the last affine layer the network runs: a Linear on pooled or channels-last
features, or a 1 × 1 × 1 convolution. The logits attributed are the head's (pooled) output before any
Softmax the model applies after it (head.Logits), for every output of the head, whichever classes the
dataset holds.

Two attribution modes, decided by the network itself:
- exact logit split: the layer feeds the head directly (the default layer is the head's input averaged
  over its positions; a named layer qualifies when its space/time mean times the head's weights
  reproduces the head's output). Then z_c = Σ_i w[c,i]·a_i + b_c is an exact decomposition and no
  gradient is needed.
- gradient × activation otherwise: the hook swaps the layer output for a leaf tensor, one backward
  per batch gives ∂z_y/∂A for each sample's own class y, and Σ_over_positions (grad·A) is stored.
  (For a layer behind global pooling this reduces to the exact split.)
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from workers.class_filters.head import (
    MODEL_OUTPUT,
    Head,
    Logits,
    affine_map,
    find_head,
    first_tensor,
    head_of,
    is_linear,
    logits_relation,
    reproduces,
)
from workers.errors import DatasetUnusable, ModelUnusable
from workers.model import LoadedModel, frozen

__all__ = ["BATCH_SIZE", "EXACT", "GRADIENT", "LayerActivations", "collect", "find_head", "is_linear", "model_batches", "output_width"]

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
    logits: (N, C) the logits of every output of the head (see `logits_source`).
    head_weight, head_bias: (C, D), (C,) of the head (bias includes any constant added after it), set only
        for the exact split.
    mean_map: (D, *spatial) mean layer output over the fit samples, set only for gradient mode
        (mean ablation replaces a filter's map by it).
    head: what the head is ({"module", "kind", "layout", "positions"}), None when none ran.
    logits_source: head.MODEL_OUTPUT | PRE_SOFTMAX | PRE_LOG_SOFTMAX | HEAD_OUTPUT.
    """

    layer: str
    attribution: str
    features: np.ndarray
    contributions: np.ndarray
    logits: np.ndarray
    head_weight: np.ndarray | None = None
    head_bias: np.ndarray | None = None
    mean_map: torch.Tensor | None = None
    head: dict[str, Any] | None = None
    logits_source: str = MODEL_OUTPUT
    reader: "LogitReader | None" = field(default=None, repr=False)

    @property
    def num_filters(self) -> int:
        return int(self.features.shape[1])

    @property
    def num_classes(self) -> int:
        """How many outputs the head has (the dataset may hold any subset of them)."""
        return int(self.logits.shape[1])

    @property
    def exact(self) -> bool:
        return self.attribution == EXACT


@dataclass
class LogitReader:
    """Reads the attributed logits of a forward pass: the head's pooled output mapped by `logits`, or the
    model's output when there is no head. Restriction by mean ablation reruns the network with it."""

    head: Head | None
    logits: Logits

    @contextmanager
    def hooked(self, n: int, fixed: int | None) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """Within: a function from the model's output of a run on `n` samples to its logits (N, C)."""
        captured: list[torch.Tensor] = []
        handle = None
        if self.head is not None and self.logits.shift is not None:
            handle = self.head.module.register_forward_hook(lambda _m, _i, out: captured.append(first_tensor(out)))

        def read(output: torch.Tensor) -> torch.Tensor:
            head_out = self.head.pooled(_joined(captured, n, fixed, "the head")) if captured and self.head else None
            captured.clear()
            return self.logits.of(head_out, output)

        try:
            yield read
        finally:
            if handle is not None:
                handle.remove()


def output_width(model: LoadedModel, x: np.ndarray, device: torch.device | str = "cpu") -> int:
    """How many logits the model returns, from one sample (so label problems surface before the long pass)."""
    device = torch.device(device)
    module = model.require_module("class_filters").to(device)
    module.eval()
    _, probe = next(model_batches(model, x, np.arange(1), device))
    with torch.no_grad():
        out = first_tensor(module(probe))
    if out.dim() != 2:
        raise ModelUnusable(f"the model returns shape {tuple(out.shape)}; class_filters needs logits (N, classes)", reason="OUTPUT_NOT_LOGITS")
    return int(out.shape[1])


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

    layer: a module name; empty means the input of the head, averaged over its positions.
    fit_rows: the samples whose mean layer output defines mean ablation.
    num_classes: when given, the logits must have exactly this many columns (checked before the pass).
    """
    device = torch.device(device)
    module = model.require_module("class_filters").to(device)
    module.eval()
    n = len(x)
    rows = np.arange(n)
    _, probe = next(model_batches(model, x, rows[:_PROBE_SAMPLES], device))
    head = head_of(module, probe)
    if not layer and head is None:
        raise ModelUnusable(
            "class_filters ranks the filters that feed the head (the last Linear layer or 1 × 1 × 1 convolution), and "
            "none ran in the forward pass; name a layer in the options instead",
            reason="NO_LINEAR_HEAD",
        )
    target = model.submodule(layer) if layer else head.module  # type: ignore[union-attr]
    layer_name = layer or f"{head.name}:input"  # type: ignore[union-attr]
    recorder = _Recorder(module, target, head, read_input=not layer, fixed_batch=model.shapes.batch)
    fit_mask = np.zeros(n, dtype=bool)
    fit_mask[fit_rows] = True

    features: list[np.ndarray] = []
    contributions: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    map_sum: torch.Tensor | None = None
    with recorder, frozen(module):
        with torch.no_grad():
            probe_out = recorder.run(probe, as_leaf=False)
        probe_act = recorder.activation()
        probe_head_in, probe_head_out = recorder.head_input(), recorder.head_output()
        relation = _relation(head, probe_head_in, probe_head_out, probe_out)
        probe_logits = relation.of(probe_head_out, probe_out)
        affine = None
        if head is not None and probe_head_in is not None:
            with recorder.paused():
                affine = affine_map(head, probe_head_in, _pooled(recorder, probe_act).shape[1])
        exact = affine is not None and reproduces(_pooled(recorder, probe_act), probe_head_out, *affine)
        if not layer and not exact:
            raise ModelUnusable(
                f"the head ({head.name}) is not an affine map of its input averaged over its positions; "  # type: ignore[union-attr]
                "name a layer to use gradient×activation",
                reason="HEAD_NOT_AFFINE",
            )
        _check_outputs(probe_logits, num_classes)
        for idx, xb in model_batches(model, x, rows, device, batch_size):
            yb = torch.as_tensor(y[idx], device=device)
            if exact:
                weight, bias = affine  # type: ignore[misc]
                with torch.no_grad():
                    out = recorder.run(xb, as_leaf=False)
                a = _pooled(recorder, recorder.activation())
                z = recorder.head_output()
                if z is None or not reproduces(a, z, weight, bias):
                    raise ModelUnusable(
                        f"the head stopped being an affine map of the {layer_name} features on some samples",
                        reason="HEAD_NOT_AFFINE",
                    )
                z = relation.of(z, out)
                if not relation.explains(z, out):
                    raise ModelUnusable(f"the model's output stopped following from its head's logits ({relation.source}) on some samples", reason="HEAD_OUTPUT_NOT_LOGITS")
                _check_batch_labels(yb, z)
                contrib = a * weight[yb]
            else:
                a, contrib, z, act = _gradient_batch(recorder, relation, xb, yb)
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
        head=head.describe(probe_head_in) if head is not None and probe_head_in is not None else None,
        logits_source=relation.source,
        reader=LogitReader(head, relation),
    )
    if exact:
        weight, bias = affine  # type: ignore[misc]
        shift = relation.shift if relation.shift is not None else torch.zeros_like(bias)
        acts.head_weight = weight.double().cpu().numpy()
        acts.head_bias = (bias + shift.to(bias.dtype)).double().cpu().numpy()
    else:
        acts.mean_map = map_sum / max(int(fit_mask.sum()), 1)
    return acts


def _relation(head: Head | None, head_in: torch.Tensor | None, head_out: torch.Tensor | None, model_out: torch.Tensor) -> Logits:
    """How the attributed logits follow from the head's output (the model's own output when there is no head)."""
    if head is None or head_in is None or head_out is None:
        return Logits(MODEL_OUTPUT)
    return logits_relation(head_out, model_out, head.positions(head_in))


def _pooled(recorder: "_Recorder", act: torch.Tensor) -> torch.Tensor:
    """The layer's per-sample features: the head input averaged the head's way, a named layer over space/time."""
    if recorder.read_input and recorder.head is not None:
        return recorder.head.pooled(act)
    return reduce_space_time(act)


def _gradient_batch(recorder: "_Recorder", relation: Logits, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, own-class grad×act, logits, full layer output) for one batch."""
    with torch.enable_grad():
        out = recorder.run(xb, as_leaf=True)
        if out.dim() != 2:
            raise ModelUnusable(f"the model returns shape {tuple(out.shape)}; class_filters needs logits (N, classes)", reason="OUTPUT_NOT_LOGITS")
        z = relation.of(recorder.head_output(), out)
        _check_batch_labels(yb, z)
        leaves = recorder.leaves()
        own = z.gather(1, yb[:, None]).sum()
        grads = torch.autograd.grad(own, leaves, allow_unused=True) if own.requires_grad else [None]
    if any(g is None for g in grads):
        raise ModelUnusable("the logits do not depend on the chosen layer's output", reason="LAYER_NOT_ON_PATH")
    grad = recorder.trim(torch.cat(list(grads)))  # type: ignore[arg-type]
    leaf = recorder.trim(torch.cat([t.detach() for t in leaves]))
    spatial = tuple(range(2, leaf.dim()))
    contrib = (grad * leaf).sum(dim=spatial) if spatial else grad * leaf
    return reduce_space_time(leaf), contrib, z.detach(), leaf


def _check_outputs(logits: torch.Tensor | None, num_classes: int | None) -> None:
    """The logits must be (N, C) with the number of outputs the model reported."""
    if logits is None or logits.dim() != 2:
        raise ModelUnusable("the model does not return logits (N, classes)", reason="OUTPUT_NOT_LOGITS")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ModelUnusable(
            f"the head has {logits.shape[1]} outputs but the model returns {num_classes}; class_filters needs the head's logits",
            reason="HEAD_OUTPUT_NOT_LOGITS",
        )


def _check_batch_labels(yb: torch.Tensor, z: torch.Tensor) -> None:
    if int(yb.max()) >= z.shape[1]:
        raise DatasetUnusable(f"labels go up to {int(yb.max())} but the model has {z.shape[1]} outputs", reason="LABELS_EXCEED_OUTPUTS")


def _joined(parts: list[torch.Tensor], n: int, fixed: int | None, what: str) -> torch.Tensor:
    """One run's captures of a hook as one tensor of n samples. A fixed-batch module runs in pieces of `fixed`
    samples (the last padded at its end) and a hook fires once per piece; more captures than pieces mean the
    module runs twice per pass."""
    pieces = max(1, math.ceil(n / fixed)) if fixed else 1
    if len(parts) > pieces:
        raise ModelUnusable(f"{what} runs more than once per forward pass; pick a layer that runs once", reason="LAYER_REUSED")
    joined = parts[0] if len(parts) == 1 else torch.cat(parts)
    return joined if not fixed else joined[: _rows(parts[0], n, fixed)]


def _rows(part: torch.Tensor, n: int, fixed: int) -> int:
    """Rows of n samples when a piece of `fixed` samples gave `part` (extra axes folded into the batch)."""
    return n * max(part.shape[0] // fixed, 1)


class _Recorder:
    """Hooks that capture the layer's activation (and, in gradient mode, make it a leaf) and the head's input
    and output."""

    def __init__(self, module: nn.Module, target: nn.Module, head: Head | None, read_input: bool, fixed_batch: int | None = None) -> None:
        self.module = module
        self.target = target
        self.head = head
        self.read_input = read_input
        self.fixed_batch = fixed_batch
        self.as_leaf = False
        self._paused = False
        self._n = 0
        self._acts: list[torch.Tensor] = []
        self._head_in: list[torch.Tensor] = []
        self._head_out: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "_Recorder":
        if self.read_input:
            self._handles.append(self.target.register_forward_pre_hook(self._on_input))
        else:
            self._handles.append(self.target.register_forward_hook(self._on_output))
        if self.head is not None:
            if not self.read_input:
                self._handles.append(self.head.module.register_forward_pre_hook(self._on_head_input))
            self._handles.append(self.head.module.register_forward_hook(self._on_head))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def run(self, xb: torch.Tensor, as_leaf: bool) -> torch.Tensor:
        self._acts.clear()
        self._head_in.clear()
        self._head_out.clear()
        self.as_leaf = as_leaf
        self._n = len(xb)
        return first_tensor(self.module(xb))

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
        return _joined(self._acts, self._n, self.fixed_batch, "the chosen layer")

    def leaves(self) -> list[torch.Tensor]:
        """The leaf tensors the layer's output was replaced by (one per piece of a fixed-batch module)."""
        if not self._acts:
            raise ModelUnusable("the chosen layer did not run in the forward pass", reason="LAYER_NOT_REACHED")
        if len(self._acts) > (max(1, math.ceil(self._n / self.fixed_batch)) if self.fixed_batch else 1):
            raise ModelUnusable("the chosen layer runs more than once per forward pass; pick a layer that runs once", reason="LAYER_REUSED")
        return list(self._acts)

    def trim(self, t: torch.Tensor) -> torch.Tensor:
        """The rows of a concatenation of per-piece captures that belong to the run's samples."""
        return t if not self.fixed_batch else t[: _rows(self._acts[0], self._n, self.fixed_batch)]

    def head_input(self) -> torch.Tensor | None:
        source = self._acts if self.read_input else self._head_in
        return _joined(source, self._n, self.fixed_batch, "the head") if source else None

    def head_output(self) -> torch.Tensor | None:
        if not self._head_out:
            return None
        assert self.head is not None
        return self.head.pooled(_joined(self._head_out, self._n, self.fixed_batch, "the head"))

    def _on_input(self, _m: nn.Module, inputs: tuple[Any, ...]) -> None:
        if self._paused:
            return
        a = first_tensor(inputs)
        if a.dim() < 2:
            raise ModelUnusable(f"the head takes shape {tuple(a.shape)}, not features (N, D, ...); name a layer instead", reason="HEAD_INPUT_NOT_POOLED")
        self._acts.append(a)

    def _on_head_input(self, _m: nn.Module, inputs: tuple[Any, ...]) -> None:
        if not self._paused:
            self._head_in.append(first_tensor(inputs))

    def _on_output(self, _m: nn.Module, _inputs: Any, output: Any) -> Any:
        if self._paused:
            return None
        out = first_tensor(output)
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
        self._head_out.append(first_tensor(output))
