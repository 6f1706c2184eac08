"""ONNX export of 3TConv models that keeps the 3T parameters readable, verified with onnxruntime.

torch.onnx's graph optimiser folds the whole weight construction (affine_grid + grid_sample of constant
parameters) into one anonymous kernel, which erases `first_weight`, `scale`, … from the file; exporting
without that optimisation keeps them as named initializers, so tconv_stats reads an ONNX model exactly
like a checkpoint. Opset 20 has GridSample (affine_grid is decomposed into plain arithmetic). Input "x",
output "logits", weights inline (the service refuses external data), optionally a symbolic batch axis.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch import nn

from workers.samples import models as samples

OPSET = 20


def export_onnx(
    module: nn.Module, path: str | os.PathLike[str], example: torch.Tensor, dynamic_batch: bool = True, check: bool = True
) -> float | None:
    """Write `module` to `path`; with check, run the file in onnxruntime on `example` and return the
    largest absolute difference from torch (None without check)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples.export_onnx(module, path, example, opset=OPSET, dynamic_batch=dynamic_batch, optimize=False)
    if not check:
        return None
    import onnxruntime as ort

    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": example.detach().cpu().numpy()})[0]
    with torch.no_grad():
        want = module(example).detach().cpu().numpy()
    return float(np.abs(got - want).max())
