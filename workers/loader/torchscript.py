"""TorchScript archives: refused unless the operator allows them; then pickle-scanned and given a hookable tree."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from workers import defaults
from workers.archive import check_archive
from workers.errors import ModelRejected, first_line
from workers.layers import kind as layer_kind
from workers.loader.header import _spec
from workers.loader.pickles import _allowed_globals, _pickle_globals
from workers.model import LoadedModel


# TorchScript pickles name TorchScript classes (__torch__.*) and a few list builders besides tensor globals.
_TORCHSCRIPT_GLOBAL_PREFIXES = ("__torch__.", "torch.jit._pickle.")


# TorchScript is code (a compiled __setstate__ or forward may call torch.save / torch.from_file): refused
# unless the operator sets this (see workers/defaults.py), and then loaded only inside the job's sandbox.
ALLOW_TORCHSCRIPT_ENV = "KERNELSCOPE_ALLOW_TORCHSCRIPT"
_TORCHSCRIPT_HOWTO = (
    "TorchScript models are programs and this worker does not run them (its operator may allow them with "
    f"{ALLOW_TORCHSCRIPT_ENV}=1). Export the model instead: "
    'torch.export.save(torch.export.export(model.eval(), (example,)), "model.pt2") and upload model.pt2 '
    '(format TORCH_EXPORT), or torch.onnx.export(model.eval(), (example,), "model.onnx", dynamo=True) (format ONNX)'
)


def torchscript_allowed() -> bool:
    default = "1" if defaults.ALLOW_TORCHSCRIPT else ""
    return os.environ.get("KERNELSCOPE_ALLOW_TORCHSCRIPT", default).strip().lower() in ("1", "true", "yes", "on")


def _load_torchscript(path: Path, header: dict[str, Any], architecture: str) -> LoadedModel:
    if not torchscript_allowed():
        raise ModelRejected(_TORCHSCRIPT_HOWTO, reason="TORCHSCRIPT_DISABLED")
    listing = check_archive(path, "a TorchScript archive")
    allowed = _allowed_globals()
    with zipfile.ZipFile(path) as zf:
        for entry in listing.names:
            if entry.endswith(".pkl"):
                for g in _pickle_globals(zf.read(entry), f"entry {entry!r}"):
                    if g not in allowed and not g.startswith(_TORCHSCRIPT_GLOBAL_PREFIXES):
                        raise ModelRejected(
                            f"TorchScript entry {entry!r} references {g!r}, which is not TorchScript data; nothing was loaded",
                            reason="UNSAFE_PICKLE",
                        )
    try:
        script = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise ModelRejected(f"torch.jit.load could not read the archive: {first_line(exc)}", reason="UNREADABLE") from exc
    script.eval()
    state = {k: v.detach() for k, v in script.state_dict().items()}
    spec = _spec(header, None)
    eager = _hookable_tree(script)
    info: dict[str, Any] = {"layer_kinds": {n: layer_kind(m) for n, m in script.named_modules() if n}}
    if eager is None:
        info["module_unavailable"] = (
            "the TorchScript module's forward is compiled code that Python hooks cannot see into; "
            "only nn.Sequential trees can be analysed layer by layer"
        )
    elif not spec.shape:
        info["module_unavailable"] = "the upload gives no input_spec.shape, which activation tasks need"
        eager = None
    return LoadedModel(input_spec=spec, state_dict=state, module=eager, info=info)


class ScriptLayer(nn.Module):
    """A hookable stand-in for one TorchScript submodule (TorchScript refuses Python hooks)."""

    def __init__(self, script: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_script", script)
        self.kind = str(getattr(script, "original_name", type(script).__name__))

    def forward(self, *args: Any) -> Any:
        return self._script(*args)

    def _apply(self, fn: Any, recurse: bool = True) -> "ScriptLayer":
        self._script._apply(fn)
        return self

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return self._script.parameters(recurse)

    @property
    def weight(self) -> torch.Tensor | None:
        return getattr(self._script, "weight", None)

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self._script, "bias", None)

    def extra_repr(self) -> str:
        return f"TorchScript {self.kind}"


class ScriptTree(nn.Sequential):
    """The root of a hookable TorchScript tree: its parameters and buffers are the scripted module's."""

    def __init__(self, script: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_script", script)

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]:
        return self._script.named_parameters(prefix=prefix, recurse=recurse)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return self._script.parameters(recurse)

    def named_buffers(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        return self._script.named_buffers(prefix=prefix, recurse=recurse)

    def buffers(self, recurse: bool = True) -> Iterator[torch.Tensor]:
        return self._script.buffers(recurse)


def _hookable_tree(script: Any) -> nn.Module | None:
    """An eager nn.Sequential mirroring a scripted Sequential tree (leaves wrapped), or None.

    Every node calls the scripted submodule itself, so weights are shared and `.to(device)` on the
    tree moves the scripted module.
    """
    if getattr(script, "original_name", "") != "Sequential":
        return None

    def fill(seq: nn.Sequential, module: Any) -> nn.Sequential:
        for child_name, child in module.named_children():
            if getattr(child, "original_name", "") == "Sequential":
                seq.add_module(child_name, fill(nn.Sequential(), child))
            else:
                seq.add_module(child_name, ScriptLayer(child))
        return seq

    return fill(ScriptTree(script), script).eval()
