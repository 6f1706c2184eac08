"""What a task is handed: the model, the optional dataset, the device, where to write, how to report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from workers.dataset import Dataset
from workers.model import LoadedModel

ProgressFn = Callable[[str, float], None]


def _no_progress(stage: str, fraction: float) -> None:
    return None


def full_float32() -> None:
    """Turn TensorFloat-32 off for CUDA convolutions and matmuls, process-wide.

    PyTorch lets cuDNN convolutions run in TF32 by default (10-bit mantissa, relative error ~1e-3). The
    analyses measure: class_filters checks that the head is an exact affine map of its pooled input (to
    1e-4), and the 3T fit's residuals are compared across runs. On a GPU they must give the CPU's figures
    to float32 rounding, so a task on CUDA computes in full float32.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@dataclass
class TaskContext:
    """What the job hands every task: the model, the dataset, the device, a directory and a progress callback.

    out_dir: every file a task writes under it becomes an artifact named by its relative path; an analysis
    is handed its own directory, <task dir>/<task name> (workers.job.perform).
    progress(stage, fraction): fraction of this task done, in [0, 1]; cheap, call it often.
    The task's options are not here: the job reads them into the analysis's typed TaskOptions.
    """

    model: LoadedModel
    out_dir: Path
    dataset: Dataset | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: ProgressFn = _no_progress

    def __post_init__(self) -> None:
        if torch.device(self.device).type == "cuda":
            full_float32()
