"""torch.export archives: scanned (entries, pickles, program JSON, operators, symbolic expressions), then loaded."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from workers import operators
from workers.archive import ArchiveListing, check_archive, is_zip
from workers.errors import ModelRejected, first_line
from workers.layers import node_kind
from workers.loader.header import _check_shape, _spec
from workers.loader.pickles import _pickle_globals, _refuse_pickle, _weights_only_everywhere, _weights_only_load
from workers.model import LoadedModel


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
        raise ModelRejected(f"torch.export.load could not read the archive: {first_line(exc)}", reason="UNREADABLE") from exc
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
            raise ModelRejected(f"the program could not be moved to {device}: {first_line(exc)}", reason="UNREADABLE") from exc
    try:
        module = torch.export.unflatten(program)
    except Exception as exc:  # noqa: BLE001
        raise ModelRejected(f"torch.export.unflatten failed on this program: {first_line(exc)}", reason="UNREADABLE") from exc
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
