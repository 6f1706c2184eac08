"""A small C3D-like network trained in seconds on `motion_clips`, and its exports.

It is the demo's model and the analyses' test subject: a real trained 3D CNN whose classes are
known motion directions, in every upload format the service accepts (.pt2 and .onnx).
The model takes NORMALISED input: `INPUT_SPEC.normalize(raw)` with raw clips in [0, 1].
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.input_spec import InputSpec
from workers.samples.motion import motion_clips

INPUT_SPEC = InputSpec(shape=(3, 8, 32, 32), value_min=0.0, value_max=1.0, mean=(0.5,) * 3, std=(0.25,) * 3)

# Held-out clips come from a different seed stream than training clips for the same `seed`.
_EVAL_SEED_OFFSET = 10_000


class C3DSmall(nn.Module):
    """conv1 → pool1 (space only) → conv2 → pool2 → conv3 → global average → fc, for (N, 3, 8, 32, 32).

    Plain named attributes keep layer names stable for the analyses ("conv1", "conv3", "fc"), and
    the forward pass has no data-dependent control flow, so torch.export and ONNX export work.
    """

    def __init__(self, num_classes: int = 4, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, width, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2))  # keep time resolution for motion
        self.conv2 = nn.Conv3d(width, 2 * width, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool3d(kernel_size=2)
        self.conv3 = nn.Conv3d(2 * width, 4 * width, kernel_size=3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.pool3(self.relu3(self.conv3(x)))
        return self.fc(torch.flatten(x, 1))


def _directions(num_classes: int) -> tuple[float, ...]:
    """Evenly spaced motion directions: 4 classes = right, down, left, up."""
    return tuple(360.0 * k / num_classes for k in range(num_classes))


def _normalised_clips(n_per_class: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y, _ = motion_clips(n_per_class, directions=_directions(num_classes), seed=seed)
    return INPUT_SPEC.normalize(torch.from_numpy(x)), torch.from_numpy(y)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 128) -> float:
    correct = 0
    for start in range(0, len(x), batch):
        correct += int((model(x[start : start + batch]).argmax(1) == y[start : start + batch]).sum())
    return correct / max(len(x), 1)


def _fit_classifier(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    max_lr: float | list[float],
    train: tuple[torch.Tensor, torch.Tensor],
    held_out: tuple[torch.Tensor, torch.Tensor],
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
) -> dict[str, Any]:
    """Cross-entropy training with a one-cycle schedule, shuffled by `generator`; leaves the model in eval
    mode and returns train/eval accuracy, samples, epochs and eval_samples (the caller adds its own)."""
    x, y = train
    steps_per_epoch = math.ceil(len(x) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=max(epochs * steps_per_epoch, 1), pct_start=0.25
    )
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    return {
        "train_accuracy": _accuracy(model, x, y),
        "eval_accuracy": _accuracy(model, *held_out),
        "samples": int(len(x)),
        "epochs": int(epochs),
        "eval_samples": int(len(held_out[0])),
    }


def train_c3d(
    seed: int = 0,
    n_per_class: int = 64,
    epochs: int = 6,
    num_classes: int = 4,
    lr: float = 3e-3,
    batch_size: int = 32,
    eval_per_class: int = 32,
) -> tuple[C3DSmall, dict[str, Any]]:
    """Train C3DSmall on seeded motion clips (Adam); return it in eval mode and its metrics.

    Deterministic for a seed (same weights on the same machine and thread count). Metrics:
    train_accuracy and eval_accuracy (on held-out clips from another seed), seconds (wall time
    of data generation, training and evaluation), samples (training clips), epochs, eval_samples.
    The defaults reach eval accuracy 1.0 for seeds 0-3 in about 10-12 s on 2 idle cores.
    """
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    x, y = _normalised_clips(n_per_class, num_classes, seed)
    x_eval, y_eval = _normalised_clips(eval_per_class, num_classes, seed + _EVAL_SEED_OFFSET)
    with torch.random.fork_rng(devices=[]):  # seed the weight init without touching the caller's RNG
        torch.manual_seed(seed)
        model = C3DSmall(num_classes=num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    metrics = _fit_classifier(model, optimizer, lr, (x, y), (x_eval, y_eval), epochs, batch_size, generator)
    metrics["seconds"] = time.perf_counter() - started
    return model, metrics


def _example(example: torch.Tensor | None, dynamic_batch: bool) -> torch.Tensor:
    """The tracing input. A dynamic batch is traced at batch 2: torch.export pins sizes 0 and 1."""
    example = torch.zeros((1, *INPUT_SPEC.shape)) if example is None else example
    if dynamic_batch and example.shape[0] == 1:
        example = example.expand(2, *example.shape[1:]).contiguous()
    return example


def _batch_axis(dynamic_batch: bool) -> tuple[dict[int, Any]] | None:
    # A tuple, not {"x": ...}: torch.export matches dict keys against forward's own argument name.
    return ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None


def export_pt2(
    model: nn.Module,
    path: str | os.PathLike[str],
    example: torch.Tensor | None = None,
    dynamic_batch: bool = True,
) -> None:
    """Save `model` as a torch.export program (.pt2), the service's preferred upload format.

    With `dynamic_batch` the loaded program accepts any batch size (1 to 4096), which batched
    analyses need; otherwise it only accepts the example's batch size.
    """
    model.eval()
    program = torch.export.export(
        model, (_example(example, dynamic_batch),), dynamic_shapes=_batch_axis(dynamic_batch)
    )
    torch.export.save(program, path)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example: torch.Tensor | None = None,
    opset: int = 20,
    dynamic_batch: bool = True,
    optimize: bool = True,
) -> None:
    """Save `model` as a self-contained ONNX file (weights inline: the service refuses external data).

    Uses the torch.export-based exporter (onnxscript); with `dynamic_batch` the first axis of
    input "x" and output "logits" is symbolic, so one file serves any batch size. `optimize=False`
    keeps the graph as traced (workers/tconv/export.py needs that to keep 3T parameters readable).
    """
    model.eval()
    program = torch.onnx.export(
        model,
        (_example(example, dynamic_batch),),
        input_names=["x"],
        output_names=["logits"],
        opset_version=opset,
        dynamo=True,
        optimize=optimize,
        verbose=False,
        external_data=False,
        dynamic_shapes=_batch_axis(dynamic_batch),
    )
    assert program is not None
    program.save(os.fspath(path), external_data=False)


def sample_input(n: int = 1, seed: int = 0) -> torch.Tensor:
    """n normalised clips (n, 3, 8, 32, 32) from `motion_clips`, for quick forward passes."""
    per_class = max(1, math.ceil(n / len(_directions(4))))
    x, _, _ = motion_clips(per_class, seed=seed)
    return INPUT_SPEC.normalize(torch.from_numpy(np.ascontiguousarray(x[:n])))
