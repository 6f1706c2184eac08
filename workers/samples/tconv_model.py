"""A small 3TConv video network trained in seconds on `motion_clips`: the tconv_stats demo's model.

Its convolutions are `TConv3d`, so every temporal change of a kernel is an explicit scale, rotation and
translation per time step. With identity transforms a 3T kernel is the same 2D slice at every step and
cannot tell one motion direction from its opposite; telling the four directions apart forces the
transforms to move, so after training the stats show learned translations.
Takes NORMALISED input (N, 3, 8, 32, 32): `INPUT_SPEC.normalize(raw)` with raw clips in [0, 1].
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from workers.samples.models import INPUT_SPEC, _directions, _EVAL_SEED_OFFSET, _fit_classifier, _normalised_clips
from workers.tconv.layer import TConv3d

__all__ = ["INPUT_SPEC", "TConvSmall", "train_tconv"]

_TRANSLATIONS = ("translate_x", "translate_y")


class TConvSmall(nn.Module):
    """tconv1 → pool1 (space) → tconv2 → pool2 → global average → fc, for (N, 3, 8, 32, 32)."""

    def __init__(self, num_classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.tconv1 = TConv3d(3, width, (3, 3, 3), padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2))
        self.tconv2 = TConv3d(width, 2 * width, (3, 3, 3), padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.tconv1(x)))
        x = self.pool2(self.relu2(self.tconv2(x)))
        return self.fc(torch.flatten(x, 1))


def _translation_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    translations, others = [], []
    for name, p in model.named_parameters():
        (translations if name.rsplit(".", 1)[-1] in _TRANSLATIONS else others).append(p)
    return translations, others


def train_tconv(
    seed: int = 0,
    n_per_class: int = 48,
    epochs: int = 8,
    num_classes: int = 4,
    lr: float = 1e-2,
    translation_lr: float = 0.1,
    batch_size: int = 32,
    eval_per_class: int = 32,
    width: int = 8,
) -> tuple[TConvSmall, dict[str, Any]]:
    """Train TConvSmall on seeded motion clips; return it in eval mode and its metrics.

    Translations get their own, larger learning rate (`translation_lr`): they start at identity where
    their gradient is small (the paper's models learn them slowly for the same reason), and motion
    direction is what the classes differ in. Scale and rotation share the weights' rate, so that no
    scale runs through zero (the layer, like the authors', does not clamp it). Metrics:
    train_accuracy, eval_accuracy (held-out clips of another seed), seconds, samples, epochs,
    mean_abs_translation (normalised units, over both layers' steps and filters).
    """
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _normalised_clips(n_per_class, num_classes, seed)
    x_eval, y_eval = _normalised_clips(eval_per_class, num_classes, seed + _EVAL_SEED_OFFSET)
    model = TConvSmall(num_classes=num_classes, width=width)
    translations, others = _translation_parameters(model)
    optimizer = torch.optim.Adam([{"params": others, "lr": lr}, {"params": translations, "lr": translation_lr}])
    metrics = _fit_classifier(
        model, optimizer, [lr, translation_lr], (x, y), (x_eval, y_eval), epochs, batch_size, generator
    )
    with torch.no_grad():
        shifts = torch.cat([torch.cat([m.translate_x.flatten(), m.translate_y.flatten()]) for m in model.modules() if isinstance(m, TConv3d)])
    metrics.update(
        seconds=time.perf_counter() - started,
        directions_deg=list(_directions(num_classes)),
        mean_abs_translation=float(shifts.abs().mean()),
    )
    return model, metrics
