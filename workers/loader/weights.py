"""Weights alone (a state dict or safetensors), given a module by a registered architecture."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import torch

from workers import architectures
from workers.errors import ModelRejected, first_line
from workers.loader.header import _spec
from workers.loader.pickles import _weights_only_load
from workers.loader.torch_export import _json
from workers.model import LoadedModel


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params")


def _load_state_dict(path: Path, header: dict[str, Any], architecture: str) -> LoadedModel:
    loaded = _weights_only_load(path, "the checkpoint")
    return _weights_model(_unwrap(loaded), header, architecture)


def _load_safetensors(path: Path, header: dict[str, Any], architecture: str) -> LoadedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    size = path.stat().st_size
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > 100 * 2**20:
            raise ModelRejected(f"the safetensors header declares {header_len} bytes", reason="ARCHIVE_UNSAFE")
        raw = f.read(header_len)
    meta = _json(raw, "safetensors header")
    end = max((int(v["data_offsets"][1]) for k, v in meta.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise ModelRejected(
            f"the safetensors file declares {8 + header_len + end} bytes but has {size}: it is truncated", reason="TRUNCATED"
        )
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelRejected(f"safetensors could not read the file: {first_line(exc)}", reason="UNREADABLE") from exc
    return _weights_model(tensors, header, architecture)


def _unwrap(loaded: Any) -> dict[str, torch.Tensor]:
    """{"state_dict": {...}, "epoch": 3} -> the tensors; a DataParallel "module." prefix removed."""
    current = loaded
    for _ in range(4):
        if not isinstance(current, dict):
            break
        wrapped = [k for k in _WRAPPER_KEYS if isinstance(current.get(k), dict)]
        if wrapped and not any(isinstance(v, torch.Tensor) for v in current.values()):
            current = current[wrapped[0]]
        else:
            break
    if not isinstance(current, dict):
        raise ModelRejected(f"the checkpoint holds a {type(current).__name__}, not a state_dict", reason="UNREADABLE")
    tensors = {str(k): v for k, v in current.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelRejected("the checkpoint holds no tensors", reason="UNREADABLE")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _weights_model(state: dict[str, torch.Tensor], header: dict[str, Any], architecture: str) -> LoadedModel:
    if not architecture:
        return LoadedModel(input_spec=_spec(header, None), state_dict=state, module=None, info={"architecture": ""})
    arch = architectures.get_architecture(architecture)
    module = architectures.build(architecture)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [f"{k} {list(state[k].shape)} != {list(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or reshaped:
        raise ModelRejected(
            f"the weights do not fit architecture {architecture!r}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {reshaped[:5]}",
            reason="ARCHITECTURE_MISMATCH",
        )
    module.load_state_dict(state, strict=True)
    default = arch.default_spec()
    spec = _spec(header, default.shape if default else None)
    if default and not header.get("mean") and not header.get("std") and not header.get("shape"):
        spec = default
    module.eval()
    return LoadedModel(input_spec=spec, state_dict=state, module=module if spec.shape else None, info={"architecture": architecture})
