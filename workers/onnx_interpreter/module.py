"""OnnxModule: an ONNX graph as an nn.Module whose every node is a named submodule.

Every node is a submodule, so a forward hook on any of them sees that node's output: weighted
layers under their PyTorch-style path ("layer1.0.conv1"), every other node under its (sanitised)
output tensor name ("relu_3"). `forward` runs the nodes in topological order, keeping each
intermediate tensor only until its last consumer has run.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

Tensor = torch.Tensor


class Scope(nn.Module):
    """A container on a module path ("layer1" of "layer1.0.conv1"); it is never called itself."""

    def forward(self, *args: Any) -> Any:  # pragma: no cover - containers are not executed
        raise RuntimeError("a Scope only groups layers; it has no computation of its own")


class OpNode(nn.Module):
    """One ONNX node without weights of its own; its constant tensors are buffers (they follow .to())."""

    def __init__(
        self,
        op_type: str,
        onnx_name: str,
        fn: Callable[..., Any],
        attrs: dict[str, Any],
        opset: int,
        num_outputs: int,
        constants: dict[str, Tensor] | None = None,
    ) -> None:
        super().__init__()
        # Plain attributes straight into __dict__: nn.Module.__setattr__'s checks cost more than the rest of
        # the build on graphs of thousands of shape-arithmetic nodes (the legacy exporter's Swin3D has 6,500).
        self.__dict__.update(op_type=op_type, onnx_name=onnx_name, attrs=attrs, opset=opset, num_outputs=num_outputs, _fn=fn)
        for key, value in (constants or {}).items():
            self._buffers[key] = value

    def forward(self, *inputs: Tensor | None) -> Any:
        try:
            return self._fn(self, *inputs)
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            raise RuntimeError(f"ONNX node {self.onnx_name!r} ({self.op_type}) failed: {exc}") from exc

    def extra_repr(self) -> str:
        return f"{self.op_type} {self.onnx_name!r}"


def run_steps(steps: list["Step"], env: dict[str, Any], record: dict[str, Any] | None = None, skip_static: bool = False) -> None:
    """Run `steps` in order on the named values in `env`, storing outputs and dropping released names.

    A step returns one value per output: a tuple for several; a list is one value (an ONNX sequence).
    `record` collects the outputs of static steps; `skip_static` skips them (their outputs are in `env`
    already), except for a step someone hooks, which runs so that its hooks see it.
    """
    for step in steps:
        if skip_static and step.static and not (step.module._forward_hooks or step.module._forward_pre_hooks):
            continue
        out = step.module(*[env[name] if name else None for name in step.inputs])
        if len(step.outputs) == 1:
            env[step.outputs[0]] = out[0] if isinstance(out, tuple) else out
        else:
            for name, value in zip(step.outputs, out):
                if name:
                    env[name] = value
        if record is not None and step.static:
            record.update((name, env[name]) for name in step.outputs if name)
        for name in step.release:
            env.pop(name, None)


@dataclass(frozen=True)
class Step:
    """Run `module` on the tensors named `inputs` ("" = omitted optional input), store under `outputs`."""

    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    release: tuple[str, ...]  # tensors no later step needs
    static: bool = False  # its outputs depend only on the input shapes (workers/onnx_interpreter/static.py)


# Input shapes (and devices, dtypes) whose static values an OnnxModule keeps.
STATIC_CACHE_SIZE = 4


class OnnxModule(nn.Module):
    """The graph: `forward(*inputs)` returns the output tensor (or a tuple for several outputs).

    layers: module path -> what it is ({"op", "kind", "onnx_node", "weight"}), for the inventory.
    tensor_modules: ONNX tensor name -> path of the module that produces it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.initializers = Scope()
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self.layers: dict[str, dict[str, Any]] = {}
        self.tensor_modules: dict[str, str] = {}
        self.initializer_buffers: dict[str, str] = {}  # ONNX initializer name -> buffer name
        self.steps: list[Step] = []
        self._static: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()

    def forward(self, *inputs: Tensor) -> Any:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the graph takes {len(self.input_names)} inputs ({self.input_names}), got {len(inputs)}")
        buffers = self.initializers._buffers
        env: dict[str, Any] = {raw: buffers[buf] for raw, buf in self.initializer_buffers.items()}
        env.update(zip(self.input_names, inputs))
        key = tuple((tuple(x.shape), x.dtype, x.device) if isinstance(x, Tensor) else id(x) for x in inputs)
        static = self._static.get(key)
        if static is None:
            recorded: dict[str, Any] = {}
            run_steps(self.steps, env, record=recorded)
            self._static[key] = recorded
            while len(self._static) > STATIC_CACHE_SIZE:
                self._static.popitem(last=False)
        else:
            self._static.move_to_end(key)
            env.update(static)
            run_steps(self.steps, env, skip_static=True)
        outs = [env[name] for name in self.output_names]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """.to(), .cuda(), .double() move the constants the static values were computed from: forget them."""
        self._static.clear()
        return super()._apply(fn, *args, **kwargs)

    def resolve(self, name: str) -> str:
        """A module path for `name`: a module path itself, or an ONNX tensor name produced by a node."""
        modules = dict(self.named_modules())
        if name in modules:
            return name
        if name in self.tensor_modules:
            return self.tensor_modules[name]
        raise KeyError(name)
