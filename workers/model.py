"""A model as the analyses see it, whatever file format it came from.

Loaders (workers/loader/) produce a LoadedModel; tasks consume it. A model always has its
weights (`state_dict`); it has a runnable `module` when its format allows activations and
gradients (torch.export, ONNX through the interpreter, TorchScript with a module tree).

It is also the one place that copes with networks that take only some input sizes, so that no analysis
special-cases an export: `module` takes any batch (a program whose graph could not be generalised to any
batch, see workers/export_graph.py, runs in pieces of the size it takes), and `forward_to` takes any batch
and any canvas (T, H, W): a layer the graph reaches size-free runs on the canvas itself; for any other,
the canvas sits in a full-size input of mid-range grey and the layer's output is cut to the units whose
receptive fields are centred on the canvas. Modules with no shape facts (a live nn.Module, the ONNX
interpreter, TorchScript) are tried as asked, and fall back the same ways the first time they refuse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workers.errors import ModelUnusable, TaskError
from workers.input_spec import InputSpec

# Random inputs per unit when a layer's unit grid is measured (their gradients' supports are united).
GRID_PROBE_SAMPLES = 2


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters stop requiring gradients for the duration (no weight gradients are ever built)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@dataclass(frozen=True)
class Shapes:
    """What the runnable module takes. batch: None = any batch; n = exactly n samples per run.
    free_layers: the layers it reaches with any canvas (T, H, W); None = not known (tried on first use)."""

    batch: int | None = None
    free_layers: frozenset[str] | None = None


@dataclass(frozen=True)
class _Grid:
    """Per input axis, the input coordinate of each output unit's receptive-field centre: step * u + start."""

    step: tuple[float, ...]
    start: tuple[float, ...]
    units: tuple[int, ...]


class _FixedBatch(nn.Module):
    """A module that takes exactly `batch` samples, run on any batch in pieces (the last one padded).

    Its children are the inner module's children under the same names, so layers keep their names and
    hooks. A hook on a layer would see each piece on its own, which no analysis expects: a run that
    needs pieces while layers are hooked is refused with the reason the graph kept its batch
    (forward_to never needs that: it runs pieces itself, one early exit each).
    """

    def __init__(self, inner: nn.Module, batch: int, why: str = "") -> None:
        super().__init__()
        object.__setattr__(self, "inner", inner)
        self.batch = batch
        self.why = why
        self._modules.update(inner._modules)
        self._parameters.update(inner._parameters)
        self._buffers.update(inner._buffers)

    def train(self, mode: bool = True) -> "_FixedBatch":
        self.inner.train(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> Any:
        if len(x) != self.batch and any(m._forward_hooks or m._forward_pre_hooks for m in self.inner.modules()):
            raise ModelUnusable(
                f"this export runs only on batches of exactly {self.batch} and its graph could not be made to take "
                f"others ({self.why or 'it did not give the same numbers per sample'}); this analysis reads layers "
                f"over batches of {len(x)}: export the model with a dynamic batch "
                "(torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},)))",
                reason="FIXED_BATCH_EXPORT",
            )
        return _in_pieces(self.inner, x, self.batch)


def _in_pieces(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, batch: int) -> Any:
    """fn over pieces of exactly `batch` samples (the last padded with copies of its last sample), joined."""
    if len(x) == batch:
        return fn(x)
    outs = []
    for start in range(0, len(x), batch):
        piece = x[start : start + batch]
        real = len(piece)
        if real < batch:
            piece = torch.cat([piece, piece[-1:].expand(batch - real, *piece.shape[1:])])
        outs.append(_rows(fn(piece), real, batch))
    return _join(outs)


def _rows(out: Any, real: int, batch: int) -> Any:
    """The rows of `out` that belong to the first `real` of `batch` samples (batch-major folded axes too)."""
    if isinstance(out, torch.Tensor):
        per = out.shape[0] // batch if out.dim() and out.shape[0] % batch == 0 else None
        return out if per is None or real == batch else out[: real * per]
    if isinstance(out, (tuple, list)):
        return type(out)(_rows(o, real, batch) for o in out)
    return out


def _join(outs: list[Any]) -> Any:
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outs) if first.dim() else first
    if isinstance(first, (tuple, list)):
        return type(first)(_join([o[i] for o in outs]) for i in range(len(first)))
    return first


class _EarlyExit(Exception):
    """Raised by a forward hook to stop the network right after the target layer."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output


@dataclass
class LoadedModel:
    """`module` takes normalised input (N, *input_spec.shape) and returns logits (or features)."""

    input_spec: InputSpec
    state_dict: dict[str, torch.Tensor]
    module: nn.Module | None = None
    format: str = "module"
    name: str = ""
    # Anything a loader wants tasks to know (e.g. {"onnx_max_abs_diff": 3e-6}).
    info: dict[str, Any] = field(default_factory=dict)
    shapes: Shapes = field(default_factory=Shapes)
    # Per (layer, canvas): whether the module ran the canvas itself; per layer: its unit grid (see _grid).
    _canvases: dict[tuple[str, tuple[int, ...]], bool] = field(default_factory=dict, init=False, repr=False, compare=False)
    _grids: dict[str, _Grid] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.module is not None and self.shapes.batch is not None and not isinstance(self.module, _FixedBatch):
            self.module = _FixedBatch(self.module, self.shapes.batch, str(self.info.get("batch_note", "")))

    @classmethod
    def from_module(cls, module: nn.Module, input_spec: InputSpec, name: str = "") -> "LoadedModel":
        """Wrap a live nn.Module (tests, the demo, in-process use)."""
        module.eval()
        state = {k: v.detach() for k, v in module.state_dict().items()}
        return cls(input_spec=input_spec, state_dict=state, module=module, format="module", name=name)

    def require_module(self, task: str) -> nn.Module:
        """The runnable module, or a FAILED_PRECONDITION that says why this task needs one."""
        if self.module is None:
            raise ModelUnusable(
                f"task {task!r} needs activations, but a {self.format} model holds only weights; "
                "upload a torch.export (.pt2) or ONNX file of the same model",
                reason="NEEDS_RUNNABLE_MODEL",
            )
        return self.module

    def submodule(self, name: str) -> nn.Module:
        """The module called `name` (as DescribeModel lists it), or FAILED_PRECONDITION listing the valid names."""
        module = self.require_module("layer lookup")
        modules = dict(module.named_modules())
        if name not in modules:
            convs = [n for n, m in modules.items() if n and _is_layer(m)]
            raise ModelUnusable(f"no layer named {name!r}; layers: {', '.join(convs[:50])}", reason="UNKNOWN_LAYER")
        return modules[name]

    def forward_to(self, layer: str, x: torch.Tensor) -> torch.Tensor:
        """The output of `layer` for normalised input x (N, C, *canvas): any N, any canvas up to the input size.

        The network runs only as far as the layer. See the module docstring for canvases it cannot take.
        """
        module = self.require_module("forward_to")
        target = self.submodule(layer)
        size = tuple(int(s) for s in x.shape[2:])
        if size == tuple(self.input_spec.spatial):
            return self._batched(lambda xb: _exit_at(module, target, layer, xb), x)
        key = (layer, size)
        takes = self._canvases.get(key)
        if takes is None and self.shapes.free_layers is not None:
            takes = layer in self.shapes.free_layers
        if takes is None and x.device.type != "cpu":
            takes = self._canvases[key] = _takes_on_cpu(module, target, layer, x[:1])
        if takes is not False:
            try:
                out = self._batched(lambda xb: _exit_at(module, target, layer, xb), x)
            except TaskError:
                raise
            except Exception:  # noqa: BLE001 - an operator refused the canvas: the full input takes it
                self._canvases[key] = False
            else:
                self._canvases[key] = True
                return out
        return self._embedded(layer, target, x)

    def placement(self, layer: str, size: tuple[int, ...]) -> tuple[int, ...] | None:
        """Where forward_to puts a canvas of `size` inside the full input for `layer` (None: it runs on the canvas)."""
        full = tuple(self.input_spec.spatial)
        size = tuple(int(s) for s in size)
        if size == full or self._canvases.get((layer, size)) is True:
            return None
        if self._canvases.get((layer, size)) is None and (self.shapes.free_layers is None or layer in self.shapes.free_layers):
            return None
        return self._offset(layer, self.submodule(layer), size)

    def _batched(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """fn on any batch: whole, in pieces the module takes, or (first refusal of an unknown module) one by one."""
        if self.shapes.batch is not None:
            return _in_pieces(fn, x, self.shapes.batch)
        if len(x) <= 1:
            return fn(x)
        try:
            return fn(x)
        except TaskError:
            raise
        except Exception:
            first = fn(x[:1])  # raises if the batch was not the cause
            self.shapes = replace(self.shapes, batch=1)
            return torch.cat([first, _in_pieces(fn, x[1:], 1)]) if len(x) > 1 else first

    def _embedded(self, layer: str, target: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`layer`'s output for canvases placed in a full-size grey input, cut to the units centred on the canvas."""
        module = self.require_module("forward_to")
        full = tuple(self.input_spec.spatial)
        size = tuple(int(s) for s in x.shape[2:])
        if len(size) != len(full) or any(s > f for s, f in zip(size, full)):
            raise ModelUnusable(
                f"layer {layer!r} takes only the model's full input {list(full)}; a canvas {list(size)} does not fit inside it",
                reason="CANVAS_TOO_LARGE",
            )
        offset = self._offset(layer, target, size)
        fill = self._grey(x)
        pad: list[int] = []
        for axis in reversed(range(len(full))):  # F.pad lists the last axis first
            pad += [offset[axis], full[axis] - offset[axis] - size[axis]]
        big = F.pad(x - fill, pad) + fill  # grey outside, the canvas inside; gradients reach the canvas
        out = self._batched(lambda xb: _exit_at(module, target, layer, xb), big)
        grid = self._grid(layer, target)
        cut: list[slice] = [slice(None), slice(None)]
        for axis, (f, s, p) in enumerate(zip(full, size, offset)):
            step, start, units = grid.step[axis], grid.start[axis], grid.units[axis]
            lo = max(0, math.ceil((p - start) / step - 1e-9))
            hi = min(units - 1, math.floor((p + s - 1 - start) / step + 1e-9))
            if lo > hi:  # no unit centred on the canvas: the one nearest its centre
                lo = hi = min(units - 1, max(0, round((p + (s - 1) / 2 - start) / step)))
            cut.append(slice(lo, hi + 1))
        return out[tuple(cut)]

    def _offset(self, layer: str, target: nn.Module, size: tuple[int, ...]) -> tuple[int, ...]:
        """Near the middle of the full input, on a whole number of the layer's steps from its origin, so
        that the units centred on the canvas are the ones the canvas alone would give (for padded layers)."""
        full = tuple(self.input_spec.spatial)
        grid = self._grid(layer, target)
        offset = []
        for f, s, step in zip(full, size, grid.step):
            step = max(1, round(step))
            p = step * round((f - s) / 2 / step)
            while p + s > f and p >= step:
                p -= step
            offset.append(max(0, min(p, f - s)))
        return tuple(offset)

    def _grey(self, x: torch.Tensor) -> torch.Tensor:
        """Mid-range grey in the network's (normalised) values, shaped to broadcast over x."""
        spec = self.input_spec
        raw = torch.full((1, spec.channels) + (1,) * (x.dim() - 2), 0.5 * (spec.value_min + spec.value_max), dtype=x.dtype, device=x.device)
        return spec.normalize(raw)

    def _grid(self, layer: str, target: nn.Module) -> _Grid:
        """Where each unit of `layer` looks in the full input, measured once by gradient probes.

        Probes the centre unit and its next neighbour along each axis (random inputs, support of the
        gradient of |unit| over all channels); the centres' distance is the step (the cumulative stride).
        """
        if layer in self._grids:
            return self._grids[layer]
        module = self.require_module("forward_to")
        spec = self.input_spec
        full = tuple(spec.spatial)
        with torch.no_grad():
            probe = torch.zeros((1, spec.channels, *full), device=_device(module))
            units = tuple(int(u) for u in self._batched(lambda xb: _exit_at(module, target, layer, xb), probe).shape[2:])
        centre = [u // 2 for u in units]
        picks = [tuple(centre)]
        for axis, u in enumerate(units):
            if u > 1:
                moved = list(centre)
                moved[axis] += 1 if centre[axis] + 1 < u else -1
                picks.append(tuple(moved))
        k = GRID_PROBE_SAMPLES
        generator = torch.Generator().manual_seed(0)
        x = spec.normalize(spec.random(k * len(picks), generator=generator)).to(_device(module)).requires_grad_(True)
        with torch.enable_grad(), frozen(module):
            out = self._batched(lambda xb: _exit_at(module, target, layer, xb), x)
            rows = out.shape[0] // x.shape[0]
            total = sum(out[i * k * rows : (i + 1) * k * rows][(slice(None), slice(None), *pick)].abs().sum() for i, pick in enumerate(picks))
            (grad,) = torch.autograd.grad(total, x, allow_unused=True)
        centres: list[list[float]] = []
        for i in range(len(picks)):
            support = grad[i * k : (i + 1) * k].abs().sum(dim=(0, 1)) if grad is not None else None
            centres.append(_support_centre(support, full))
        step, start = [], []
        nxt = 1
        for axis, u in enumerate(units):
            natural = full[axis] / u
            if u > 1:
                moved = picks[nxt][axis] - centre[axis]
                measured = (centres[nxt][axis] - centres[0][axis]) / moved
                nxt += 1
                s = measured if measured > 0 else natural
            else:
                s = natural
            step.append(s)
            start.append(centres[0][axis] - s * centre[axis])
        grid = _Grid(step=tuple(step), start=tuple(start), units=units)
        self._grids[layer] = grid
        return grid


def _takes_on_cpu(module: nn.Module, target: nn.Module, layer: str, x: torch.Tensor) -> bool:
    """Whether the network runs as far as `layer` on x's canvas, tried with one sample on the CPU.

    Why not on x's device: a canvas the graph cannot take may fail as an out-of-range index (a gather or
    index_select whose indices were computed at the export's size, as SlowFast's pathway split is). The CPU
    raises an IndexError; CUDA raises a device-side assert, which poisons the process's CUDA context for
    every later call of the job.
    """
    device = x.device
    module.to("cpu")
    try:
        with torch.no_grad():
            _exit_at(module, target, layer, x.detach().cpu())
    except TaskError:
        raise
    except Exception:  # noqa: BLE001 - an operator refused the canvas
        return False
    finally:
        module.to(device)
    return True


def _exit_at(module: nn.Module, target: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Run `module` on x and stop right after `target` ran; its output."""

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        raise _EarlyExit(out[0] if isinstance(out, (tuple, list)) else out)

    handle = target.register_forward_hook(hook)
    try:
        module(x)
    except _EarlyExit as stop:
        return stop.output
    finally:
        handle.remove()
    raise ModelUnusable(f"layer {layer!r} was not reached by the forward pass", reason="LAYER_NOT_REACHED")


def _support_centre(support: torch.Tensor | None, full: tuple[int, ...]) -> list[float]:
    """Per axis, the middle of the bounding box of the nonzero support (the input's middle where there is none)."""
    if support is None or float(support.max()) <= 0:
        return [(f - 1) / 2 for f in full]
    mask = support > float(support.max()) * 1e-12
    centre = []
    for axis in range(mask.dim()):
        others = tuple(a for a in range(mask.dim()) if a != axis)
        hit = (mask.any(dim=others) if others else mask).nonzero().flatten()
        centre.append(0.5 * (float(hit.min()) + float(hit.max())))
    return centre


def _device(module: nn.Module) -> torch.device:
    first = next(iter(module.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _is_layer(m: nn.Module) -> bool:
    return bool(getattr(m, "weight", None) is not None) or type(m).__name__ in {"TConv3d"}
