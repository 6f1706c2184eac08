"""Model files in, LoadedModel out: every upload format, verified to be what it claims, loaded safely.

    load_model(path, format, input_spec, architecture, name, device) -> LoadedModel

One module per format (torch_export, onnx_file, torchscript, weights), with the checks they share: what a
file really is (claim), pickles read without executing them (pickles) and the upload's input spec (header).

| format        | loaded by                                              | module (activations, gradients)      |
| ------------- | ------------------------------------------------------ | ------------------------------------ |
| TORCH_EXPORT  | torch.export.load after a scan (below), then unflatten | yes, hooks by module path            |
| ONNX          | onnx.checker, own interpreter, checked vs onnxruntime  | yes, hooks by layer / tensor name    |
| TORCHSCRIPT   | refused unless KERNELSCOPE_ALLOW_TORCHSCRIPT=1; then torch.jit.load after a pickle scan | when the tree is nn.Sequential-shaped |
| STATE_DICT    | torch.load(weights_only=True)                          | with a registered architecture       |
| SAFETENSORS   | safetensors                                            | with a registered architecture       |

Safety. No code path unpickles an arbitrary object:
- every torch.load passes weights_only=True; pickles are scanned (pickletools, which executes
  nothing) first, so a pickled nn.Module is named as such (PICKLED_MODULE) and any other global
  (os.system...) is refused (UNSAFE_PICKLE) before torch sees the bytes;
- torch.export.load itself unpickles pickled weights and sample inputs with weights_only=False as
  a fallback, evaluates symbolic shapes with sympy.sympify (eval), execs guard code and loads
  AOTInductor shared libraries. So before calling it we allow only the entries of a plain exported
  program, require every pickle in it to load with weights_only=True, allow only the pure tensor
  operators of workers.operators (an allow-list: aten.from_file, aten.save... are UNSAFE_OPERATOR),
  checked in the program JSON and again on every node of the loaded graph and its subgraphs, only
  arithmetic in symbolic expressions and guards, only weights files inside the archive, at most
  PT2_MAX_EXTRA_BYTES in extra/ (torch reads it all), and run the load with
  TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 so that torch's own fallbacks stay weights-only;
- TorchScript is compiled code (it may call torch.save or torch.from_file): refused with
  TORCHSCRIPT_DISABLED unless the operator allows it; then its pickles are scanned (its unpickler is
  C++ and resolves only TorchScript classes) and it runs only inside the job's sandbox.
Archives are checked (entry count, declared sizes, per-entry and whole-archive compression ratio,
names) before any of this.

Errors: ModelRejected (FAILED_PRECONDITION) with reasons WRONG_FORMAT, TRUNCATED, PICKLED_MODULE,
UNSAFE_PICKLE, ARCHIVE_UNSAFE, UNSAFE_OPERATOR, TORCHSCRIPT_DISABLED, EXTERNAL_DATA, EXTERNAL_DATA_OUTSIDE_UPLOAD, ONNX_INVALID, ONNX_MISMATCH, UNREADABLE,
ARCHITECTURE_MISMATCH, MULTIPLE_INPUTS, INPUT_SPEC_MISMATCH; ModelUnusable UNSUPPORTED_OP; BadOptions
INPUT_SPEC_INVALID for a malformed input spec in the upload header.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from workers.errors import ModelRejected
from workers.loader.claim import FORMATS, _check_claim, _format_name
from workers.loader.header import _validate_header
from workers.loader.onnx_file import ONNX_TOLERANCE, _load_onnx
from workers.loader.torch_export import _load_torch_export
from workers.loader.torchscript import ALLOW_TORCHSCRIPT_ENV, ScriptLayer, ScriptTree, _load_torchscript, torchscript_allowed
from workers.loader.weights import _load_safetensors, _load_state_dict
from workers.model import LoadedModel


def load_model(
    path: Path,
    format: str,
    input_spec: dict[str, Any] | None = None,
    architecture: str = "",
    name: str = "",
    device: torch.device | str | None = None,
) -> LoadedModel:
    """Load the model file at `path`, uploaded as `format` (the proto ModelFormat name).

    `input_spec` is the upload header's InputSpec as a dict (proto field names); the shape is filled
    from the file when the format records it (torch.export, ONNX) or from the architecture.
    `device`: where the analyses will run it. A torch.export graph names the device of every tensor it
    creates (device=cpu for a CPU export: `torch.linspace(..., device=x.device)` is recorded as cpu), so
    its program is moved there as a whole; other formats are moved by the analyses with `.to(device)`.
    """
    path = Path(path)
    fmt = _format_name(format)
    header = dict(input_spec or {})
    _validate_header(header)
    if path.stat().st_size == 0:
        raise ModelRejected("the model file is empty", reason="TRUNCATED")
    _check_claim(path, fmt)
    loaders = {
        "TORCH_EXPORT": _load_torch_export,
        "ONNX": _load_onnx,
        "TORCHSCRIPT": _load_torchscript,
        "STATE_DICT": _load_state_dict,
        "SAFETENSORS": _load_safetensors,
    }
    if fmt == "TORCH_EXPORT":
        model = _load_torch_export(path, header, architecture, device=device)
    else:
        model = loaders[fmt](path, header, architecture)
    model.name = name
    model.format = fmt
    return model


__all__ = ["ALLOW_TORCHSCRIPT_ENV", "FORMATS", "ONNX_TOLERANCE", "ScriptLayer", "ScriptTree", "load_model", "torchscript_allowed"]
