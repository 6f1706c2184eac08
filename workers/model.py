"""A model as the analyses see it, whatever file format it came from.

Loaders (workers/loader.py) produce a LoadedModel; tasks consume it. A model always has its
weights (`state_dict`); it has a runnable `module` when its format allows activations and
gradients (torch.export, ONNX through the interpreter, TorchScript with a module tree).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workers.errors import ModelUnusable
from workers.input_spec import InputSpec


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
        """Run the network on normalised x only as far as `layer` and return that layer's output."""
        module = self.require_module("forward_to")
        target = self.submodule(layer)

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


def _is_layer(m: nn.Module) -> bool:
    return bool(getattr(m, "weight", None) is not None) or type(m).__name__ in {"TConv3d"}
