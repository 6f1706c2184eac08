"""Model files in, LoadedModel out: every upload format, verified to be what it claims, loaded safely.

    load_model(path, format, input_spec, architecture, name) -> LoadedModel

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

import contextlib
import io
import json
import os
import pickletools
import re
import stat
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch
from torch import nn

from sdk import formats as content
from workers import architectures, defaults, operators
from workers.archive import ArchiveListing, check_archive, is_zip
from workers.errors import BadOptions, ModelRejected
from workers.input_spec import InputSpec
from workers.layers import kind as layer_kind, node_kind
from workers.model import LoadedModel

FORMATS: tuple[str, ...] = ("TORCH_EXPORT", "ONNX", "TORCHSCRIPT", "STATE_DICT", "SAFETENSORS")

# ONNX check at load: max |interpreter - onnxruntime| must stay within ONNX_TOLERANCE * max(1, max |onnxruntime|),
# i.e. 1e-4 absolute for outputs of order one (logits), relative to the output scale beyond that.
ONNX_TOLERANCE = 1e-4
# Batch used for the onnxruntime comparison when the batch axis is dynamic.
ONNX_CHECK_BATCH = 2

_EXPORT_HOWTO = (
    'export it instead: torch.export.save(torch.export.export(model.eval(), (example,)), "model.pt2") '
    '(format TORCH_EXPORT), or torch.onnx.export(model.eval(), (example,), "model.onnx", dynamo=True) '
    "(format ONNX), or upload model.state_dict() (format STATE_DICT) with a registered architecture"
)


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


# ============================================================== what the file really is

def _format_name(format: Any) -> str:
    """Accept the enum name ("ONNX"), its number (2) or a prefixed name ("ModelFormat.ONNX")."""
    if isinstance(format, int) and 1 <= format <= len(FORMATS):
        return FORMATS[format - 1]
    text = str(format).rsplit(".", 1)[-1].upper()
    if text.isdigit() and 1 <= int(text) <= len(FORMATS):
        return FORMATS[int(text) - 1]
    if text not in FORMATS:
        raise ModelRejected(f"unknown model format {format!r}; one of {', '.join(FORMATS)}", reason="WRONG_FORMAT")
    return text


def _sniff(path: Path) -> str:
    """The kind of file at `path`, from its first bytes (sdk.formats.head_kind: the SDK's and the service's rules)."""
    with open(path, "rb") as f:
        return content.head_kind(f.read(content.HEAD_BYTES), path.stat().st_size)


def _zip_kind(listing: ArchiveListing) -> str:
    """The kind of a checked zip archive, from its entry names (sdk.formats.zip_kind)."""
    return content.zip_kind(listing.names)


_ARCHIVE_WORDS = {
    "TORCH_EXPORT": "a torch.export archive",
    "TORCHSCRIPT": "a TorchScript archive",
    "STATE_DICT": "a torch.save checkpoint",
    "ONNX": "an ONNX bundle",
}
_NOT_WHAT = {
    "TORCH_EXPORT": "not a zip archive (a torch.export .pt2 is one)",
    "TORCHSCRIPT": "not a zip archive (a TorchScript .pt is one)",
    "STATE_DICT": "neither a zip archive nor a pickle (torch.save writes one of those)",
    "SAFETENSORS": "not a safetensors file (no JSON header after the 8-byte length)",
    "ONNX": "not an ONNX protobuf",
}


def _check_claim(path: Path, fmt: str) -> None:
    """Refuse a file whose bytes are not the format it was uploaded as (or that is a pickled module).

    Kinds and the format each is uploaded as are sdk.formats'; an unrecognisable file uploaded as ONNX goes on
    to the ONNX parser, which says whether it is truncated or no protobuf at all.
    """
    kind = _sniff(path)
    if kind == "ZIP":
        listing = check_archive(path, _ARCHIVE_WORDS.get(fmt, "the archive"))
        kind = _zip_kind(listing)
        if kind == "TORCH_SAVE":
            _scan_torch_save(path, listing)
    elif kind == "PICKLE":
        with open(path, "rb") as f:
            _refuse_pickle(_pickle_globals(f, "the file"), "the file")
    elif kind in content.TRUNCATED_OF:
        if content.TRUNCATED_OF[kind] == fmt:
            raise ModelRejected(f"the file is {content.WORDS[kind]}: upload the complete file", reason="TRUNCATED")
        kind = "UNKNOWN"
    accepted = {k for k, f in content.FORMAT_OF.items() if f == fmt} | ({"UNKNOWN"} if fmt == "ONNX" else set())
    if kind in accepted:
        return
    is_what = content.WORDS.get(kind)
    if is_what is None:
        what = _NOT_WHAT[fmt]
    elif kind in content.ZIP_KINDS:
        what = is_what
    else:
        what = f"{is_what}, {_NOT_WHAT[fmt]}"
    raise ModelRejected(f"uploaded as {fmt}, but the file is {what}", reason="WRONG_FORMAT")


# ============================================================== pickles, read without executing them

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


# ============================================================== input spec

def _validate_header(header: dict[str, Any]) -> None:
    shape = [int(s) for s in header.get("shape") or []]
    if any(s <= 0 for s in shape):
        raise BadOptions(f"input_spec.shape must be positive, got {shape}", reason="INPUT_SPEC_INVALID")
    lo, hi = float(header.get("value_min", 0.0) or 0.0), float(header.get("value_max", 0.0) or 0.0)
    if (lo, hi) != (0.0, 0.0) and not lo < hi:
        raise BadOptions(f"input_spec value range [{lo}, {hi}] is empty", reason="INPUT_SPEC_INVALID")
    std = [float(s) for s in header.get("std") or []]
    if any(not s > 0 for s in std):
        raise BadOptions(f"input_spec.std must be positive, got {std}", reason="INPUT_SPEC_INVALID")
    for key in ("mean", "std"):
        values = header.get(key) or []
        if values and shape and len(values) != shape[0]:
            raise BadOptions(f"input_spec.{key} has {len(values)} values for {shape[0]} channels", reason="INPUT_SPEC_INVALID")


def _spec(header: dict[str, Any], shape: tuple[int, ...] | None, dtype: str | None = None) -> InputSpec:
    """The upload's spec with the shape (and dtype) the file records filled in when the header has none."""
    merged = dict(header)
    if dtype and not merged.get("dtype"):
        merged["dtype"] = dtype
    spec = InputSpec.from_dict(merged, fallback_shape=shape)
    for key, values in (("mean", spec.mean), ("std", spec.std)):
        if values and spec.shape and len(values) != spec.shape[0]:
            raise BadOptions(f"input_spec.{key} has {len(values)} values for {spec.shape[0]} channels", reason="INPUT_SPEC_INVALID")
    return spec


def _check_shape(header: dict[str, Any], recorded: list[int | None], where: str) -> None:
    """A header shape must agree with the file's static (non-batch) dims."""
    given = [int(s) for s in header.get("shape") or []]
    if not given:
        return
    if len(given) != len(recorded) or any(r is not None and r != g for r, g in zip(recorded, given)):
        shown = ["?" if r is None else r for r in recorded]
        raise ModelRejected(
            f"input_spec.shape {given} disagrees with the {where}'s input shape {shown} (batch axis excluded)",
            reason="INPUT_SPEC_MISMATCH",
        )


# ============================================================== torch.export

# torch.export.save puts only small metadata in extra/ (none at all by default); torch.export.load reads it all.
PT2_MAX_EXTRA_BYTES = 1 << 20
_PT2_ALLOWED = re.compile(
    r"^(archive_format|archive_version|byteorder|version|\.data/.*|models/[^/]+\.json|data/weights/[^/]+"
    r"|data/constants/[^/]+|data/sample_inputs/[^/]+\.pt|extra/[^/]+)$"
)
_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?)|(?P<str>'[A-Za-z0-9_]*')|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>\*\*|//|==|!=|<=|>=|[-+*/%(),<>=\[\].&|~]))")
_SYMPY_NAMES = frozenset(
    "Symbol Integer Float Rational Add Mul Pow Mod Max Min Abs Eq Ne Lt Le Gt Ge StrictLessThan StrictGreaterThan "
    "LessThan GreaterThan Equality Unequality And Or Not True False None oo zoo nan Piecewise floor ceiling sqrt "
    "FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift IsNonOverlappingAndDenseIndicator "
    "TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat FloatPow PowByNatural IntTrueDiv FloatTrueDiv OpaqueUnaryFn_sqrt "
    "OpaqueUnaryFn_exp OpaqueUnaryFn_log Identity BitwiseFn_bitwise_and BitwiseFn_bitwise_or "
    "positive integer real nonnegative negative nonzero finite commutative even odd rational".split()
)
_GUARD_NAMES = _SYMPY_NAMES | frozenset("L args size stride storage_offset math isnan inf and or not dim".split())
_SYMBOL = re.compile(r"^[a-z]{1,4}\d+$")


def _load_torch_export(path: Path, header: dict[str, Any], architecture: str, device: torch.device | str | None = None) -> LoadedModel:
    listing = check_archive(path, "a torch.export archive")
    _scan_pt2(path, listing)
    try:
        with _weights_only_everywhere(), open(path, "rb") as f:
            program = torch.export.load(f)
        _check_graph(program.graph_module)  # what runs, not only what the file says
    except ModelRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to deserialise is the file's
        raise ModelRejected(f"torch.export.load could not read the archive: {_first_line(exc)}", reason="UNREADABLE") from exc
    recorded, dtype, batch = _export_input(program)
    _check_shape(header, recorded, "export")
    shape = tuple(r for r in recorded) if all(r is not None for r in recorded) else None
    spec = _spec(header, shape, dtype)  # type: ignore[arg-type]
    from workers import export_graph
    from workers.model import Shapes

    shapes = export_graph.generalise(program)  # any batch (verified) and the layers any canvas reaches
    if device is not None and torch.device(device).type != "cpu":
        from torch.export.passes import move_to_device_pass

        try:
            program = move_to_device_pass(program, torch.device(device))
        except Exception as exc:  # noqa: BLE001
            raise ModelRejected(f"the program could not be moved to {device}: {_first_line(exc)}", reason="UNREADABLE") from exc
    try:
        module = torch.export.unflatten(program)
    except Exception as exc:  # noqa: BLE001
        raise ModelRejected(f"torch.export.unflatten failed on this program: {_first_line(exc)}", reason="UNREADABLE") from exc
    export_graph.unguard(module)
    module.eval()
    state = {k: v.detach() for k, v in module.state_dict().items()}
    info = {"layer_kinds": _export_layer_kinds(program), "fixed_batch": shapes.batch, "export_batch": batch}
    if shapes.note:
        info["batch_note"] = shapes.note
    return LoadedModel(
        input_spec=spec, state_dict=state, module=module, info=info,
        shapes=Shapes(batch=shapes.batch, free_layers=shapes.free_layers),
    )


def _scan_pt2(path: Path, listing: ArchiveListing) -> None:
    """Everything torch.export.load would evaluate or unpickle, checked to be data (see the module docstring)."""
    rel = [n[len(listing.root):] for n in listing.names]
    for entry in rel:
        if entry.endswith("/"):
            continue
        if not _PT2_ALLOWED.match(entry):
            raise ModelRejected(
                f"the torch.export archive contains {entry!r}, which is not part of a plain exported program "
                "(compiled AOTInductor / ExecuTorch code is never loaded)",
                reason="ARCHIVE_UNSAFE",
            )
    if not any(e.startswith("models/") for e in rel):
        raise ModelRejected("the torch.export archive holds no program (models/*.json)", reason="TRUNCATED")
    extra = sum(listing.sizes.get(listing.root + e, 0) for e in rel if e.startswith("extra/"))
    if extra > PT2_MAX_EXTRA_BYTES:  # torch.export.load reads every extra/ member into memory
        raise ModelRejected(
            f"the torch.export archive's extra/ folder declares {extra} bytes (limit {PT2_MAX_EXTRA_BYTES}); "
            "torch.export.save writes only small metadata there",
            reason="ARCHIVE_UNSAFE",
        )
    with zipfile.ZipFile(path) as zf:
        read = lambda entry: zf.read(listing.root + entry)  # noqa: E731
        for entry in rel:
            if entry.startswith("models/") and entry.endswith(".json"):
                _check_program_json(_json(read(entry), entry))
            elif entry.startswith("data/sample_inputs/"):
                _check_nested_pickle(read(entry), entry)
        for folder, kind in (("data/weights/", "weights"), ("data/constants/", "constants")):
            for entry in rel:
                if entry.startswith(folder) and entry.endswith(f"_{kind}_config.json"):
                    config = _json(read(entry), entry).get("config", {})
                    for fqn, meta in config.items():
                        file_name = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
                        if "/" in file_name or "\\" in file_name or folder + file_name not in rel:
                            raise ModelRejected(
                                f"{kind} entry {str(fqn)[:80]!r} names a file that is not in the archive's {folder}; "
                                "nothing was loaded",
                                reason="ARCHIVE_UNSAFE",
                            )
                        if kind == "constants" and not file_name.startswith("tensor_"):
                            raise ModelRejected(
                                f"constant {fqn!r} is a pickled Python or TorchScript object ({file_name}); only tensors are accepted",
                                reason="UNSAFE_PICKLE",
                            )
                        if meta.get("use_pickle"):
                            _check_nested_pickle(read(folder + file_name), folder + file_name)


def _check_nested_pickle(data: bytes, where: str) -> None:
    """A torch.save payload inside the archive: scanned, then proven to load weights-only."""
    if is_zip(data[:4]):
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            for info in inner.infolist():
                if info.filename.endswith(".pkl"):
                    _refuse_pickle(_pickle_globals(inner.read(info), where), where)
    elif data[:1] == b"\x80":
        _refuse_pickle(_pickle_globals(data, where), where)
    _weights_only_load(data, f"archive entry {where!r}")


def _json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelRejected(f"archive entry {where!r} is not valid JSON: {exc}", reason="TRUNCATED") from exc


def _check_program_json(program: Any) -> None:
    """Walk the serialised program: only operator targets, only arithmetic in expressions and guards."""
    for guard in program.get("guards_code") or []:
        _check_expression(str(guard), _GUARD_NAMES, "guard")
    for key, rng in (program.get("range_constraints") or {}).items():
        _check_expression(str(key), _SYMPY_NAMES, "range constraint")
        for bound in ("min_val", "max_val"):
            value = rng.get(bound) if isinstance(rng, dict) else None
            if value is not None and not isinstance(value, (int, float)):
                raise ModelRejected(f"range constraint {key!r} has a non-numeric bound", reason="ARCHIVE_UNSAFE")
    stack: list[Any] = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "target" in item and "inputs" in item and isinstance(item["target"], str):
                _check_target(item["target"])
            for key, value in item.items():
                if key == "expr_str" and isinstance(value, str):
                    _check_expression(value, _SYMPY_NAMES, "symbolic shape")
                elif key != "metadata":
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _check_target(target: str) -> None:
    """Only pure tensor operators (workers.operators: an allow-list) may be called; UNSAFE_OPERATOR otherwise."""
    operators.check_target(target)


def _check_graph(graph_module: Any) -> None:
    """What will actually run: every node of the loaded graph and of every subgraph (higher-order op bodies)."""
    for name, sub in graph_module.named_modules():
        graph = getattr(sub, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op == "call_function":
                _check_target(operators.target_name(node.target))
            elif node.op not in ("placeholder", "output", "get_attr"):
                raise operators.unsafe(f"{node.op} {node.target!r}" + (f" in {name!r}" if name else ""))


def _check_expression(text: str, names: frozenset[str], what: str) -> None:
    """Tokenise `text`: numbers, short quoted names, operators and known identifiers only; no attribute access."""
    pos = 0
    previous = ""
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            if text[pos:].strip() == "":
                return
            raise _unsafe_expression(text, what)
        name = match.group("name")
        op = match.group("op")
        if name is not None and name not in names and not _SYMBOL.match(name):
            raise _unsafe_expression(text, what)
        if name is not None and "__" in name:
            raise _unsafe_expression(text, what)
        if op == "." and (what != "guard" or previous not in (")", "]", "math")):
            raise _unsafe_expression(text, what)
        previous = name or op or ""
        pos = match.end()


def _unsafe_expression(text: str, what: str) -> ModelRejected:
    return ModelRejected(f"the exported program's {what} {text[:80]!r} is not plain arithmetic; nothing was loaded", reason="ARCHIVE_UNSAFE")


def _export_input(program: Any) -> tuple[list[int | None], str, int | None]:
    """Non-batch dims of the single user input (None where symbolic), its dtype, and the batch if fixed."""
    user_inputs = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(user_inputs) != 1:
        raise ModelRejected(
            f"the exported program takes {len(user_inputs)} tensor inputs; kernelscope analyses models with one input",
            reason="MULTIPLE_INPUTS",
        )
    arg_name = user_inputs[0].arg.name
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == arg_name)
    value = node.meta.get("val")
    if value is None or not hasattr(value, "shape"):
        raise ModelRejected("the exported program records no shape for its input", reason="UNREADABLE")
    dims = [int(d) if isinstance(d, int) else None for d in value.shape]
    if not dims:
        raise ModelRejected("the exported program's input is a scalar", reason="UNREADABLE")
    dtype = str(value.dtype).removeprefix("torch.")
    return dims[1:], dtype, dims[0]


def _export_layer_kinds(program: Any) -> dict[str, str]:
    """Module path -> what the module computes ("layer1.0.conv1.0" -> "Conv3d"), from the graph's own ops.

    Unflattened modules are all InterpreterModule and user classes (torchvision's Conv3DSimple, a
    subclass of nn.Conv3d) have names no list can know, so a layer's kind comes from the op its
    innermost module runs (workers.layers.node_kind: a convolution of the weight's rank, transposed or
    not; a linear), and the recorded class name only for the project's own TConv3d.
    """
    kinds: dict[str, str] = {}
    for node in program.graph.nodes:
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        if not stack:
            continue
        for path, type_name in stack:
            class_name = type_name.rsplit(".", 1)[-1] if isinstance(type_name, str) else getattr(type_name, "__name__", "")
            if path and class_name == "TConv3d":
                kinds[_strip_l_prefix(path)] = class_name
        innermost = _strip_l_prefix(stack[-1][0])
        kind = node_kind(node)
        if innermost and kind and kinds.get(innermost) != "TConv3d":
            kinds[innermost] = kind
    return kinds


def _strip_l_prefix(path: str) -> str:
    return re.sub(r"^L__self__[._]?", "", path)


# ============================================================== ONNX

def _load_onnx(path: Path, header: dict[str, Any], architecture: str) -> LoadedModel:
    import onnx

    from workers.onnx_interpreter import build_module

    data = _onnx_bytes(path)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError or RuntimeWarning-ish errors
        looks_onnx = data[:1] == b"\x08"
        raise ModelRejected(
            f"the file cannot be parsed as ONNX ({_first_line(exc)})"
            + ("; it looks truncated, upload the complete file" if looks_onnx else "; is it really an .onnx file?"),
            reason="TRUNCATED" if looks_onnx else "WRONG_FORMAT",
        ) from exc
    if not model.graph.node and not model.graph.input:
        raise ModelRejected("the file parses as protobuf but holds no ONNX graph", reason="WRONG_FORMAT")
    _refuse_external_data(model)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - onnx.checker.ValidationError and friends
        raise ModelRejected(f"onnx.checker refused the model: {_first_line(exc)}", reason="ONNX_INVALID") from exc
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelRejected(
            f"the ONNX graph takes {len(inputs)} inputs; kernelscope analyses models with one input", reason="MULTIPLE_INPUTS"
        )
    recorded, batch, dtype = _onnx_input(inputs[0])
    _check_shape(header, recorded, "ONNX graph")
    given = [int(s) for s in header.get("shape") or []]
    shape = tuple(given) if given else (tuple(recorded) if all(r is not None for r in recorded) else None)
    if shape is None:
        raise BadOptions(
            f"the ONNX input has symbolic non-batch dims {recorded}; give input_spec.shape in the upload",
            reason="INPUT_SPEC_INVALID",
        )
    spec = _spec(header, shape, dtype)  # type: ignore[arg-type]
    module = build_module(model).eval()
    state = {t.name: _onnx_tensor(t) for t in model.graph.initializer}
    diff, tolerance = _compare_with_onnxruntime(data, module, spec, batch, inputs[0].name)
    info = {
        "onnx_max_abs_diff": diff,
        "onnx_tolerance": tolerance,
        "onnx_opset": next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "fixed_batch": batch,
        "layer_kinds": {name: rec["kind"] for name, rec in module.layers.items()},
    }
    return LoadedModel(input_spec=spec, state_dict=state, module=module, info=info)


def _refuse_external_data(model: Any) -> None:
    """EXTERNAL_DATA for any tensor still kept in an external file: data is read only from inside the upload
    (an ONNX bundle's own entries, by _onnx_bytes), never from a path on the worker's disk."""
    for tensor in _external_tensors(model):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
        raise ModelRejected(
            f"ONNX tensor {tensor.name!r} keeps its data in an external file ({location!r}), which was not uploaded "
            "with the model: upload the data file with it (the kernelscope SDK and CLI do, given the .onnx path with "
            "its data file beside it: they send both as one ONNX bundle), or save the model with all weights inline "
            "(onnx.save(model, path, save_as_external_data=False), < 2 GB)",
            reason="EXTERNAL_DATA",
        )


def _external_tensors(message: Any) -> Iterator[Any]:
    """Every TensorProto inside `message` that keeps its data in an external file, wherever ONNX allows a tensor
    (initializers, sparse tensors, attributes whatever their declared type, subgraphs, functions, training info)."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        for item in value if field.is_repeated else (value,):
            if field.message_type.name != "TensorProto":
                yield from _external_tensors(item)
            elif item.external_data or item.data_location == item.EXTERNAL:
                yield item


def _onnx_bytes(path: Path) -> bytes:
    """The serialized ModelProto to load: the file itself, or an ONNX bundle's model with its data read in."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not is_zip(head):
        return path.read_bytes()
    return _inline_bundle(path, check_archive(path, "an ONNX bundle"))


def _inline_bundle(path: Path, listing: ArchiveListing) -> bytes:
    """An ONNX bundle's model (sdk.formats) with every external tensor's data read from the bundle's own entries.

    A location must be a plain relative name (no '..', no absolute path, no drive) that is a regular-file entry
    of the bundle, other than the model; a bundle holding a symbolic link is refused whole. Nothing is extracted
    and no path on disk is opened, so no reference reaches outside the upload (EXTERNAL_DATA_OUTSIDE_UPLOAD).
    """
    import onnx

    kind = _zip_kind(listing)
    if kind != "ONNX_BUNDLE":
        raise ModelRejected(
            f"uploaded as ONNX, but the file is {content.WORDS[kind]}; an ONNX bundle's first entry is its only "
            "top-level .onnx model, followed by its external data files",
            reason="WRONG_FORMAT",
        )
    model_entry = listing.names[0]
    with zipfile.ZipFile(path) as zf:
        infos = {info.filename: info for info in zf.infolist()}
        links = sorted(name for name, info in infos.items() if stat.S_ISLNK(info.external_attr >> 16))
        if links:
            raise ModelRejected(
                f"the ONNX bundle holds symbolic links ({', '.join(links[:4])}), which may point outside the upload; "
                "external data must be regular files uploaded with the model",
                reason="EXTERNAL_DATA_OUTSIDE_UPLOAD",
            )
        raw = zf.read(model_entry)
        model = onnx.ModelProto()
        try:
            model.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - _load_onnx parses it again and says what is wrong
            return raw
        files = sorted(n for n in infos if n != model_entry and not n.endswith("/"))
        read: dict[str, bytes] = {}
        for tensor in list(_external_tensors(model)):
            entries = {e.key: e.value for e in tensor.external_data}
            location = entries.get("location", "")
            info = infos.get(location)
            if not content.is_plain_relative(location) or info is None or info.is_dir() or location == model_entry:
                raise ModelRejected(
                    f"ONNX tensor {tensor.name!r} keeps its data in {location!r}, which is not a file of this upload: "
                    f"external data is read only from the files uploaded with the model (this bundle holds "
                    f"{', '.join(files[:6]) or 'none'})",
                    reason="EXTERNAL_DATA_OUTSIDE_UPLOAD",
                )
            if location not in read:
                read[location] = zf.read(info)
            data = read[location]
            try:
                offset = int(entries.get("offset", "0"))
                end = len(data) if "length" not in entries else offset + int(entries["length"])
            except ValueError as exc:
                raise ModelRejected(
                    f"ONNX tensor {tensor.name!r} has a malformed external data offset or length", reason="ONNX_INVALID"
                ) from exc
            if not 0 <= offset <= end <= len(data):
                raise ModelRejected(
                    f"ONNX tensor {tensor.name!r} reads bytes {offset}..{end} of {location!r}, which has {len(data)}: "
                    "the data file is truncated",
                    reason="TRUNCATED",
                )
            tensor.raw_data = data[offset:end]
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    try:
        return model.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages of 2 GB and more
        raise ModelRejected(
            f"the ONNX model is too large once its external data is read in ({_first_line(exc)}); "
            "kernelscope loads ONNX models under 2 GB: export a torch.export .pt2 instead",
            reason="ARCHIVE_UNSAFE",
        ) from exc


_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}


def _onnx_input(value_info: Any) -> tuple[list[int | None], int | None, str]:
    tensor_type = value_info.type.tensor_type
    dtype = _ONNX_DTYPES.get(tensor_type.elem_type)
    if dtype is None:
        raise ModelRejected(
            f"the ONNX input {value_info.name!r} has element type {tensor_type.elem_type}; a floating-point input is needed",
            reason="ONNX_INVALID",
        )
    dims = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
    if len(dims) < 2:
        raise ModelRejected(f"the ONNX input {value_info.name!r} has rank {len(dims)}; (N, C, ...) is needed", reason="ONNX_INVALID")
    return dims[1:], dims[0], dtype


def _onnx_tensor(proto: Any) -> torch.Tensor:
    from onnx import numpy_helper

    return torch.from_numpy(np.array(numpy_helper.to_array(proto), copy=True))


# Where the interpreter cannot run an ONNX file faithfully, the format kernelscope runs without translation.
_PT2_INSTEAD = (
    "; upload a torch.export program of the model instead (torch.export.save(torch.export.export(model.eval(), "
    "(example,)), 'model.pt2'), format TORCH_EXPORT)"
)


def _compare_with_onnxruntime(
    data: bytes, module: nn.Module, spec: InputSpec, batch: int | None, input_name: str
) -> tuple[float, float]:
    """Run both on one seeded random input; refuse (ONNX_MISMATCH) beyond ONNX_TOLERANCE of the output scale."""
    import onnxruntime as ort

    n = batch or ONNX_CHECK_BATCH
    generator = torch.Generator().manual_seed(0)
    x = spec.normalize(spec.random(n, generator=generator)).float()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        reference = session.run(None, {input_name: x.numpy()})
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own refusal
        raise ModelRejected(f"onnxruntime cannot run the model: {_first_line(exc)}", reason="ONNX_INVALID") from exc
    try:
        with torch.no_grad():
            ours = module(x)
    except Exception as exc:  # noqa: BLE001 - an op the interpreter gets wrong is a refusal, not a crash
        raise ModelRejected(
            f"kernelscope's ONNX interpreter failed on the model: {_first_line(exc)}{_PT2_INSTEAD}", reason="ONNX_MISMATCH"
        ) from exc
    ours_list = list(ours) if isinstance(ours, (tuple, list)) else [ours]
    worst, tolerance = 0.0, ONNX_TOLERANCE
    for index, (a, b) in enumerate(zip(ours_list, reference)):
        a_np = a.detach().cpu().numpy()
        b_np = np.asarray(b)
        if a_np.shape != b_np.shape:
            raise ModelRejected(
                f"output {index}: the interpreter gives shape {a_np.shape}, onnxruntime {b_np.shape}{_PT2_INSTEAD}", reason="ONNX_MISMATCH"
            )
        finite = np.isfinite(b_np)
        if not np.array_equal(finite, np.isfinite(a_np)):
            raise ModelRejected(f"output {index}: non-finite values differ from onnxruntime's{_PT2_INSTEAD}", reason="ONNX_MISMATCH")
        if not finite.any():
            continue
        scale = float(np.abs(b_np[finite]).max())
        diff = float(np.abs(a_np[finite].astype(np.float64) - b_np[finite].astype(np.float64)).max())
        tol = ONNX_TOLERANCE * max(1.0, scale)
        if diff > tol:
            raise ModelRejected(
                f"output {index}: kernelscope's interpreter and onnxruntime differ by up to {diff:.3g} "
                f"(tolerance {tol:.3g} = {ONNX_TOLERANCE:g} x max(1, output scale {scale:.3g})); the model is refused{_PT2_INSTEAD}",
                reason="ONNX_MISMATCH",
            )
        worst, tolerance = max(worst, diff), max(tolerance, tol)
    return worst, tolerance


# ============================================================== TorchScript

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
        raise ModelRejected(f"torch.jit.load could not read the archive: {_first_line(exc)}", reason="UNREADABLE") from exc
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


# ============================================================== weights only

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
        raise ModelRejected(f"safetensors could not read the file: {_first_line(exc)}", reason="UNREADABLE") from exc
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


__all__ = ["FORMATS", "ONNX_TOLERANCE", "ScriptLayer", "ScriptTree", "load_model"]
