"""Sample data with a known answer (synthetic motion clips) and a small trained 3D CNN.

`motion` is numpy-only; the torch side (`C3DSmall`, `train_c3d`, exports) lives in
`workers.samples.models` and is imported lazily here so that data generation never loads torch.
"""

from __future__ import annotations

from typing import Any

from workers.samples.motion import (
    class_names_for,
    drifting_grating,
    motion_clips,
    random_texture,
    translating_texture,
)

_MODEL_NAMES = ("INPUT_SPEC", "C3DSmall", "train_c3d", "export_pt2", "export_onnx", "sample_input")

__all__ = [
    "class_names_for",
    "drifting_grating",
    "motion_clips",
    "random_texture",
    "translating_texture",
    *_MODEL_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _MODEL_NAMES:
        from workers.samples import models

        return getattr(models, name)
    raise AttributeError(f"module 'workers.samples' has no attribute {name!r}")
