"""Pickles read without executing them: their globals listed by pickletools, then weights-only loads."""

from __future__ import annotations

import contextlib
import io
import os
import pickletools
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch

from workers.archive import ArchiveListing
from workers.errors import ModelRejected


_EXPORT_HOWTO = (
    'export it instead: torch.export.save(torch.export.export(model.eval(), (example,)), "model.pt2") '
    '(format TORCH_EXPORT), or torch.onnx.export(model.eval(), (example,), "model.onnx", dynamo=True) '
    "(format ONNX), or upload model.state_dict() (format STATE_DICT) with a registered architecture"
)


_PICKLED_MODULE_PREFIXES = ("torch.nn.modules.", "torch.nn.utils.", "torch.jit.", "torch.fx.", "torch.ao.nn.")


def _pickle_globals(data: bytes | BinaryIO, where: str) -> list[str]:
    """Every global ("module.name") a pickle would import, read by pickletools (which runs nothing)."""
    found: list[str] = []
    strings: list[Any] = []
    memo: dict[int, Any] = {}
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        for op, arg in _pickle_ops(stream):
            name = op.name
            if name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                found.append(f"{module}.{attr}")
            elif name == "STACK_GLOBAL":
                module, attr = (strings[-2], strings[-1]) if len(strings) >= 2 else ("?", "?")
                found.append(f"{module}.{attr}")
            elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"):
                strings.append(arg)
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = strings[-1] if strings else None
            elif name == "MEMOIZE":
                memo[len(memo)] = strings[-1] if strings else None
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                strings.append(memo.get(int(arg)))
    except (ValueError, IndexError, KeyError, struct.error) as exc:
        raise ModelRejected(f"{where} holds a damaged or truncated pickle ({exc})", reason="TRUNCATED") from exc
    return [g.replace("__builtin__.", "builtins.") for g in found]


def _pickle_ops(stream: BinaryIO) -> Iterator[tuple[Any, Any]]:
    """Opcodes of every pickle in a row (torch's legacy format is several pickles back to back, then raw bytes)."""
    for _ in range(8):
        start = stream.tell()
        if stream.read(1) != b"\x80":
            return
        stream.seek(start)
        for op, arg, _ in pickletools.genops(stream):
            yield op, arg


def _allowed_globals() -> set[str]:
    """The globals torch's weights_only unpickler accepts (tensors, storages, dtypes, OrderedDict...)."""
    from torch import _weights_only_unpickler

    allowed = set(_weights_only_unpickler._get_allowed_globals())
    for obj in torch.serialization.get_safe_globals():
        target = obj[0] if isinstance(obj, tuple) else obj
        allowed.add(f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}")
    return allowed


def _refuse_pickle(globals_: list[str], where: str) -> None:
    """PICKLED_MODULE for a torch.save(model); UNSAFE_PICKLE for any other global outside weights_only's set."""
    modules = sorted({g for g in globals_ if g.startswith(_PICKLED_MODULE_PREFIXES)})
    if modules:
        raise ModelRejected(
            f"{where} is a pickled nn.Module ({', '.join(modules[:4])}...), which kernelscope never unpickles; "
            + _EXPORT_HOWTO,
            reason="PICKLED_MODULE",
        )
    allowed = _allowed_globals()
    foreign = sorted({g for g in globals_ if g not in allowed})
    if foreign:
        raise ModelRejected(
            f"{where} is a pickle that would import {', '.join(foreign[:6])}: only tensors are accepted, "
            "and nothing was unpickled; " + _EXPORT_HOWTO,
            reason="UNSAFE_PICKLE",
        )


def _scan_torch_save(path: Path, listing: ArchiveListing) -> None:
    with zipfile.ZipFile(path) as zf:
        for entry in listing.names:
            if entry.endswith(".pkl"):
                _refuse_pickle(_pickle_globals(zf.read(entry), f"entry {entry!r}"), f"entry {entry!r}")


def _weights_only_load(data: bytes | Path, where: str) -> Any:
    try:
        source: Any = io.BytesIO(data) if isinstance(data, bytes) else data
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever torch says, the file is refused
        text = str(exc).split("\n", 1)[0]
        if isinstance(exc, EOFError) or "unexpected EOF" in text or "truncated" in text.lower():
            raise ModelRejected(f"{where} ends early: it is truncated ({text or type(exc).__name__})", reason="TRUNCATED") from exc
        if "Unsupported global" in str(exc) or "weights_only" in str(exc).lower():
            raise ModelRejected(f"{where} holds objects other than tensors; nothing was unpickled ({text})", reason="UNSAFE_PICKLE") from exc
        raise ModelRejected(f"{where} cannot be read as a weights-only checkpoint: {text}", reason="UNREADABLE") from exc


@contextlib.contextmanager
def _weights_only_everywhere() -> Iterator[None]:
    """Make every torch.load in this block weights-only, even those inside torch that pass weights_only=False."""
    saved = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
