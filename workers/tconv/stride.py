"""Cumulative stride of a layer: how many model-input pixels one pixel of the layer's input spans.

Measured, not derived from the architecture: one forward pass on zeros of the model's input shape with
pre-hooks on the named layers, stride = model-input size / layer-input size per spatial axis. This covers
pooling, strided convs and anything else between the input and the layer.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from workers.model import LoadedModel

Stride = tuple[float, float]  # (x, y)


def measure_strides(model: LoadedModel, names: Iterable[str], device: torch.device) -> tuple[dict[str, Stride | None], list[str]]:
    """{layer name: (x, y) stride or None} and notes saying why any is None."""
    names = list(names)
    notes: list[str] = []
    if model.module is None:
        notes.append(
            f"{model.format} model holds only weights: translation_px_model is null (the cumulative stride "
            "needs a runnable model); translations are given in pixels of each layer's input"
        )
        return {n: None for n in names}, notes
    spec = model.input_spec
    if len(spec.shape) < 3:
        notes.append(f"input shape {list(spec.shape)} has no spatial axes: translation_px_model is null")
        return {n: None for n in names}, notes
    modules = dict(model.module.named_modules())
    seen: dict[str, tuple[int, ...]] = {}
    handles = []

    def hook_for(name: str) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[name] = tuple(int(s) for s in args[0].shape)
        return hook

    for name in names:
        if name in modules:
            handles.append(modules[name].register_forward_pre_hook(hook_for(name)))
    missing = [n for n in names if n not in modules]
    if missing:
        notes.append(f"layers not found as modules of the runnable model, translation_px_model null: {missing}")
    try:
        param = next(model.module.parameters(), None)
        dev = param.device if param is not None else device
        with torch.no_grad():
            model.module(torch.zeros((1, *spec.shape), device=dev))
    except Exception as exc:  # noqa: BLE001 - a model that cannot run on zeros only loses the model-pixel figures
        notes.append(f"forward pass on zeros failed ({type(exc).__name__}: {exc}); translation_px_model is null")
        seen.clear()
    finally:
        for h in handles:
            h.remove()
    h_in, w_in = spec.shape[-2], spec.shape[-1]
    out: dict[str, Stride | None] = {}
    for name in names:
        shape = seen.get(name)
        if shape is None or len(shape) < 4 or shape[-1] <= 0 or shape[-2] <= 0:
            out[name] = None
            continue
        out[name] = (w_in / shape[-1], h_in / shape[-2])
    unreached = [n for n in names if n in modules and n not in seen]
    if unreached and not any("failed" in note for note in notes):
        notes.append(f"layers not reached by the forward pass, translation_px_model null: {unreached}")
    return out, notes
