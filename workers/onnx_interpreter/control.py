"""ONNX control flow: If and Loop, and the subgraphs they run.

Exporters emit these for Python control flow they cannot trace away: the legacy exporter writes
MViT's `torch.split`-like loops as a Loop appending slices to a sequence, and its shape-dependent
squeeze as an If on a shape comparison. Both run eagerly here: If evaluates its condition and runs
one branch, Loop runs its body as many times as its trip count and condition say. The values a
subgraph reads from the graph around it (its captured names) are passed in as extra inputs of the
node's step, so the graph's dataflow, ordering and tensor releases see them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workers.onnx_interpreter.module import Step, run_steps

Tensor = torch.Tensor

LOOP_LIMIT = 1_000_000  # iterations of one Loop: a body that never stops is a refusal, not a hung worker


class SubGraph(nn.Module):
    """A branch or loop body: `forward(inputs, captured)` -> its outputs, in order."""

    def __init__(self, name: str, inputs: list[str], outputs: list[str], captured: list[str]) -> None:
        super().__init__()
        self.graph_name = name
        self.input_names = inputs
        self.output_names = outputs
        self.captured = captured
        self.initializers = nn.Module()
        self.initializer_buffers: dict[str, str] = {}
        self.steps: list[Step] = []

    def forward(self, inputs: list[Any], captured: dict[str, Any]) -> list[Any]:  # type: ignore[override]
        env: dict[str, Any] = dict(captured)
        buffers = self.initializers._buffers
        env.update({raw: buffers[buf] for raw, buf in self.initializer_buffers.items()})
        env.update(zip(self.input_names, inputs))
        run_steps(self.steps, env)
        return [env[name] for name in self.output_names]


class IfNode(nn.Module):
    """ONNX If: inputs are (cond, *captured values of both branches)."""

    def __init__(self, onnx_name: str, then_branch: SubGraph, else_branch: SubGraph, captured: list[str]) -> None:
        super().__init__()
        self.op_type = "If"
        self.onnx_name = onnx_name
        self.then_branch = then_branch
        self.else_branch = else_branch
        self.captured = captured

    def forward(self, cond: Tensor, *values: Any) -> Any:
        env = dict(zip(self.captured, values))
        branch = self.then_branch if bool(cond.reshape(-1)[0]) else self.else_branch
        outs = branch([], env)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def extra_repr(self) -> str:
        return f"If {self.onnx_name!r}"


class LoopNode(nn.Module):
    """ONNX Loop: inputs are (M, cond, *initial loop-carried values, *captured values of the body).

    The body takes (iteration, cond, *carried) and returns (cond, *carried, *scan outputs); the node
    returns the final carried values, then each scan output stacked over the iterations.
    """

    def __init__(self, onnx_name: str, body: SubGraph, carried: int, captured: list[str]) -> None:
        super().__init__()
        self.op_type = "Loop"
        self.onnx_name = onnx_name
        self.body = body
        self.carried = carried
        self.captured = captured

    def forward(self, trip_count: Tensor | None, cond: Tensor | None, *rest: Any) -> Any:
        values = list(rest[: self.carried])
        env = dict(zip(self.captured, rest[self.carried :]))
        limit = None if trip_count is None else int(trip_count.reshape(-1)[0])
        device = _device([trip_count, cond, *values, *env.values()])
        keep_going = torch.tensor(True, device=device) if cond is None else cond.reshape(()).bool()
        scans: list[list[Tensor]] = []
        i = 0
        while bool(keep_going) and (limit is None or i < limit):
            if i >= LOOP_LIMIT:
                raise ValueError(f"Loop ran past {LOOP_LIMIT} iterations")
            outs = self.body([torch.tensor(i, dtype=torch.int64, device=device), keep_going, *values], env)
            keep_going = outs[0].reshape(()).bool()
            values = outs[1 : 1 + self.carried]
            for k, scan in enumerate(outs[1 + self.carried :]):
                if len(scans) <= k:
                    scans.append([])
                scans[k].append(scan)
            i += 1
        stacked = [torch.stack(s) for s in scans]
        missing = len(self.body.output_names) - 1 - self.carried - len(stacked)
        stacked += [torch.empty(0, device=device)] * missing  # no iteration ran: empty scan outputs
        out = [*values, *stacked]
        return out[0] if len(out) == 1 else tuple(out)

    def extra_repr(self) -> str:
        return f"Loop {self.onnx_name!r}"


def _device(values: list[Any]) -> torch.device:
    """Where the loop's own tensors (its counter) go: beside the first tensor it is given, else the CPU."""
    for value in values:
        if isinstance(value, Tensor):
            return value.device
        if isinstance(value, list) and value and isinstance(value[0], Tensor):
            return value[0].device
    return torch.device("cpu")
